"""Replacing a file atomically, with the permissions a plain ``open()`` would give it, and an
exclusive lock for commands that read, change and write back the same files."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path
from typing import Iterator

__all__ = ["write_text", "exclusive"]


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temp file in its folder and a rename: a crash
    never leaves half a file. The file gets 0666 & ~umask, as ``open()`` gives (``mkstemp``'s
    0600 would hide a project file from the group and from other accounts)."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)   # the kernel applies the umask
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing), waiting for another holder.
    Commands that read a file, change it and write it back (`data add` and `mlbuild lock` on
    mlbuild.lock and mlbuild.toml) re-read it inside: two at once otherwise each wrote back what it
    had read, and the other's change was lost. The kernel drops the lock when its holder dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
