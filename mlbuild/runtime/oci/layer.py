"""Deterministic layer tars of store paths.

Every layer is a plain (uncompressed) POSIX tar: entries in a fixed order (``nix``,
``nix/store``, then each store path sorted, each folder before its entries, names sorted), mtime
1, owner 0:0 (``root``), modes as in the store (read-only files and folders; the store's own
hardlinks are written as regular files). Nothing from the build machine (time, user, umask, file
system order) reaches the bytes, so the same paths always give the same layer digest.

In layers that hold several store paths (``dedup``), identical files (same size, mode and
sha256) are written once and then as hardlinks to the first copy: the model package's copy of
the weights costs a tar header, not a second copy of the weights.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

__all__ = ["MTIME", "Extra", "DigestWriter", "walk", "write_layer", "etc_entries"]

MTIME = 1
_BUF = 1 << 20


@dataclass(frozen=True)
class Extra:
    """A file (``data`` bytes) or folder (``data`` None) that is not a store path."""

    name: str
    mode: int
    data: bytes | None = None


class DigestWriter:
    """A write-only stream that passes bytes on and keeps their sha256 and count."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.out.write(data)
        self.hash.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def walk(path: str) -> Iterator[str]:
    """``path`` and everything under it, each folder before its entries, names sorted; symlinks
    are entries, never followed."""
    yield path
    if os.path.isdir(path) and not os.path.islink(path):
        for name in sorted(os.listdir(path)):
            yield from walk(os.path.join(path, name))


def _base(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.mtime = MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def _store_info(path: str) -> tarfile.TarInfo:
    st = os.lstat(path)
    name = path.lstrip("/")
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        ti = _base(name, tarfile.REGTYPE, mode)
        ti.size = st.st_size
    elif stat.S_ISDIR(st.st_mode):
        ti = _base(name, tarfile.DIRTYPE, mode)
    elif stat.S_ISLNK(st.st_mode):
        ti = _base(name, tarfile.SYMTYPE, 0o777)
        ti.linkname = os.readlink(path)
    else:
        raise ValueError(f"{path} is neither a file, a folder nor a symlink; the Nix store holds no such thing")
    return ti


def _header(ti: tarfile.TarInfo) -> bytes:
    """A ustar header (long names split into prefix and name), or a PAX one when ustar cannot
    hold the entry (a name longer than 255 bytes, a file over 8 GiB, bytes that are not UTF-8):
    tarfile's PAX writer would add a 1 KiB extended header to every name over 100 bytes."""
    try:
        return ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
    except ValueError:
        return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _add(writer: DigestWriter, ti: tarfile.TarInfo, data: BinaryIO | None = None) -> None:
    """One entry: its header, then ``ti.size`` bytes of ``data`` padded to a 512-byte block."""
    writer.write(_header(ti))
    if data is None or not ti.isreg():
        return
    left = ti.size
    while left > 0:
        chunk = data.read(min(left, _BUF))
        if not chunk:
            raise ValueError(f"/{ti.name} is shorter than it was a moment ago: the store path changed")
        writer.write(chunk)
        left -= len(chunk)
    writer.write(b"\0" * (-ti.size % 512))


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_BUF):
            h.update(chunk)
    return h.hexdigest()


def _duplicates(paths: Sequence[str]) -> dict[str, str]:
    """{file: first identical file} for regular files that repeat one met earlier."""
    by_size: dict[tuple[int, int], list[str]] = {}
    for root in paths:
        for p in walk(root):
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                by_size.setdefault((st.st_size, stat.S_IMODE(st.st_mode)), []).append(p)
    links: dict[str, str] = {}
    for files in by_size.values():
        if len(files) < 2:
            continue
        first: dict[str, str] = {}
        for p in files:
            digest = _sha256(p)
            if digest in first:
                links[p] = first[digest]
            else:
                first[digest] = p
    return links


def etc_entries(user: str, uid: int, gid: int) -> list[Extra]:
    """``/etc/passwd`` and ``/etc/group`` with root and the image's user, and a ``/tmp`` that
    every user may write (mode 1777): what a non-root server needs and nothing else."""
    passwd = (f"root:x:0:0:root:/root:/sbin/nologin\n"
              f"{user}:x:{uid}:{gid}:{user}:/tmp:/sbin/nologin\n")
    group = f"root:x:0:\n{user}:x:{gid}:\n" if gid != 0 else "root:x:0:\n"
    return [Extra("etc", 0o755), Extra("etc/group", 0o644, group.encode()),
            Extra("etc/passwd", 0o644, passwd.encode()), Extra("tmp", 0o1777)]


def write_layer(out: BinaryIO | DigestWriter, paths: Sequence[str] = (), extras: Sequence[Extra] = (),
                dedup: bool = False) -> tuple[str, int]:
    """Write one layer tar of store ``paths`` (and ``extras``) to ``out``; returns its
    (``sha256:...`` digest, size). ``dedup``: identical files become hardlinks."""
    writer = out if isinstance(out, DigestWriter) else DigestWriter(out)
    roots = sorted(paths)
    links = _duplicates(roots) if dedup else {}
    for e in extras:
        if e.data is None:
            _add(writer, _base(e.name, tarfile.DIRTYPE, e.mode))
        else:
            ti = _base(e.name, tarfile.REGTYPE, e.mode)
            ti.size = len(e.data)
            _add(writer, ti, io.BytesIO(e.data))
    if roots:
        _add(writer, _base("nix", tarfile.DIRTYPE, 0o755))
        _add(writer, _base("nix/store", tarfile.DIRTYPE, 0o755))
    for root in roots:
        for p in walk(root):
            ti = _store_info(p)
            if p in links:
                ti.type, ti.size, ti.linkname = tarfile.LNKTYPE, 0, links[p].lstrip("/")
                _add(writer, ti)
            elif ti.isreg():
                with open(p, "rb") as f:
                    _add(writer, ti, f)
            else:
                _add(writer, ti)
    # The end: two zero blocks, without padding to a 10 KiB record (as Go's archive/tar writes it).
    writer.write(b"\0" * 1024)
    return writer.digest, writer.size
