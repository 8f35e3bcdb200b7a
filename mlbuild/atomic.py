"""Replacing a file atomically, with the permissions a plain ``open()`` would give it, and an
exclusive lock for commands that read, change and write back the same files."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import sys
from pathlib import Path
from typing import Iterator

__all__ = ["write_text", "write_bytes", "create_bytes", "is_stream", "append_line", "exclusive"]


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temp file in its folder, fsynced, and a rename:
    a crash (a kill, a power cut) never leaves half a file. A new file gets 0666 & ~umask, as ``open()`` gives (``mkstemp``'s
    0600 would hide a project file from the group and from other accounts); an existing one keeps
    its mode, as rewriting it in place would (a group-writable mlbuild.toml in a shared checkout
    stays so under a 022 umask)."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    """``write_text`` for bytes. A symlink is written through, as ``open()`` does, not replaced; so
    is a device or a pipe (``-o /dev/null``, ``/dev/stdout``), which a rename replaced by a file
    (root's /dev/null became a regular file) or could not (a temp file in /proc/PID/fd)."""
    if is_stream(path):
        with _named(path), open(path, "wb") as f:
            f.write(data)
        return
    path = path.resolve() if path.is_symlink() else path
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    with _named(path):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)   # the kernel applies the umask
        try:
            with contextlib.suppress(FileNotFoundError):
                os.fchmod(fd, os.stat(path).st_mode & 0o7777)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                # On disk before the rename: after a power cut the rename alone may reach the disk,
                # leaving an empty mlbuild.lock or mlbuild.toml where the old one was (XFS; ext4
                # without auto_da_alloc), as the store's publish_bytes guards against too.
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def create_bytes(path: Path, data: bytes, mode: int) -> None:
    """A new file ``path`` (``mode``), whole or not at all, never over an existing one
    (FileExistsError, as ``O_EXCL`` gives): written and fsynced under a temp name, then hard-linked
    into place. Where ``O_EXCL`` alone left an empty file behind a full disk or a kill, which
    then counted as existing (a secret key of no bytes)."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    with _named(path):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def is_stream(path: Path) -> bool:
    """Whether ``path`` is there and is no file or folder: a device, a pipe, a socket."""
    return path.exists() and not path.is_file() and not path.is_dir()


def append_line(path: Path, line: str) -> None:
    """``line`` and a newline at the end of ``path`` in one write (commands appending at once do not
    interleave), on a line of its own even after a torn last line (a command killed while writing,
    a full disk), so that it is not glued to that line and lost with it."""
    with _named(path), open(path, "a+b") as f:
        end = f.seek(0, os.SEEK_END)
        torn = end > 0 and f.seek(end - 1) >= 0 and f.read(1) != b"\n"
        f.write((b"\n" if torn else b"") + line.encode() + b"\n")


@contextlib.contextmanager
def _named(path: Path) -> Iterator[None]:
    """An OSError of a write (a full disk: ENOSPC carries no file name) names ``path``."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None


@contextlib.contextmanager
def exclusive(path: Path, mode: int | None = None, waiting: str | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing), waiting for another holder.
    Commands that read a file, change it and write it back (`data add` and `mlbuild lock` on
    mlbuild.lock and mlbuild.toml) re-read it inside: two at once otherwise each wrote back what it
    had read, and the other's change was lost. The kernel drops the lock when its holder dies.
    A lock file this account cannot write (another's, made 0644 by their umask in a shared
    checkout) is locked read-only, as Linux allows; NFS wants it open for writing where it can be.
    ``mode``, for a lock in a folder others write (a shared store): the lock file's mode whatever
    the umask (0664: every member of the group opens it for writing), set where this account owns
    it; and it is opened only as a file, never through a link (any writer of the folder could point
    one at a file only root may write, whose mode the chmod then changed): OSError otherwise.
    ``waiting``: said on stderr when another holds the lock, before waiting for it (a lock held for
    long, as a gc holds the store's, would otherwise look like a hang)."""
    only_file = os.O_NOFOLLOW | os.O_NONBLOCK if mode is not None else 0
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | only_file, 0o666 if mode is None else mode)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY | only_file)
    if mode is not None:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a file, so not a lock file", str(path))
        with contextlib.suppress(PermissionError):
            os.fchmod(fd, mode)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if waiting else 0))
        except BlockingIOError:
            print(f"mlbuild: {waiting}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
