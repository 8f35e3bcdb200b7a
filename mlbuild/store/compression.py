"""Which compression a NAR gets: ``none`` for weights and other incompressible data, else ``zstd``.

Never xz (minutes per GB). The choice is made before the NAR is written, from the store path's
name, the names and sizes of the files inside it, and, for large paths, a quick probe: zstd at
level 1 over a few 256 KiB samples of the largest files. Random-looking bytes (float weights,
already-compressed archives and images) do not shrink, and compressing them only costs time on
both push and pull.
"""

from __future__ import annotations

import os
from pathlib import Path

import zstandard

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
_RATIO = 0.9                # a probe that keeps more than 90% of the bytes means "incompressible"


def nar_suffix(compression: str) -> str:
    return {NONE: ".nar", ZSTD: ".nar.zst"}[compression]


def _incompressible_name(name: str) -> bool:
    return name.lower().endswith(INCOMPRESSIBLE_SUFFIXES)


def _files(real: str) -> list[tuple[int, str]]:
    """(size, path) of up to _MAX_FILES regular files under ``real``, largest first."""
    if os.path.isfile(real) and not os.path.islink(real):
        return [(os.path.getsize(real), real)]
    found: list[tuple[int, str]] = []
    for dirpath, _dirs, names in os.walk(real):
        for n in names:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                found.append((os.path.getsize(p), p))
            if len(found) >= _MAX_FILES:
                break
    return sorted(found, reverse=True)


def _probe(files: list[tuple[int, str]], total: int) -> float:
    """Compressed / raw over samples from the files that hold most of the bytes."""
    cctx = zstandard.ZstdCompressor(level=1)
    raw = packed = covered = 0
    for size, path in files[:8]:
        with open(path, "rb") as f:
            for offset in {0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)}:
                f.seek(offset)
                data = f.read(_SAMPLE)
                raw += len(data)
                packed += len(cctx.compress(data))
        covered += size
        if covered >= total * 0.8:
            break
    return packed / raw if raw else 0.0


def choose_compression(store_path: str, real_path: str | None, nar_size: int) -> str:
    """``none`` or ``zstd`` for this path; ``real_path`` is where its files can be read (or None)."""
    if _incompressible_name(store_path):
        return NONE
    if nar_size < _SMALL or real_path is None or not os.path.exists(real_path):
        return ZSTD
    try:
        files = _files(real_path)
        total = sum(s for s, _ in files) or 1
        if sum(s for s, p in files if _incompressible_name(p)) >= total / 2:
            return NONE
        return NONE if _probe(files, total) > _RATIO else ZSTD
    except OSError:
        return ZSTD


def real_path_in(store_path: str, local_store: str | None) -> str | None:
    """Where the files of ``store_path`` lie on this machine for a local store spec, else None."""
    if not local_store or local_store in ("auto", "local", "daemon"):
        return store_path
    root = local_store
    if root.startswith("local?"):
        opts = dict(kv.split("=", 1) for kv in root[len("local?"):].split("&") if "=" in kv)
        if "root" not in opts:
            return None
        root = opts["root"]
    if not root.startswith("/"):
        return None
    return str(Path(root)) + store_path

