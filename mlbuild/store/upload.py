"""Publishing one store path: write its NAR once (hash, compress, copy), then its signed narinfo.

Uncompressed NARs of readable paths are written like ``cp`` writes: framing with ``write`` and file
contents with ``copy_file_range`` in the kernel, while a second thread hashes the NAR from the
framing and the file slices just copied (:mod:`mlbuild.fastcopy`), with sha256 and with BLAKE3,
whose hash is signed into the narinfo for fast restores (:mod:`mlbuild.store.narinfo`). Other
NARs stream through zstd in one pass. Either way the NAR hash must equal the one Nix registered
for the path (a mismatch means a corrupt local store, and nothing is published). The NAR goes to
a temp file unique across hosts and is renamed to ``nar/<filehash>.nar[.zst]``; only then is the
narinfo written (temp file, fsync, rename). A writer killed at any point leaves at most a temp
file. The NAR itself is fsynced before the rename only with ``fsync_nars`` (the store's
``fsync-nars``; off by default, like Nix's ``fsync-store-paths``; see StoreConfig).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from typing import Any

import zstandard

from .. import _nix
from ..errors import StoreCorruptError
from ..storepath import fixed_output_path
from ..nar import CHUNK, nix_base32
from .compression import NONE, ZSTD, choose_compression, nar_suffix, real_path_in
from .keys import SecretKey
from .layout import FILE_MODE, Layout, fsync_dir, publish_bytes, temp_name
from .narinfo import NarInfo, format_b3, format_hash, parse_hash
from ..fastcopy import HashPipe, kernel_copy, new_hash
from .narstream import nar_segments

__all__ = ["PathInfo", "path_infos", "publish_path"]


@dataclass(frozen=True)
class PathInfo:
    """What the local store registered for a path (``nix path-info --json``)."""

    path: str
    nar_hash: str            # sha256:<base32>
    nar_size: int
    references: tuple[str, ...]  # full paths
    deriver: str | None = None
    ca: str | None = None

    @classmethod
    def from_json(cls, path: str, data: dict[str, Any]) -> PathInfo:
        store_dir = path.rsplit("/", 1)[0]
        refs = tuple(sorted(r if "/" in r else f"{store_dir}/{r}" for r in data.get("references", [])))
        ca = data.get("ca")
        digest = parse_hash(data["narHash"])
        return cls(path=path, nar_hash=format_hash(digest), nar_size=int(data["narSize"]),
                   references=refs, deriver=data.get("deriver") or None,
                   ca=ca if isinstance(ca, str) and ca else _recursive_ca(path, digest, refs))


def _recursive_ca(path: str, nar_digest: bytes, references: tuple[str, ...]) -> str | None:
    """The content address of a path that is one without the store saying so: `mlbuild data add`
    registers datasets with `nix-store --register-validity`, which cannot record a CA. A path
    with no references whose name is the recursive sha256 fixed-output path of its NAR hash is
    content-addressed (Nix checks exactly this when it substitutes a narinfo with a CA field, and
    then accepts it without a signature, and `nix copy` moves it)."""
    if references:
        return None
    store_dir, base = path.rsplit("/", 1)
    name = base[33:]
    if fixed_output_path(nar_digest.hex(), name, recursive=True, store=store_dir) != path:
        return None
    return f"fixed:r:{format_hash(nar_digest)}"


def path_infos(paths: list[str], *, store: str | None = None, recursive: bool = False) -> dict[str, PathInfo]:
    raw = _nix.path_info_in(paths, store=store, recursive=recursive)
    return {p: PathInfo.from_json(p, d) for p, d in raw.items()}


@dataclass
class _Written:
    nar_hash: bytes
    nar_size: int
    file_hash: bytes
    file_size: int
    b3: bytes | None = None   # BLAKE3 of the NAR (uncompressed NARs: what a fast restore checks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_plain(real: str, fd: int, tmp: str, fsync: bool) -> _Written:
    """The NAR of ``real`` into ``fd`` (the temp file ``tmp``), written like ``cp`` writes, and
    hashed (sha256 and BLAKE3) from the store path's files, slice by slice right after the copy
    read them (still in the page cache); on disk on return if ``fsync``.

    Hashing the source, not the temp file, was measured here: ~13% less CPU and a ~10% faster
    push (2 GiB, medians of 10), as the hashers no longer fault in the pages the copy is dirtying.
    The sha256 checks the local store against Nix's registration; the bytes written are the
    kernel's copy of the bytes hashed, as with ``cp``, and every reader checks them again (Nix
    the NAR hash, ``mlbuild store pull`` the BLAKE3 hash, ``mlbuild store verify`` both)."""
    pos = 0
    with HashPipe(algorithms=("sha256", "blake3")) as pipe:
        for seg in nar_segments(real):
            if isinstance(seg, bytes):
                _write_all(fd, seg)
                pipe.framing(seg)
                pos += len(seg)
                continue
            start, path = pos, seg.path

            def hash_source(offset: int, n: int) -> None:   # the store path's pages the copy just read
                pipe.region(path, offset - start, n)

            src = os.open(path, os.O_RDONLY)
            try:
                kernel_copy(src, fd, seg.size, what=path, on_slice=hash_source)
            finally:
                os.close(src)
            pos += seg.size
        if fsync:
            os.fsync(fd)   # the write-back overlaps the hashers' tails
        digest, size = pipe.finish()
    if size != pos:
        raise StoreCorruptError(f"{tmp}: hashed {size} bytes of the {pos} written")
    return _Written(digest, size, digest, size, pipe.digests["blake3"])


def _chunks_from_tree(real: str) -> Any:
    for seg in nar_segments(real):
        if isinstance(seg, bytes):
            yield seg
            continue
        with open(seg.path, "rb", buffering=0) as f:
            while chunk := f.read(CHUNK):
                yield chunk


def _chunks_from_nix(path: str, store: str | None) -> Any:
    proc = _nix.dump_nar(path, store=store)
    assert proc.stdout is not None
    try:
        while chunk := proc.stdout.read(CHUNK):
            yield chunk
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.wait() != 0:
            raise StoreCorruptError(f"`nix-store --dump {path}` failed: {err.strip()[-500:]}")


def _write_stream(chunks: Any, fd: int, compression: str, level: int) -> _Written:
    nar_h, file_h = hashlib.sha256(), hashlib.sha256()
    b3_h = new_hash("blake3") if compression == NONE else None
    nar_size = file_size = 0
    cobj = zstandard.ZstdCompressor(level=level).compressobj() if compression == ZSTD else None

    def out(data: bytes) -> None:
        nonlocal file_size
        if data:
            file_h.update(data)
            file_size += len(data)
            _write_all(fd, data)

    for chunk in chunks:
        nar_h.update(chunk)
        if b3_h is not None:
            b3_h.update(chunk)
        nar_size += len(chunk)
        out(cobj.compress(chunk) if cobj else chunk)
    if cobj:
        out(cobj.flush())
    return _Written(nar_h.digest(), nar_size, file_h.digest(), file_size,
                    b3_h.digest() if b3_h is not None else None)


def publish_path(layout: Layout, info: PathInfo, key: SecretKey, *, local_store: str | None = None,
                 zstd_level: int = 3, compression: str | None = None, fsync_nars: bool = False) -> NarInfo:
    """Upload ``info.path`` (NAR, then narinfo) into the store at ``layout``; returns the narinfo.
    ``fsync_nars``: the NAR is on disk before it is renamed into place (see the module doc)."""
    real = real_path_in(info.path, local_store)
    if real is not None and not os.path.lexists(real):
        real = None
    comp = compression or choose_compression(info.path, real, info.nar_size)
    tmp = layout.nar_dir / temp_name(".nar")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        if comp == NONE and real is not None:
            w = _write_plain(real, fd, str(tmp), fsync_nars)
        else:
            chunks = _chunks_from_tree(real) if real is not None else _chunks_from_nix(info.path, local_store)
            w = _write_stream(chunks, fd, comp, zstd_level)
        if format_hash(w.nar_hash) != info.nar_hash or w.nar_size != info.nar_size:
            raise StoreCorruptError(
                f"{info.path}: its NAR hashes to {format_hash(w.nar_hash)} ({w.nar_size} bytes), but the local "
                f"store registered {info.nar_hash} ({info.nar_size} bytes); repair it with "
                f"`nix-store --verify --check-contents --repair` and push again")
        if fsync_nars and (comp != NONE or real is None):
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    url = f"nar/{nix_base32(w.file_hash)}{nar_suffix(comp)}"
    final = layout.nar(url)
    try:
        same = final.stat().st_size == w.file_size
    except FileNotFoundError:
        same = False
    if same:   # another writer published the same bytes: keep theirs (readers may hold it open)
        try:   # made recent: gc spares it even if it found no narinfo naming it (this one is not written yet)
            os.utime(final)
        except FileNotFoundError:   # gc removed it meanwhile
            same = False
        except PermissionError:
            pass
    if same:
        tmp.unlink()
    else:
        os.replace(tmp, final)
        fsync_dir(layout.nar_dir)
    store_dir = info.path.rsplit("/", 1)[0]
    narinfo = NarInfo(
        store_path=info.path, url=url, compression=comp, file_hash=format_hash(w.file_hash),
        file_size=w.file_size, nar_hash=info.nar_hash, nar_size=info.nar_size,
        references=tuple(sorted(r[len(store_dir) + 1:] for r in info.references)),
        deriver=info.deriver.rsplit("/", 1)[-1] if info.deriver else None, ca=info.ca,
        b3=format_b3(w.b3) if w.b3 is not None else None,
    )
    narinfo = narinfo.with_sigs((key.sign(narinfo.fingerprint()),))
    if narinfo.b3:
        narinfo = replace(narinfo, b3_sigs=(key.sign(narinfo.b3_message()),))
    publish_bytes(layout.narinfo(info.path), narinfo.render().encode())
    return narinfo
