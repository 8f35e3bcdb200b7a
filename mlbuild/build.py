"""Building project targets with Nix: ``mlbuild build toolchain`` and friends.

A target is an attribute of ``mkProject`` (``toolchain``, ``interpreter``...). Projects without a
flake of their own are evaluated through nix/entry.nix with the project folder as ``src``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from . import _nix
from .config import Project
from .lockfile import read_lock
from .toolchain import check_fresh

__all__ = ["build_targets", "Built"]


@dataclass(frozen=True)
class Built:
    target: str
    path: str


def build_targets(project: Project, targets: Sequence[str]) -> list[Built]:
    check_fresh(project, read_lock(project.lock_path))
    targets = list(targets) or ["toolchain"]
    entry = _nix.nix_lib_dir() / "entry.nix"
    built = []
    for target in targets:  # one call per target: `nix build --json` does not keep the order
        result = _nix.build([target], file=entry, args=["--argstr", "src", str(project.root)])
        built.append(Built(target, result[0]["outputs"]["out"]))
    return built
