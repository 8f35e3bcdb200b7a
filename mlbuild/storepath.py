"""Predicting Nix store paths of fixed-output content in pure Python (no nix call, no data read).

Same algorithm as Nix's ``makeFixedOutputPath``: a flat sha256 file is addressed through an
``output:out`` fingerprint of ``fixed:out:sha256:<hash>:``; a recursive (NAR) sha256 is a
``source`` path. The 32-byte digest is folded to 20 bytes and written in Nix base-32.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys

from .nar import nix_base32

__all__ = ["fixed_output_path", "check_output_path", "PathLock", "STORE_DIR"]

STORE_DIR = "/nix/store"


def _compress(digest: bytes, size: int = 20) -> bytes:
    out = bytearray(size)
    for i, b in enumerate(digest):
        out[i % size] ^= b
    return bytes(out)


def fixed_output_path(sha256_hex: str, name: str, recursive: bool, store: str = STORE_DIR) -> str:
    if recursive:
        fingerprint = f"source:sha256:{sha256_hex}:{store}:{name}"
    else:
        inner = hashlib.sha256(f"fixed:out:sha256:{sha256_hex}:".encode()).hexdigest()
        fingerprint = f"output:out:sha256:{inner}:{store}:{name}"
    digest = hashlib.sha256(fingerprint.encode()).digest()
    return f"{store}/{nix_base32(_compress(digest))}-{name}"


def check_output_path(drv_path: str, out_path: str, store: str = STORE_DIR) -> str:
    """Where ``nix build --rebuild`` (``nix-build --check``) builds ``out_path``, an output of
    ``drv_path`` that is valid already, to compare the two (Nix's ``makeFallbackPath``). Nix leaves
    it there after a check that passed, an invalid path that only a garbage collection removes."""
    drv, out = drv_path.rsplit("/", 1)[-1], out_path.rsplit("/", 1)[-1]
    fingerprint = f"rewrite:{drv}:{out}:sha256:{'0' * 64}:{store}:{out[33:]}"
    digest = hashlib.sha256(fingerprint.encode()).digest()
    return f"{store}/{nix_base32(_compress(digest))}-{out[33:]}"


class PathLock:
    """Nix's per-path lock (``<real path>.lock``; a non-empty file is stale): an ``flock``, as Nix
    takes it, and a POSIX lock, as mlbuild took it before (the two never exclude each other on
    Linux: a restore or a fast `data add` went on while Nix substituted or added the same path)."""

    def __init__(self, real: str) -> None:
        self.name = real + ".lock"
        while True:
            self.fd = os.open(self.name, os.O_RDWR | os.O_CREAT, 0o600)
            for lock in (fcntl.flock, fcntl.lockf):
                try:
                    lock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # held: say so rather than hang silently, then wait
                    print(f"mlbuild: waiting for the lock on {real} (another Nix or mlbuild process is writing it)",
                          file=sys.stderr, flush=True)
                    lock(self.fd, fcntl.LOCK_EX)
            if os.fstat(self.fd).st_size == 0:
                return
            os.close(self.fd)

    def release(self) -> None:
        os.write(self.fd, b"d")
        os.unlink(self.name)
        os.close(self.fd)
