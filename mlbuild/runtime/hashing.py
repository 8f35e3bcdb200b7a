"""Content hashes every stage records: a file's sha256, and a source tree's (suite versions,
code hashes). Standard library only: used inside builds and by the driver alike."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["sha256_file", "tree_hashes", "tree_digest", "dataset_hash", "find_store_paths"]


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (sorted)."""
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def tree_digest(files: dict[str, str]) -> str:
    """One sha256 over a :func:`tree_hashes` map (the code hash; its first 16 digits: a suite version)."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def dataset_hash(entry: dict[str, Any]) -> dict[str, str]:
    """How provenance and reports name a dataset: ``{"sha256", "of"}``, never its store path.

    ``entry`` is a stage's dataset input (``lib.datasetInput``): ``path``, ``sha256`` (the
    fixed-output hash, or None) and ``of``: "nar" (mlbuild.lock's hash of a local dataset), "file"
    (a url dataset's sha256) or "files" (a derived dataset: :func:`tree_digest` of its files,
    computed here). A path in an output would be a reference, carrying the data into the package,
    the shared store's pushes and the image.
    """
    if entry.get("sha256"):
        return {"sha256": str(entry["sha256"]), "of": str(entry["of"])}
    path = Path(entry["path"])
    if path.is_file():
        return {"sha256": sha256_file(path), "of": "file"}
    return {"sha256": tree_digest(tree_hashes(path)), "of": "files"}


def find_store_paths(root: Path, paths: dict[str, str], chunk: int = 1 << 20) -> list[tuple[str, str]]:
    """``(name, file)`` for each of ``paths`` (name -> store path) whose hash part a file under
    ``root`` holds: what Nix would record as a reference of the output."""
    parts = {Path(p).name[:32].encode(): name for name, p in paths.items()}
    found = []

    def seen(window: bytes, rel: str) -> None:
        for part, name in list(parts.items()):
            if part in window:
                found.append((name, rel))
                del parts[part]

    for top, dirs, files in os.walk(root):
        dirs.sort()
        for fn in sorted(files + [d for d in dirs if os.path.islink(os.path.join(top, d))]):
            f = Path(top, fn)
            rel = f.relative_to(root).as_posix()
            if f.is_symlink():
                seen(os.readlink(f).encode(), rel)
                continue
            tail = b""
            with open(f, "rb") as fh:
                while block := fh.read(chunk):
                    window = tail + block
                    seen(window, rel)
                    tail = window[-31:]
    return found
