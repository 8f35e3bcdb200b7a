"""NARs as segments (framing bytes and whole-file runs) for writers that copy file data in the kernel.

:func:`nar_segments` serialises a tree exactly as ``nix-store --dump`` does (see mlbuild.nar),
but yields a :class:`FileData` for each regular file's contents instead of its bytes, so a writer
can copy them with ``copy_file_range`` (as ``cp`` does) while another thread hashes them.
:func:`parse_nar` is the strict reader used to restore a NAR: it rejects names that could leave
the destination (``/``, ``.``, ``..``, NUL), unsorted or duplicate entries and unknown tokens.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import BinaryIO, Iterator

__all__ = ["FileData", "nar_segments", "NarEntry", "parse_nar", "NarFormatError"]


class NarFormatError(ValueError):
    """The bytes are not a well-formed NAR."""


def _str(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data + b"\0" * ((-len(data)) % 8)


@dataclass(frozen=True)
class FileData:
    """The contents of ``path`` (``size`` bytes) at this point of the NAR; padding follows separately."""

    path: str
    size: int


def nar_segments(path: str) -> Iterator[bytes | FileData]:
    """The NAR of ``path``: framing as bytes, file contents as FileData, in NAR order."""
    buf = bytearray(_str(b"nix-archive-1"))

    def node(p: str) -> Iterator[bytes | FileData]:
        nonlocal buf
        st = os.lstat(p)
        buf += _str(b"(")
        if stat.S_ISLNK(st.st_mode):
            buf += _str(b"type") + _str(b"symlink") + _str(b"target") + _str(os.fsencode(os.readlink(p)))
        elif stat.S_ISDIR(st.st_mode):
            buf += _str(b"type") + _str(b"directory")
            for name in sorted(os.listdir(p), key=os.fsencode):
                buf += _str(b"entry") + _str(b"(") + _str(b"name") + _str(os.fsencode(name)) + _str(b"node")
                yield from node(os.path.join(p, name))
                buf += _str(b")")
        elif stat.S_ISREG(st.st_mode):
            buf += _str(b"type") + _str(b"regular")
            if st.st_mode & 0o100:
                buf += _str(b"executable") + _str(b"")
            buf += _str(b"contents") + st.st_size.to_bytes(8, "little")
            if st.st_size:
                yield bytes(buf)
                buf = bytearray()
                yield FileData(p, st.st_size)
                buf += b"\0" * ((-st.st_size) % 8)
        else:
            raise NarFormatError(f"{p}: not a regular file, folder or symlink")
        buf += _str(b")")

    yield from node(path)
    if buf:
        yield bytes(buf)


@dataclass(frozen=True)
class NarEntry:
    """One node of a NAR being read: ``kind`` is directory, regular or symlink; ``rel`` its path."""

    kind: str
    rel: str
    executable: bool = False
    offset: int = 0          # regular: where the contents start in the NAR
    size: int = 0            # regular: how many bytes
    target: str = ""         # symlink


class _Reader:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.pos = 0

    def exact(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise NarFormatError(f"NAR ends early at byte {self.pos + len(data)}")
        self.pos += n
        return data

    def u64(self) -> int:
        return int.from_bytes(self.exact(8), "little")

    def string(self, limit: int = 1 << 16) -> bytes:
        n = self.u64()
        if n > limit:
            raise NarFormatError(f"NAR string of {n} bytes at byte {self.pos}")
        data = self.exact(n)
        pad = self.exact((-n) % 8)
        if pad.strip(b"\0"):
            raise NarFormatError(f"non-zero padding at byte {self.pos}")
        return data

    def expect(self, token: bytes) -> None:
        got = self.string()
        if got != token:
            raise NarFormatError(f"expected {token!r} at byte {self.pos}, got {got[:40]!r}")

    def skip(self, n: int) -> None:
        self.f.seek(n, os.SEEK_CUR)
        self.pos += n


def parse_nar(f: BinaryIO) -> Iterator[NarEntry]:
    """Entries of the NAR in ``f`` (seekable: file contents are skipped, their offsets reported)."""
    r = _Reader(f)
    r.expect(b"nix-archive-1")
    yield from _parse_node(r, "")
    if f.read(1):
        raise NarFormatError(f"trailing bytes after the NAR at byte {r.pos}")


def _parse_node(r: _Reader, rel: str) -> Iterator[NarEntry]:
    r.expect(b"(")
    r.expect(b"type")
    kind = r.string()
    if kind == b"regular":
        tok = r.string()
        executable = tok == b"executable"
        if executable:
            r.expect(b"")
            tok = r.string()
        if tok != b"contents":
            raise NarFormatError(f"expected 'contents' at byte {r.pos}")
        size = r.u64()
        yield NarEntry("regular", rel, executable, r.pos, size)
        r.skip(size)
        if r.exact((-size) % 8).strip(b"\0"):
            raise NarFormatError(f"non-zero padding at byte {r.pos}")
        r.expect(b")")
    elif kind == b"symlink":
        r.expect(b"target")
        target = r.string(4096)
        if not target or b"\0" in target:
            raise NarFormatError(f"bad symlink target at byte {r.pos}")
        yield NarEntry("symlink", rel, target=os.fsdecode(target))
        r.expect(b")")
    elif kind == b"directory":
        yield NarEntry("directory", rel)
        last = b""
        while True:
            tok = r.string()
            if tok == b")":
                break
            if tok != b"entry":
                raise NarFormatError(f"expected 'entry' or ')' at byte {r.pos}")
            r.expect(b"(")
            r.expect(b"name")
            name = r.string(255)
            if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
                raise NarFormatError(f"unsafe entry name {name!r} at byte {r.pos}")
            if last and name <= last:
                raise NarFormatError(f"entry {name!r} is not sorted after {last!r}")
            last = name
            r.expect(b"node")
            yield from _parse_node(r, f"{rel}/{os.fsdecode(name)}" if rel else os.fsdecode(name))
            r.expect(b")")
    else:
        raise NarFormatError(f"unknown node type {kind[:20]!r} at byte {r.pos}")
