"""A project made by `mlbuild init --csv` builds, validates and serves as the next steps say (real Nix)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, have_nix, run_cli
from tests.integration.conftest import commit_all, nix

pytestmark = pytest.mark.skipif(not have_nix(), reason="needs Nix")


NAMES = ["red", "green", "blue"]


def blobs(path: Path) -> None:
    """Three well-separated classes in 4 features, 40 rows each, named, with a header row."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c * 3.0, 1.0, size=(40, 4)) for c in range(3)])
    y = np.repeat(np.arange(3), 40)
    order = rng.permutation(len(y))
    path.parent.mkdir(parents=True)
    rows = "".join(",".join(f"{v:.4f}" for v in row) + f",{NAMES[label]}\n" for row, label in zip(x[order], y[order]))
    path.write_text("f1,f2,f3,f4,class\n" + rows)


def test_init_then_the_next_steps(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    blobs(root / "data" / "blobs.csv")
    out = run_cli("init", "--csv", "data/blobs.csv", "--python", "python3.11", cwd=root).stdout
    assert "120 rows, 4 features, 3 classes (blue, green, red), a header row" in out
    run_cli("lock", cwd=root)
    run_cli("prefetch", cwd=root)
    run_cli("data", "add", "blobs-raw", "data/blobs.csv", cwd=root)
    commit_all(root, "blobs: new project")
    package = run_cli("build", "blobs", cwd=root).stdout.split("\t")[1].split("\n")[0]
    report = run_cli("validate", "blobs", cwd=root).stdout
    assert "validation passed" in report
    config = json.loads((Path(package) / "model" / "config.json").read_text())
    assert config["labels"] == ["blue", "green", "red"] and config["inputs"][0]["shape"] == [-1, 4]
    # The project's own flake (mlbuild as its input) gives the same package.
    assert f'"git+file://{REPO}"' in (root / "flake.nix").read_text()
    built = json.loads(nix("build", "--no-link", "--json", ".#blobs", cwd=root).stdout)[0]["outputs"]["out"]
    assert built == package
