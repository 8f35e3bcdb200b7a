"""Fixtures for tests that build with real Nix: temporary projects, locked and prefetched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mlbuild.interpreter import probe
from tests.conftest import REPO, run_cli, write_tree

SMALL_REQUIREMENTS = ["numpy", "safetensors"]


def small_project_tree(requirements: list[str] = SMALL_REQUIREMENTS, name: str = "small") -> dict[str, Any]:
    reqs = ", ".join(json.dumps(r) for r in requirements)
    return {"mlbuild.toml": f'[project]\nname = "{name}"\n\n[python]\ninterpreter = "python3.11"\n'
                            f"requirements = [{reqs}]\n"}


@pytest.fixture(scope="session")
def small_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A locked, prefetched project with numpy + safetensors (no torch: fast)."""
    root = write_tree(tmp_path_factory.mktemp("small"), small_project_tree())
    run_cli("lock", cwd=root)
    run_cli("prefetch", cwd=root)
    return root


@pytest.fixture(scope="session")
def small_toolchain(small_project: Path) -> str:
    out = run_cli("build", "toolchain", cwd=small_project).stdout
    return out.split("\t")[1].split("\n")[0]


def lock_matches_host(project: Path) -> bool:
    lock = json.loads((project / "mlbuild.lock").read_text())["interpreter"]
    ident = probe("python3.11")
    return all(lock[k] == getattr(ident, k) for k in ("version", "executable", "libc"))


def example_copy(name: str, dest: Path) -> Path:
    """A copy of examples/NAME, re-locked when this host's interpreter differs from the lock."""
    root = dest / name
    shutil.copytree(REPO / "examples" / name, root, ignore=shutil.ignore_patterns("data", "__pycache__", ".mlbuild", "result*"))
    if not lock_matches_host(root):
        run_cli("lock", cwd=root)
    run_cli("prefetch", cwd=root)
    return root


def nix(*args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["nix", "--extra-experimental-features", "nix-command flakes", *args],
                          capture_output=True, text=True, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"nix {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc


def instantiate(project: Path, attr: str) -> str:
    out = subprocess.run(["nix-instantiate", str(REPO / "nix" / "entry.nix"), "--argstr", "src", str(project),
                          "-A", attr], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def env_i_python(python: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run `python -c code` with an empty environment (nothing from the host's paths)."""
    return subprocess.run(["env", "-i", python, "-c", code], capture_output=True, text=True)


MAPS_CHECK = """
import sys
bad = sorted({l.split()[-1] for l in open('/proc/self/maps')
              if '/' in l and not l.split()[-1].startswith('/nix/store/')})
print('NONSTORE', bad)
"""

os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")


GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}


def git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {proc.stderr}")
    return proc.stdout


def commit_all(root: Path, message: str = "change") -> str:
    git(root, "add", "-A")
    git(root, "commit", "-q", "--allow-empty", "-m", message)
    return git(root, "rev-parse", "HEAD").strip()


def git_repo(root: Path) -> Path:
    git(root, "init", "-q", "-b", "main")
    commit_all(root, "initial")
    return root


@pytest.fixture(scope="session")
def digits_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/digits in a temporary git repo, with its data exported and added, committed."""
    root = example_copy("digits", tmp_path_factory.mktemp("digits"))
    toolchain = run_cli("build", "--allow-dirty", "toolchain", cwd=root).stdout.split("\t")[1].split("\n")[0]
    subprocess.run([f"{toolchain}/bin/python", "export_data.py", "data/digits"], cwd=root, check=True,
                   capture_output=True)
    git_repo(root)
    run_cli("data", "add", "digits-raw", "data/digits", cwd=root)
    commit_all(root, "data")
    return root


def export_and_add(project: Path, name: str) -> None:
    """Write the example's real data (from the scikit-learn wheel) and `mlbuild data add` it."""
    toolchain = run_cli("build", "--allow-dirty", "toolchain", cwd=project).stdout.split("\t")[1].split("\n")[0]
    subprocess.run([f"{toolchain}/bin/python", "export_data.py", f"data/{name}"], cwd=project, check=True,
                   capture_output=True)
    run_cli("data", "add", f"{name}-raw", f"data/{name}", cwd=project)


@pytest.fixture(scope="session")
def repo_example_digits() -> Path | None:
    """examples/digits of this checkout made buildable through the repository's flake
    (`nix build .#digits`, `nix run .#serve-digits`): prefetched, data exported and added.
    None when this host's interpreter differs from the committed lock (the flake then cannot
    build it here; tests fall back to a re-locked copy)."""
    digits = REPO / "examples" / "digits"
    if not lock_matches_host(digits):
        return None
    before = (digits / "mlbuild.lock").read_text()
    run_cli("prefetch", cwd=digits)
    export_and_add(digits, "digits")
    assert (digits / "mlbuild.lock").read_text() == before, "the exported digits data differs from the lock"
    return digits
