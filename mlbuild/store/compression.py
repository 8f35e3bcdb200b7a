"""Which compression a NAR gets: ``none`` for weights and other incompressible data, else ``zstd``.

Never xz (minutes per GB). The choice is made before the NAR is written, from the store path's
name, the names and sizes of the files inside it, and, for large paths, a quick probe: zstd at
level 1 over a few 256 KiB samples of the largest files, compressed together. Random-looking
bytes (float weights, already-compressed archives and images) do not shrink, and compressing them
only costs time on both push and pull. The NAR's own framing (each entry's name, type, size and
padding: ~200 bytes a file) is counted too: in a dataset of many small files it is most of the
NAR, and zstd keeps a few percent of it.
"""

from __future__ import annotations

import heapq
import os
from pathlib import Path

import zstandard

from .. import _nix

__all__ = ["choose_compression", "real_path_in", "NONE", "ZSTD", "INCOMPRESSIBLE_SUFFIXES", "nar_suffix"]

NONE = "none"
ZSTD = "zstd"
INCOMPRESSIBLE_SUFFIXES = (
    ".safetensors", ".pt", ".pth", ".ckpt", ".bin", ".onnx", ".gguf", ".h5", ".npz", ".npy",
    ".zip", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".lz4", ".7z", ".whl", ".parquet",
    ".jpg", ".jpeg", ".png", ".webp", ".mp4", ".mp3", ".flac",
)
_SMALL = 1 << 20            # below this, zstd always (cheap, and small files do shrink)
_SAMPLE = 256 << 10
_MAX_FILES = 20000
_MAX_PROBED = 4096          # files sampled at most (small files: until _SAMPLE bytes are read)
_BUDGET = 24 * _SAMPLE      # bytes sampled at most: 8 files' 3 samples (4,096 of 1 MB files: 3 GB read, held twice)
_FRAMING = 0.1              # what zstd keeps of NAR framing (measured: 0.7% for 100,000 small files)
_RATIO = 0.9                # a probe that keeps more than 90% of the bytes means "incompressible"


def nar_suffix(compression: str) -> str:
    return {NONE: ".nar", ZSTD: ".nar.zst"}[compression]


def _incompressible_name(name: str) -> bool:
    return name.lower().endswith(INCOMPRESSIBLE_SUFFIXES)


def _files(real: str) -> tuple[list[tuple[int, str]], int, int]:
    """(size, path) of the _MAX_FILES largest regular files under ``real``, largest first; the
    bytes of all of them, and of those named as incompressible."""
    if os.path.isfile(real) and not os.path.islink(real):
        size = os.path.getsize(real)
        return [(size, real)], size, size if _incompressible_name(real) else 0
    largest: list[tuple[int, str]] = []   # a heap
    total = named = 0
    for dirpath, _dirs, names in os.walk(real):
        for n in names:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                size = os.path.getsize(p)
                total += size
                named += size if _incompressible_name(n) else 0
                (heapq.heappush if len(largest) < _MAX_FILES else heapq.heappushpop)(largest, (size, p))
    return sorted(largest, reverse=True), total, named


def _probe(files: list[tuple[int, str]], total: int) -> float:
    """Compressed / raw over samples from the files that hold most of the bytes, compressed as
    one input: each sample alone, a small file's few bytes came out larger than they went in
    (zstd's frame), so a dataset of small text files read as incompressible."""
    packer = zstandard.ZstdCompressor(level=1).compressobj()
    raw = packed = covered = 0
    for i, (size, path) in enumerate(files):
        if (i >= 8 and covered >= total * 0.8 and raw >= _SAMPLE) or i >= _MAX_PROBED or raw >= _BUDGET:
            break
        with open(path, "rb") as f:
            for offset in sorted({0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)}):
                f.seek(offset)
                data = f.read(_SAMPLE)
                raw += len(data)
                packed += len(packer.compress(data))
        covered += size
    return (packed + len(packer.flush())) / raw if raw else 0.0


def choose_compression(store_path: str, real_path: str | None, nar_size: int) -> str:
    """``none`` or ``zstd`` for this path; ``real_path`` is where its files can be read (or None)."""
    if _incompressible_name(store_path):
        return NONE
    if nar_size < _SMALL or real_path is None or not os.path.exists(real_path):
        return ZSTD
    try:
        files, total, named = _files(real_path)
        framing = max(0, nar_size - total)   # the NAR's own bytes: names, sizes, padding
        if named >= (total + framing) / 2:
            return NONE
        packed = _probe(files, total) * total + _FRAMING * framing
        return NONE if packed > _RATIO * (total + framing) else ZSTD
    except OSError:
        return ZSTD


def real_path_in(store_path: str, local_store: str | None) -> str | None:
    """Where the files of ``store_path`` lie on this machine for a local store spec (default: the
    store Nix's calls use, NIX_CONFIG's ``store = /tmp/machine-b`` or NIX_REMOTE's included), else None."""
    if not local_store:
        # a push after `NIX_CONFIG="store = /tmp/machine-b" mlbuild build --push` (or NIX_REMOTE=/tmp/machine-b) read
        # /nix/store/X, where the build's output is not: "nix-store --dump /nix/store/...-digits-model: No such file"
        local_store = _nix.effective_store()
    if not local_store or local_store in ("auto", "local", "daemon") or local_store.startswith(("daemon?", "unix://")):
        return store_path   # this machine's store (a daemon's too): its files are where its paths say
    if _nix.real_store_dir(local_store) is None:   # a remote store, or one whose folder is not said
        return None
    return _nix.real_path(store_path, local_store)
