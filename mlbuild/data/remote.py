"""Datasets and the shared binary store: which are there, push, pull (mlbuild.store does the work)."""

from __future__ import annotations

from typing import Iterator

from ..config import Project, state_dir
from ..lockfile import read_lock
from ..storepath import fixed_output_path
from .datasets import DataError, datasets

__all__ = ["shared_hashes", "push", "pull", "dataset_paths"]


def shared_hashes(project: Project) -> set[str] | None:
    """Hash parts of the store paths the shared store holds (None when there is none here). A
    wrong [store] table is an error: read as no store, every shared dataset showed as missing."""
    from ..store.config import load_store_config

    root = load_store_config(project.root).root
    if not root.is_dir():
        return None
    return {p.name[:-8] for p in root.glob("*.narinfo")}


def dataset_paths(project: Project, names: list[str], unlocked: list[str] | None = None) -> dict[str, str]:
    """Store paths of the pinned (local and URL) datasets named (default: all of them). ``unlocked``:
    where given, with no names, the local datasets the lock does not pin go there, not refused (one
    declared and never added stopped a push or pull of all the others)."""
    lock = read_lock(project.lock_path)
    declared = datasets(project)
    unknown = [n for n in names if n not in declared]
    if unknown:
        raise DataError(f"no dataset {', '.join(map(repr, unknown))} in {project.config_path}; "
                        f"declared: {', '.join(sorted(declared))}")
    out = {}
    for name in names or sorted(declared):
        ds = declared[name]
        if ds.kind == "url" and ds.sha256:
            out[name] = fixed_output_path(ds.sha256, name, recursive=False)
        elif ds.kind == "path":
            entry = lock.get("datasets", {}).get(name)
            sha = entry.get("sha256") if isinstance(entry, dict) else None   # a hand-edited entry: no KeyError
            if not isinstance(sha, str):
                if unlocked is not None and not names:
                    unlocked.append(name)
                    continue
                raise DataError(f"dataset {name!r} is not locked; run `mlbuild data add {name} {ds.path}`")
            out[name] = fixed_output_path(sha, name, recursive=True)
        elif names:
            raise DataError(f"dataset {name!r} is derived (prepare): `mlbuild build datasets.{name}` fetches it from "
                            f"the shared store (or prepares it), `mlbuild build --push datasets.{name}` pushes it")
    return out


def _unlocked_lines(project: Project, names: list[str]) -> list[str]:
    declared = datasets(project)
    return [f"{n}: skipped, not locked (declared, never added): `mlbuild data add {n} {declared[n].path}` pins it"
            for n in names]


def push(project: Project, names: list[str]) -> Iterator[str]:
    """Push the datasets present here, a line each; then a DataError naming, with the command that
    brings it, each one that is not here (one such stopped the push of all the others)."""
    from .. import _nix
    from ..store.config import load_store_config
    from ..store.push import push as store_push

    unlocked: list[str] = []
    paths = dataset_paths(project, names, unlocked)
    missing = set(_nix.invalid_paths(list(paths.values())))
    here = {n: p for n, p in paths.items() if p not in missing}
    result = store_push(load_store_config(project.root), list(here.values())) if here else None
    pushed = {info.store_path for info in result.pushed} if result is not None else set()
    for n, p in here.items():
        yield f"{n}: {'pushed' if p in pushed else 'already in the shared store'} {p}"
    yield from _unlocked_lines(project, unlocked)
    if missing:
        declared = datasets(project)
        gone = [n for n, p in paths.items() if p in missing]
        # a url dataset cannot be `data add`ed (it refuses one): a build fetches it
        bring = [f"mlbuild build datasets.{n}" if declared[n].kind == "url" else f"mlbuild data add {n} {declared[n].path}"
                 for n in gone]
        raise DataError(f"dataset(s) {', '.join(gone)} are not in the local store, so not pushed; bring them first: "
                        f"{'; '.join(f'`{b}`' for b in bring)}")


def pull(project: Project, names: list[str]) -> Iterator[str]:
    """Pull the datasets missing here that the shared store has, a line each; then a DataError
    naming, with the fix, each one neither here nor there (such a one, or one here and not in the
    store, stopped the whole pull, naming a store path only)."""
    from .. import _nix
    from ..store.config import load_store_config
    from ..store.layout import Layout
    from ..store.pull import pull as store_pull

    unlocked: list[str] = []
    paths = dataset_paths(project, names, unlocked)
    cfg = load_store_config(project.root)
    layout = Layout(cfg.root)
    layout.require()
    here_missing = set(_nix.invalid_paths(list(paths.values())))
    absent = [n for n, p in paths.items() if p in here_missing and not layout.narinfo(p).exists()]
    wanted = {n: p for n, p in paths.items() if n not in absent}
    # only what is not here: one present here and not pushed (yet) failed the whole pull
    fetch = [p for p in wanted.values() if p in here_missing]
    fetched = set(store_pull(cfg, fetch).fetched) if fetch else set()
    _nix.add_roots({f"dataset-{n}": p for n, p in wanted.items()}, state_dir(project.root) / "gcroots")
    for n, p in wanted.items():
        yield f"{n}: {'pulled' if p in fetched else 'already present'} {p}"
    yield from _unlocked_lines(project, unlocked)
    if absent:
        declared = datasets(project)
        bring = [f"{n} (`mlbuild build datasets.{n}` fetches it from {declared[n].url})" if declared[n].kind == "url"
                 else f"{n} (`mlbuild data push {n}` where it is present, or `mlbuild data add {n} {declared[n].path}` "
                      "where its files are)" for n in absent]
        raise DataError(f"not in the shared store {cfg.root} nor here: {'; '.join(bring)}")
