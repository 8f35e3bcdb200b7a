"""Datasets and the shared binary store: which are there, push, pull (mlbuild.store does the work)."""

from __future__ import annotations

from ..config import Project
from ..errors import MlbuildError

__all__ = ["shared_hashes", "push", "pull"]


def shared_hashes(project: Project) -> set[str] | None:
    """Hash parts of the store paths the shared store holds (None when none is configured)."""
    try:
        from ..store.config import load_store_config

        root = load_store_config(project.root).root
    except (ImportError, MlbuildError):
        return None
    if not root.is_dir():
        return None
    return {p.name[:-8] for p in root.glob("*.narinfo")}


def push(project: Project, names: list[str]) -> list[str]:
    raise MlbuildError("data push needs the shared store (mlbuild store), which is not wired yet")


def pull(project: Project, names: list[str]) -> list[str]:
    raise MlbuildError("data pull needs the shared store (mlbuild store), which is not wired yet")
