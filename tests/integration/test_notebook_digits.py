"""The example notebook examples/digits/explore.ipynb, checked with real Nix in the digits
toolchain (torch: the session's digits_repo fixture builds it once)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.conftest import run_cli
from tests.integration.conftest import instantiate

pytestmark = [pytest.mark.integration, pytest.mark.torch]


@pytest.fixture(scope="module")
def explored(digits_repo: Path) -> tuple[Path, str]:
    out = run_cli("notebook", "check", cwd=digits_repo).stdout
    path = next(l.split()[-1] for l in out.splitlines() if l.startswith("explore "))
    return Path(path), out


def test_explore_runs_and_keeps_its_outputs(explored: tuple[Path, str]) -> None:
    out, log = explored
    assert "explore  ok" in log
    summary = json.loads((out / "outputs" / "summary.json").read_text())
    assert summary["images"] == 1797 == sum(summary["class_counts"].values())
    assert sorted(summary["class_counts"]) == [str(d) for d in range(10)]
    assert summary["blank_pixels"] and 0 < summary["mean"] < 16
    nb = nbformat.read(str(out / "explore.ipynb"), as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "1797 images of 64 pixels" in text and "largest / smallest class" in text and "class 8:" in text
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


def test_explore_is_cached_and_reproducible(digits_repo: Path, explored: tuple[Path, str]) -> None:
    out, _ = explored
    again = run_cli("notebook", "check", "explore", cwd=digits_repo).stdout
    assert "built 0" in again and str(out) in again
    drv = instantiate(digits_repo, "notebooks.explore")
    proc = subprocess.run(["nix-build", "--check", drv, "--no-out-link"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_explore_exports_to_the_same_values(digits_repo: Path, explored: tuple[Path, str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out, _ = explored
    run_cli("notebook", "export", "explore.ipynb", "-o", str(tmp_path / "explore_module.py"), cwd=digits_repo)
    monkeypatch.chdir(digits_repo)  # the notebook's defaults read data/digits, as by hand in Jupyter
    spec = importlib.util.spec_from_file_location("explore_module", tmp_path / "explore_module.py")
    assert spec is not None and spec.loader is not None
    module: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.summary == json.loads((out / "outputs" / "summary.json").read_text())
