"""Nix archive (NAR) hashing and Nix's base-32 encoding, in pure Python.

Nix addresses a recursive fixed-output path by the sha256 of the NAR serialisation of the tree.
Computing it here lets the driver hash data while it reads it once (no second pass through
``nix hash path``) and predict store paths without touching the store.

The NAR format (Eelco Dolstra's thesis, section 5.2.1): every string is written as a little-endian
u64 length, the bytes, and zero padding to a multiple of 8. A tree is
``nix-archive-1 ( type regular [executable ""] contents <bytes> )``, ``( type symlink target T )``
or ``( type directory entry ( name N node <tree> ) ... )`` with entries sorted by name bytes.
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import BinaryIO, Callable, Protocol

__all__ = ["nar_sha256", "NarWriter", "NotStorableError", "ChangedWhileReadError", "nix_base32", "from_nix_base32", "CHUNK"]

CHUNK = 1 << 20
_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"


class NotStorableError(ValueError):
    """A file no NAR can hold (a pipe, socket or device); ``path`` names it."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path}: cannot be put in a Nix store (not a file, folder or symlink)")


class ChangedWhileReadError(ValueError):
    """A file that changed size while it was read (something still writes to it); ``path`` names it."""

    def __init__(self, path: str, size: int, read: int) -> None:
        self.path = path
        super().__init__(f"{path} changed size while it was read ({size} -> {read} bytes)")


class _Sink(Protocol):
    def update(self, data: bytes, /) -> None: ...


def _str(data: bytes) -> bytes:
    pad = (-len(data)) % 8
    return len(data).to_bytes(8, "little") + data + b"\0" * pad


class NarWriter:
    """Streams the NAR of a path into ``sink.update``; ``on_file`` sees each regular file's bytes.

    ``on_file(path, chunk)`` lets a caller copy the data in the same read (one pass, one read).
    """

    def __init__(self, sink: _Sink, on_file: Callable[[str, bytes], None] | None = None) -> None:
        self.sink = sink
        self.on_file = on_file

    def dump(self, path: str) -> None:
        self.sink.update(_str(b"nix-archive-1"))
        self._node(path)

    def _node(self, path: str) -> None:
        w = self.sink.update
        st = os.lstat(path)
        w(_str(b"("))
        if stat.S_ISLNK(st.st_mode):
            w(_str(b"type") + _str(b"symlink") + _str(b"target") + _str(os.fsencode(os.readlink(path))))
        elif stat.S_ISDIR(st.st_mode):
            w(_str(b"type") + _str(b"directory"))
            for name in sorted(os.listdir(path), key=os.fsencode):
                w(_str(b"entry") + _str(b"(") + _str(b"name") + _str(os.fsencode(name)) + _str(b"node"))
                self._node(os.path.join(path, name))
                w(_str(b")"))
        elif stat.S_ISREG(st.st_mode):
            w(_str(b"type") + _str(b"regular"))
            if st.st_mode & 0o100:
                w(_str(b"executable") + _str(b""))
            w(_str(b"contents") + st.st_size.to_bytes(8, "little"))
            with open(path, "rb") as f:
                self._contents(path, f, st.st_size)
        else:
            raise NotStorableError(path)
        w(_str(b")"))

    def _contents(self, path: str, f: BinaryIO, size: int) -> None:
        done = 0
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            done += len(chunk)
            self.sink.update(chunk)
            if self.on_file is not None:
                self.on_file(path, chunk)
        if done != size:
            raise ChangedWhileReadError(path, size, done)
        pad = (-size) % 8
        if pad:
            self.sink.update(b"\0" * pad)


def nar_sha256(path: str) -> str:
    """The hex sha256 of the NAR of ``path`` (what ``outputHashMode = "recursive"`` pins)."""
    h = hashlib.sha256()
    NarWriter(h).dump(path)
    return h.hexdigest()


def nix_base32(digest: bytes) -> str:
    """Nix's base-32 rendering of a digest (as in store paths and ``sha256:`` hashes)."""
    n = len(digest)
    out_len = (n * 8 - 1) // 5 + 1
    chars = []
    for i in range(out_len - 1, -1, -1):
        b = i * 5
        j, k = divmod(b, 8)
        c = digest[j] >> k
        if j + 1 < n:
            c |= digest[j + 1] << (8 - k)
        chars.append(_ALPHABET[c & 0x1F])
    return "".join(chars)


def from_nix_base32(text: str) -> bytes:
    """Inverse of :func:`nix_base32`."""
    n = len(text) * 5 // 8
    out = bytearray(n)
    for i, ch in enumerate(reversed(text)):
        digit = _ALPHABET.index(ch)
        b = i * 5
        j, k = divmod(b, 8)
        out[j] |= (digit << k) & 0xFF
        if j + 1 < n:
            out[j + 1] |= digit >> (8 - k)
        elif digit >> (8 - k):
            raise ValueError(f"invalid Nix base-32 hash {text!r}")
    return bytes(out)
