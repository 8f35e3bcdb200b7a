"""The validation's metric and threshold logic (pure functions of the runtime)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from mlbuild.runtime.validate import check_thresholds, compute_metrics, format_checks


def test_binary_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    proba = np.clip(y * 0.6 + rng.random(200) * 0.5, 0, 1)
    pred = (proba > 0.5).astype(int)
    r = compute_metrics("classification", y, pred, np.column_stack([1 - proba, proba]), ["neg", "pos"])
    assert r["metrics"]["f1"] == skm.f1_score(y, pred)
    assert r["metrics"]["roc_auc"] == skm.roc_auc_score(y, proba)
    assert r["metrics"]["recall_macro"] == skm.recall_score(y, pred, average="macro")
    assert r["per_class"]["pos"]["support"] == int((y == 1).sum())
    assert r["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()


def test_regression_metrics() -> None:
    y, p = np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 2.0])
    r = compute_metrics("regression", y, p)["metrics"]
    assert r["mae"] == skm.mean_absolute_error(y, p) and r["r2"] == skm.r2_score(y, p)
    assert r["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, p)))


def test_thresholds() -> None:
    checks = check_thresholds({"accuracy": 0.96, "rmse": 0.4}, {"accuracy": 0.95, "rmse": "<= 0.3", "f1": 0.9})
    by = {c["metric"]: c for c in checks}
    assert by["accuracy"]["ok"] and not by["rmse"]["ok"] and not by["f1"]["ok"]
    text = format_checks(checks)
    assert "rmse" in text and "<= 0.3" in text and "FAILED" in text and "missing" in text
    with pytest.raises(SystemExit, match="threshold"):
        check_thresholds({"a": 1.0}, {"a": "~ 3"})
