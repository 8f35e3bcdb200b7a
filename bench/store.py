"""Benchmark of the shared store: push and restore of a large incompressible path, against ``cp``.

Prints, for a store path of SIZE GiB of random bytes (a model's weights):

- push:    ``mlbuild.store.push`` into an empty store  /  ``cp`` of the same bytes;
- restore: ``mlbuild.store.pull`` into an empty Nix store  /  ``cp`` of the same bytes.

Both are measured in the same run, interleaved with their ``cp`` reference, REPS times; the
median of the per-rep ratios is the result (goal: <= 1.3). ``--nix-copy`` also times Nix's own
``nix copy`` both ways for scale. Everything lives in one temporary folder (a chroot Nix store as
the source machine, fresh ones as targets), removed at the end, even on Ctrl-C.

    .venv/bin/python bench/store.py            # 2 GiB, 3 reps
    .venv/bin/python bench/store.py --gib 0.25 --reps 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlbuild import _nix  # noqa: E402
from mlbuild.store import StoreConfig, init_store, pull, push  # noqa: E402
from mlbuild.store.layout import Layout  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def make_source(work: Path, gib: float) -> tuple[str, Path]:
    """A chroot Nix store holding ``gib`` GiB of random bytes as a fixed-output path."""
    data = work / "weights.safetensors"
    left = int(gib * (1 << 30))
    with open(data, "wb") as f:
        while left:
            n = min(left, 16 << 20)
            f.write(os.urandom(n))
            left -= n
    store = work / "A"
    path = _nix.run_nix(["--store", str(store), "--add-fixed", "sha256", str(data)], tool="nix-store").stdout.strip()
    data.unlink()
    return path, store / path.lstrip("/")


COLD = "data"   # what each timing starts without in the page cache: data, all, or none


def evict(*paths: Path) -> None:
    """Drop the page-cache pages of the files under ``paths`` (after ``sync``: clean pages)."""
    for top in paths:
        walk = [(str(top), [], [""])] if top.is_file() else os.walk(top)
        for root, _dirs, files in walk:
            for name in files:
                f = os.path.join(root, name) if name else root
                if os.path.islink(f):
                    continue
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def sync(*data: Path) -> None:
    """Start each timing with no dirty pages (otherwise it pays for the previous step's
    writeback) and the ``data`` it reads out of the page cache: a restore on another machine
    reads the NAR from the shared disk, not from memory, and `cp` is measured the same way.
    ``--cold all`` drops the whole page cache instead (programs too: Nix's binaries are then
    read from disk by each timed step); ``--cold none`` keeps everything."""
    global COLD
    subprocess.run(["sync"], check=True)
    if COLD == "data":
        evict(*data)
    elif COLD == "all":
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        except OSError:
            print("cannot drop the page cache here (not root): measuring with --cold data", file=sys.stderr)
            COLD = "data"
            evict(*data)


def cp(src: Path, dst: Path) -> tuple[float, float]:
    """Seconds of ``cp``, and of ``cp`` plus ``sync`` (the bytes on disk, as a push fsyncs them)."""
    sync(src)
    t = timed(lambda: subprocess.run(["cp", str(src), str(dst)], check=True))
    durable = t + timed(lambda: subprocess.run(["sync"], check=True))
    dst.unlink()
    return t, durable


def rmtree(path: Path) -> None:
    if path.exists():
        subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def nix_copy(args: list[str]) -> None:
    _nix.run_nix([*_nix.common_options(), "--option", "require-sigs", "false", "copy", *args])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=2.0, help="size of the path in GiB (default 2)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder in /var/tmp)")
    ap.add_argument("--nix-copy", action="store_true", help="also time `nix copy` to and from a file:// cache")
    ap.add_argument("--cold", choices=["data", "all", "none"], default="data",
                    help="evict before each timing: the data read (default), the whole page cache (root), nothing")
    opts = ap.parse_args()
    global COLD
    COLD = opts.cold
    base = opts.dir or Path("/var/tmp")
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mlbuild-bench-store-", dir=base))
    try:
        path, real = make_source(work, opts.gib)
        size = real.stat().st_size
        print(f"path: {path} ({size / (1 << 30):.2f} GiB, random bytes) in {work}")
        cfg = StoreConfig(root=work / "cache", secret_key_file=work / "keys" / "s.sec")
        init_store(cfg, generate_key=True, key_name="bench-1")
        ratios: dict[str, list[float]] = {"push": [], "push_durable": [], "restore": []}
        for rep in range(opts.reps):
            for f in Layout(cfg.root).narinfos():
                f.unlink()
            rmtree(cfg.root / "nar")
            (cfg.root / "nar").mkdir()
            ref, ref_sync = cp(real, work / "copy")
            sync(real)
            t_push = timed(lambda: push(cfg, [path], local_store=str(work / "A")))
            ref2, _ = cp(real, work / "copy")
            target = work / f"B{rep}"
            sync(cfg.root / "nar")
            t_pull = timed(lambda: pull(cfg, [path], local_store=str(target)))
            rmtree(target)
            ratios["push"].append(t_push / ref)
            ratios["push_durable"].append(t_push / ref_sync)
            ratios["restore"].append(t_pull / ref2)
            print(f"rep {rep + 1}: cp {ref:.2f}s (+sync {ref_sync:.2f}s) push {t_push:.2f}s "
                  f"({t_push / ref:.2f}x cp, {t_push / ref_sync:.2f}x cp+sync) | cp {ref2:.2f}s restore "
                  f"{t_pull:.2f}s ({t_pull / ref2:.2f}x)", flush=True)
        if opts.nix_copy:
            key = cfg.secret_key_file
            ref, _ = cp(real, work / "copy")
            sync(real)
            t = timed(lambda: nix_copy(["--from", str(work / "A"), "--to",
                                        f"file://{work / 'nixcache'}?compression=none&secret-key={key}", path]))
            ref2, _ = cp(real, work / "copy")
            sync(work / "nixcache")
            t2 = timed(lambda: nix_copy(["--from", f"file://{work / 'nixcache'}", "--to", str(work / "N"), path]))
            print(f"nix copy: push {t:.2f}s ({t / ref:.2f}x cp {ref:.2f}s), restore {t2:.2f}s ({t2 / ref2:.2f}x cp "
                  f"{ref2:.2f}s)")
        med = {k: statistics.median(v) for k, v in ratios.items()}
        print(f"page cache: {dict(data='the data read evicted before each timing (programs warm)', all='dropped entirely before each timing', none='warm')[COLD]}")
        print(f"push / cp:        {med['push']:.2f}  (push / (cp + sync): {med['push_durable']:.2f}; "
              f"median of {opts.reps}; goal <= 1.3)")
        print(f"restore / cp:     {med['restore']:.2f}  (median of {opts.reps}; goal <= 1.3)")
        return 0
    finally:
        rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
