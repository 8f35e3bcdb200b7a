"""Restoring uncompressed NARs straight into a local Nix store, as fast as ``cp`` allows.

For a NAR stored without compression (weights and other large incompressible data), file
contents are copied from the cache with ``copy_file_range`` (in the kernel, like ``cp``) while a
second thread hashes, slice by slice, the bytes that landed in the destination
(:mod:`mlbuild.fastcopy`): the NAR is read from disk once. The path is
registered (``nix-store --load-db``, then the store's signatures with ``nix store copy-sigs``) only when

- its narinfo carries a signature by a trusted key (checked before anything is written),
- the hash and size of the NAR made of the framing read and the bytes written equal the signed
  ones: the ``MlbuildB3`` BLAKE3 hash when a trusted key signed it (``MlbuildB3Sig``), which runs
  at copy speed, else ``NarHash`` (sha256), and
- the restored tree's own framing (names, types, sizes, executable bits, link targets, read back
  from disk) is byte-identical to the framing that was hashed.

Anything else is removed and refused, as Nix refuses it. The path is held under Nix's own path
lock (``<path>.lock``, fcntl) while it is written, so Nix never substitutes it at the same time.
Used when the local store's folder and database are writable here (root without a daemon, or a
chroot store); otherwise, and for compressed NARs, Nix copies (:mod:`mlbuild.store.pull`).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

from .. import _nix
from ..errors import StoreCorruptError
from ..fastcopy import HashPipe, kernel_copy
from ..storepath import PathLock
from .keys import PublicKey, check_signatures
from .layout import Layout
from .narinfo import NarInfo, format_b3, format_hash
from .narstream import NarFormatError, nar_segments, parse_nar
from .verify import untrusted_hint

__all__ = ["real_store_dir", "restore_paths"]


def real_store_dir(local_store: str | None) -> Path | None:
    """Where the local store's paths lie, if this process may write them and their database."""
    if local_store is None:
        if not _nix.store_is_local():
            return None   # Nix's calls go to a daemon (root's too, with NIX_REMOTE=daemon): it registers
        root = Path("/")
    elif local_store.startswith("/"):
        root = Path(local_store)
    else:
        return None
    store, db = root / "nix" / "store", root / "nix" / "var" / "nix" / "db"
    if store.is_dir() and db.is_dir() and os.access(store, os.W_OK) and os.access(db, os.W_OK):
        return store
    return None


class _Tap:
    """A buffered file object that hands every byte read through it (the NAR's framing) to
    ``pipe``, gathered until :meth:`flush`: the parser reads 8-byte fields, and a NAR of 100,000
    small files was 3.5 million unbuffered reads and as many items for the hashing thread."""

    def __init__(self, f: Any, pipe: HashPipe) -> None:
        self.f, self.pipe = io.BufferedReader(f, _TAP_BUFFER), pipe
        self.pending = bytearray()

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.f.read(n)
        self.pending += data
        if len(self.pending) >= _TAP_BUFFER:
            self.flush()
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self.f.seek(offset, whence))

    def flush(self) -> None:
        """Hand the framing read so far to the pipe (before a file's contents, which follow it)."""
        if self.pending:
            self.pipe.framing(bytes(self.pending))
            self.pending.clear()


_TAP_BUFFER = 64 << 10


def _unpack(nar_path: Path, dest: str, pipe: HashPipe) -> list[str]:
    """Write the tree, handing framing and written file contents to ``pipe`` in NAR order;
    returns the folders (made read-only once everything is hashed)."""
    dirs: list[str] = []
    with open(nar_path, "rb", buffering=0) as raw:
        src = raw.fileno()
        tap = _Tap(raw, pipe)
        for e in parse_nar(tap):  # type: ignore[arg-type]
            target = os.path.join(dest, e.rel) if e.rel else dest
            if e.kind == "directory":
                os.mkdir(target, 0o755)
                dirs.append(target)
            elif e.kind == "symlink":
                os.symlink(e.target, target)
            else:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                tap.flush()   # the framing before this file's contents, in NAR order
                try:
                    kernel_copy(src, fd, e.size, src_offset=e.offset, what=f"{nar_path} (inside {e.rel or 'the file'})",
                                on_slice=lambda offset, n: pipe.region(target, offset, n))
                    os.fchmod(fd, 0o555 if e.executable else 0o444)
                finally:
                    os.close(fd)
        tap.flush()
    return dirs


def _canonical_framing(dest: str) -> bytes:
    return b"".join(s if isinstance(s, bytes) else b"" for s in nar_segments(dest))


def _restore(layout: Layout, info: NarInfo, dest: str, keys: tuple[PublicKey, ...]) -> None:
    # The signed BLAKE3 hash when there is one (3x faster than sha256: the copy, not the hash,
    # then bounds the restore); else Nix's NarHash.
    fast = bool(info.b3) and check_signatures(info.b3_sigs, info.b3_message(), keys)
    with HashPipe(keep_framing=True, algorithms=("blake3",) if fast else ("sha256",)) as pipe:
        try:
            dirs = _unpack(layout.nar(info.url), dest, pipe)
        except (NarFormatError, OSError) as e:
            raise StoreCorruptError(f"{info.store_path}: the NAR in {layout.root} is malformed ({e}); run "
                                    f"`mlbuild store verify --repair` and push it again") from None
        digest, size = pipe.finish()
    got, want = (format_b3(digest), info.b3) if fast else (format_hash(digest), info.nar_hash)
    if got != want or size != info.nar_size:
        raise StoreCorruptError(f"hash mismatch restoring {info.store_path}: got {got} ({size} bytes), the "
                                f"signed narinfo says {want} ({info.nar_size}); run `mlbuild store verify "
                                f"--repair` and push it again")
    assert pipe.framing_bytes is not None
    if _canonical_framing(dest) != bytes(pipe.framing_bytes):
        raise StoreCorruptError(f"{info.store_path}: the restored tree differs from its NAR")
    for path in [*dirs[::-1]]:
        os.chmod(path, 0o555)
    for root, names, files in os.walk(dest):
        for n in names + files:
            os.utime(os.path.join(root, n), (1, 1), follow_symlinks=False)
    os.utime(dest, (1, 1), follow_symlinks=False)


def _remove(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        for root, dirs, _files in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
        os.chmod(path, 0o755)
        shutil.rmtree(path)


def _registration(info: NarInfo) -> str:
    refs = info.reference_paths
    deriver = f"{info.store_dir}/{info.deriver}" if info.deriver else ""
    return "".join(f"{line}\n" for line in [info.store_path, info.nar_hash, str(info.nar_size), deriver,
                                            str(len(refs)), *refs])


def restore_paths(layout: Layout, infos: list[NarInfo], keys: tuple[PublicKey, ...],
                  local_store: str | None, store_dir: Path) -> list[str]:
    """Restore and register ``infos`` (uncompressed, references already valid or earlier in the list)."""
    done: list[str] = []
    for info in infos:
        if not check_signatures(info.sigs, info.fingerprint(), keys):
            raise StoreCorruptError(f"refusing {info.store_path}: it lacks a valid signature by a trusted key. "
                                    f"{untrusted_hint([info], keys, layout.root)}")
        real = str(store_dir / info.store_path.rsplit("/", 1)[-1])
        lock = PathLock(real)
        try:
            if not _nix.invalid_paths_in([info.store_path], store=local_store):
                continue   # someone else substituted it meanwhile
            _remove(real)
            try:
                _restore(layout, info, real, keys)
                _nix.load_db(_registration(info), store=local_store)
            except BaseException:   # a registration refused too: no unregistered tree left in the store
                _remove(real)
                raise
            done.append(info.store_path)
        finally:
            lock.release()
    _nix.copy_sigs(f"file://{layout.root}", done, store=local_store)   # so they can be copied on, signed
    return done
