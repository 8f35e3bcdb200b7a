"""`mlbuild build` warns when a local dataset's files differ from what mlbuild.lock pins."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlbuild.build import changed_datasets
from mlbuild.config import load_project
from mlbuild.nar import nar_sha256


def project(root: Path) -> tuple[Path, dict[str, Any]]:
    (root / "data").mkdir(parents=True)
    (root / "data" / "iris.csv").write_text("5.1,3.5,setosa\n")
    (root / "data" / "gone.csv").write_text("1\n")
    (root / "mlbuild.toml").write_text('[project]\nname = "p"\n[datasets.raw]\npath = "data/iris.csv"\n'
                                       '[datasets.gone]\npath = "data/gone.csv"\n'
                                       '[datasets.split]\nprepare = "prepare.py"\ninputs = ["raw"]\n')
    lock = {"datasets": {"raw": {"sha256": nar_sha256(str(root / "data" / "iris.csv")), "kind": "path"},
                         "gone": {"sha256": nar_sha256(str(root / "data" / "gone.csv")), "kind": "path"}}}
    (root / "data" / "gone.csv").unlink()   # e.g. a fresh clone without the data: not a change
    return root, lock


def test_an_edited_dataset_is_named_with_the_command_that_pins_it(tmp_path: Path) -> None:
    root, lock = project(tmp_path / "p")
    assert changed_datasets(load_project(root), lock) == []
    (root / "data" / "iris.csv").write_text("1.1,3.5,setosa\n")
    assert changed_datasets(load_project(root), lock) == [
        "data/iris.csv differs from the version mlbuild.lock pins for dataset raw; this build uses the pinned one. "
        "To use the new files: mlbuild data add raw data/iris.csv"]


def test_a_touched_dataset_is_hashed_once_then_known_by_its_stat_facts(tmp_path: Path) -> None:
    root, lock = project(tmp_path / "p")
    assert changed_datasets(load_project(root), lock) == []
    cached = json.loads((root / ".mlbuild" / "stat-raw.json").read_text())
    assert cached["sha256"] == lock["datasets"]["raw"]["sha256"]
