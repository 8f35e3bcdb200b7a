"""Derived dataset: a stratified train/test split of the raw cancer CSV (seeded, so cached)."""

from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split


def prepare(inputs: dict[str, Path], out: Path, params: dict) -> None:
    raw = np.loadtxt(next(inputs["cancer-raw"].glob("*.csv")), delimiter=",", skiprows=1, dtype=np.float64)
    x, y = raw[:, :-1], raw[:, -1].astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=params.get("test_fraction", 0.25), random_state=params.get("seed", 0), stratify=y)
    for name, xs, ys in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        np.savetxt(out / f"{name}.csv", np.column_stack([xs, ys]), fmt="%.10g", delimiter=",")
