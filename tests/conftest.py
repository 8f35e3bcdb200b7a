"""Shared fixtures: file trees from dicts, the repository root, the driver CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
MLBUILD = [sys.executable, "-m", "mlbuild.cli"]


def write_tree(root: Path, tree: dict[str, Any]) -> Path:
    """Create files from {"a/b.txt": "text" | bytes, "dir": {...}}."""
    for name, content in tree.items():
        path = root / name
        if isinstance(content, dict):
            path.mkdir(parents=True, exist_ok=True)
            write_tree(path, content)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
    return root


def nar_digest(path: str) -> tuple[bytes, int]:
    """The sha256 digest of the NAR of ``path`` and the NAR's size, as Nix registers them."""
    import hashlib

    from mlbuild.nar import NarWriter

    h = hashlib.sha256()
    size = 0

    class _Count:
        def update(self, data: bytes) -> None:
            nonlocal size
            h.update(data)
            size += len(data)

    NarWriter(_Count()).dump(path)
    return h.digest(), size


def run_cli(*args: str, cwd: Path | None = None, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*MLBUILD, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"mlbuild {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def build_path(root: Path, target: str) -> Path:
    """The store path that `mlbuild build TARGET` gives in the project at ``root``."""
    return Path(run_cli("build", target, cwd=root).stdout.split("\t")[1].split("\n")[0])


@pytest.fixture
def tree(tmp_path: Path):
    return lambda t: write_tree(tmp_path, t)


def have_nix() -> bool:
    return shutil.which("nix") is not None


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    # Integration and e2e tests need Nix; .ci/setup installs it, so a missing Nix is an error
    # in CI rather than a silent skip.
    if have_nix() or os.environ.get("CI"):
        return
    skip = pytest.mark.skip(reason="Nix is not installed (run `bash .ci/setup`)")
    for item in items:
        if "integration" in item.keywords or "e2e" in item.keywords:
            item.add_marker(skip)
