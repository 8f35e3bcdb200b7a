"""Every benchmark under bench/ runs to its end, at a tiny size: no timing is checked here (the
numbers are the benchmarks' own business), only that they still run against today's code.
bench/data_add.py stopped at its first re-add for a while, after `ds.add` changed its return."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.conftest import digits_repo  # noqa: F401

pytestmark = pytest.mark.integration


def bench(name: str, *args: str, timeout: float = 600) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, f"bench/{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_data_add(tmp_path: Path) -> None:
    out = bench("data_add.py", "--gib", "0.0625", "--files", "40")
    assert out.count("mlbuild data add (cold)") == 2 and "peak RSS of data add" in out


def test_store(tmp_path: Path) -> None:
    out = bench("store.py", "--gib", "0.02", "--reps", "1", "--settle", "0", "--dir", str(tmp_path))
    assert "push / cp" in out and "restore / cp" in out


def test_serve() -> None:
    out = bench("serve.py", "--models", "digits", "--requests", "20,200", "--rounds", "1")
    assert "ratio served/bare at concurrency 32" in out


def test_train_overhead(digits_repo: Path) -> None:  # noqa: F811
    out = bench("train_overhead.py", "--project", str(digits_repo), "--epochs", "2", "--runs", "1")
    assert "median: nix build" in out and "ratio" in out


def test_image(digits_repo: Path) -> None:  # noqa: F811
    out = bench("image.py", "--project", str(digits_repo), "--hidden", "64")
    assert "image/closure" in out and "changed/weights" in out
