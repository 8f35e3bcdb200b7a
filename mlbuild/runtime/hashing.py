"""Content hashes every stage records: a file's sha256, and a source tree's (suite versions,
code hashes). Standard library only: used inside builds and by the driver alike."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

__all__ = ["sha256_file", "tree_hashes", "tree_digest"]


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
