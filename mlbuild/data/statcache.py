"""A stat cache (like git's index): re-adding unchanged data costs a walk of ``lstat`` calls.

Keyed by path, size, mtime and ctime (ns), inode and the executable bit of every file, and the
targets of symlinks. ctime is what catches an edit that keeps size, mtime and inode (``cp -p``
over the file, a write followed by ``touch -d`` back): no call can set it back, as git's index
knows. If all match what was recorded when the data was last hashed, the NAR hash is
reused without reading a byte.

Racy clean (git's word): a file system keeps times to a granule (a second on ext4 with 128-byte
inodes, HFS+ or some NFS servers; a clock tick elsewhere), so a write in the same granule as the
one before it, after the facts were taken, leaves every fact as it was: the old hash would be
reused for new bytes (a training job still writing its output while `data add` pinned it). The
time the facts were taken is kept with them, and an entry changed less than ``RACY_NS`` before
then proves nothing: the data is hashed again, and remembered under a later time.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

from .. import atomic

__all__ = ["fingerprint", "lookup", "remember", "RACY_NS"]

RACY_NS = 3_000_000_000   # the coarsest granule (FAT keeps 2 s), with room for an NFS server's clock
_SHA256 = re.compile(r"[0-9a-f]{64}")


def fingerprint(path: Path) -> list[Any]:
    """Stat facts of every entry under ``path`` (sorted, relative names)."""
    out: list[Any] = []
    top = os.lstat(path)
    if not stat.S_ISDIR(top.st_mode):
        return [[".", top.st_size, top.st_mtime_ns, top.st_ctime_ns, top.st_ino, top.st_mode & 0o100]]
    stack = [(str(path), "")]
    while stack:
        full, rel = stack.pop()
        with os.scandir(full) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                name = f"{rel}{e.name}"
                if stat.S_ISDIR(st.st_mode):
                    out.append([name + "/", 0, 0, 0, st.st_ino, 0])
                    stack.append((e.path, name + "/"))
                elif stat.S_ISLNK(st.st_mode):
                    out.append([name, os.readlink(e.path), st.st_mtime_ns, st.st_ctime_ns, st.st_ino, 0])
                else:
                    out.append([name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode & 0o100])
    out.sort(key=lambda r: r[0])
    return out


def _file(cache_dir: Path, name: str) -> Path:
    return cache_dir / f"stat-{name}.json"


def _racy(entries: list[Any], taken: Any) -> bool:
    """Whether an entry changed too close to ``taken`` (ns) for its facts to prove its bytes."""
    if not isinstance(taken, int):   # a cache from before times were kept
        return True
    return any(max(e[2], e[3]) >= taken - RACY_NS for e in entries)


def lookup(cache_dir: Path, name: str, path: Path) -> tuple[str | None, dict[str, Any]]:
    """(cached NAR sha256 if ``path`` is unchanged, its facts: what ``remember`` takes once the
    data is hashed, read after these facts were taken)."""
    taken = time.time_ns()   # before the walk: a write after it may be in the granule of one before
    entries = fingerprint(path)
    facts: dict[str, Any] = {"taken": taken, "entries": entries}
    f = _file(cache_dir, name)
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return None, facts
    # A cache that is JSON but no record of ours (`null`, `[]`, a hash that is no hash: a garbled or
    # hand-edited file) was an AttributeError traceback of every data command and build: hash again.
    sha = data.get("sha256") if isinstance(data, dict) else None
    if isinstance(sha, str) and _SHA256.fullmatch(sha) and data.get("path") == str(path.resolve()) \
            and data.get("entries") == entries and not _racy(entries, data.get("taken")):
        return sha, facts
    return None, facts


def remember(cache_dir: Path, name: str, path: Path, facts: dict[str, Any], sha256: str) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    # A temp name of its own: two commands hashing the same dataset at once (two builds, a build
    # and `data status`) each renamed their shared `stat-NAME.tmp`, and the second found it gone.
    atomic.write_text(_file(cache_dir, name), json.dumps({"path": str(path.resolve()), "sha256": sha256,
                                                          "taken": facts["taken"], "entries": facts["entries"]}))
