"""Benchmark of the shared store: push and restore of a large incompressible path, against ``cp``.

Prints, for a store path of SIZE GiB of random bytes (a model's weights):

- push:    ``mlbuild.store.push`` into an empty store  /  ``cp`` of the store path's file;
- restore: ``mlbuild.store.pull`` into an empty Nix store  /  ``cp`` of the NAR file it reads.

Each reference copies the very file its step reads. The push runs with the store's default
settings: like ``cp`` (and like Nix's own ``file://`` writer), it leaves the NAR's write-back to
the kernel. ``--fsync-nars`` measures the store's ``fsync-nars = true`` instead, which fsyncs each
NAR before publishing its narinfo: compare that one with ``cp`` + ``sync``, also printed. All
steps run interleaved, REPS times; printed are the median of the per-rep ratios and the ratio of
the best times (goal: <= 1.3), and each step's CPU seconds. ``--nix-copy`` also
times Nix's own ``nix copy`` both ways for scale. Everything lives in one temporary folder (a
chroot Nix store as the source machine, fresh ones as targets), removed at the end, even on Ctrl-C.

Fairness, as measured on the 2-core VM this was written on: each step starts with no dirty pages
and none of the benchmark's data cached (see ``sync``); the NAR is first read ``--settle`` seconds
after the push (right after, the first reader, ``cp`` or not, took up to twice as long); ``cp``'s
own time varies 1-2x from rep to rep with the VM's memory, hence the best-of-each ratio (here
``cp`` was nearly always fastest in the first rep, the push about the same in every rep). Other
work on the machine slows mlbuild (two threads) more than ``cp`` (one): bench on a quiet machine.

    .venv/bin/python bench/store.py            # 2 GiB, 3 reps
    .venv/bin/python bench/store.py --gib 0.25 --reps 1
    .venv/bin/python bench/store.py --fsync-nars
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import signal
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


CPU: list[float] = []   # CPU seconds (this process and its children) of each timed step


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of ``fn()``; its CPU seconds (all threads, children too) go to ``CPU``."""
    cpu = cpu_seconds()
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    CPU.append(cpu_seconds() - cpu)
    return wall


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
        if not top.exists():
            continue
        files = [str(top)] if top.is_file() else [os.path.join(r, n) for r, _d, ns in os.walk(top) for n in ns]
        for f in files:
            if not os.path.islink(f):
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


DATA: list[Path] = []   # every file of the benchmark's data: the source path, the cache's NARs


def sync() -> None:
    """Start each timing with no dirty pages (otherwise it pays for the previous step's
    writeback) and none of the benchmark's data in the page cache: a restore on another machine
    reads the NAR from the shared disk, not from memory, and `cp` is measured the same way.
    All of it is evicted each time, not only what the next step reads, so that every step starts
    with the same memory freed: in a VM whose balloon hands free memory back to the host (as
    here), a step that must write into memory freed long ago pays a host page fault per page
    and can run 2-4x slower, be it ``cp`` or mlbuild.
    ``--cold all`` drops the whole page cache instead (programs too: Nix's binaries are then
    read from disk by each timed step); ``--cold none`` keeps everything."""
    global COLD
    subprocess.run(["sync"], check=True)
    if COLD == "data":
        evict(*DATA)
    elif COLD == "all":
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        except OSError:
            print("cannot drop the page cache here (not root): measuring with --cold data", file=sys.stderr)
            COLD = "data"
            evict(*DATA)


def cp(src: Path, dst: Path) -> tuple[float, float]:
    """Seconds of ``cp``, and of ``cp`` plus ``sync`` (the bytes on disk, as a push fsyncs them)."""
    sync()
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


def stop_on_sigterm() -> None:
    """A SIGTERM (a CI job cancelled, `kill PID`) unwinds like Ctrl-C, so the cleanup runs."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=2.0, help="size of the path in GiB (default 2)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder in /var/tmp)")
    ap.add_argument("--fsync-nars", action="store_true",
                    help="push with the store setting fsync-nars = true (compare with cp + sync)")
    ap.add_argument("--nix-copy", action="store_true", help="also time `nix copy` to and from a file:// cache")
    ap.add_argument("--cold", choices=["data", "all", "none"], default="data",
                    help="evict before each timing: the data read (default), the whole page cache (root), nothing")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="seconds between the push and the reads of its NAR (default 5): the first read of "
                         "a file written a moment ago is slow here, whichever program does it")
    opts = ap.parse_args()
    stop_on_sigterm()
    if not (math.isfinite(opts.gib) and int(opts.gib * (1 << 30)) >= 1):
        ap.error(f"--gib {opts.gib:g}: give the path's size in GiB, above 0 (such as 0.25)")
    if opts.reps < 1:
        ap.error(f"--reps {opts.reps}: give how many repetitions to run, at least 1")
    if not (math.isfinite(opts.settle) and opts.settle >= 0):
        ap.error(f"--settle {opts.settle:g}: give the seconds to wait, 0 or more")
    if opts.dir is not None and opts.dir.exists() and not opts.dir.is_dir():
        ap.error(f"--dir {opts.dir}: not a folder; give a folder to work in (made if missing)")
    global COLD
    COLD = opts.cold
    base = opts.dir or Path("/var/tmp")
    base.mkdir(parents=True, exist_ok=True)
    # At its peak the folder holds the source path, the cache's NAR and a restored copy (or a cp of
    # the NAR); `nix copy` adds its own cache and store. Refuse to fill a (shared) disk instead.
    need, free = int(opts.gib * (1 << 30)) * (5 if opts.nix_copy else 3), shutil.disk_usage(base).free
    if free < need * 1.1:
        raise SystemExit(f"bench: this run needs {need / (1 << 30):.1f} GiB in {base}, and a tenth more to spare, "
                         f"but {free / (1 << 30):.1f} GiB are free: free some, or give a smaller --gib, another --dir")
    work = Path(tempfile.mkdtemp(prefix="mlbuild-bench-store-", dir=base))
    try:
        path, real = make_source(work, opts.gib)
        size = real.stat().st_size
        print(f"path: {path} ({size / (1 << 30):.2f} GiB, random bytes) in {work}")
        cfg = StoreConfig(root=work / "cache", secret_key_file=work / "keys" / "s.sec", fsync_nars=opts.fsync_nars)
        init_store(cfg, generate_key=True, key_name="bench-1")
        DATA[:] = [real, cfg.root / "nar", work / "nixcache"]
        times: dict[str, list[float]] = {k: [] for k in ("cp", "cp+sync", "push", "cp2", "restore")}
        cpu: dict[str, list[float]] = {k: [] for k in ("cp", "push", "cp2", "restore")}
        for rep in range(opts.reps):
            for f in Layout(cfg.root).narinfos():
                f.unlink()
            rmtree(cfg.root / "nar")
            (cfg.root / "nar").mkdir()
            plain, durable = cp(real, work / "copy")
            times["cp"].append(plain)
            times["cp+sync"].append(durable)
            cpu["cp"].append(CPU[-2])
            sync()
            times["push"].append(timed(lambda: push(cfg, [path], local_store=str(work / "A"))))
            cpu["push"].append(CPU[-1])
            nar = next(Layout(cfg.root).nar_files())   # what the restore reads: the same file
            time.sleep(opts.settle)
            times["cp2"].append(cp(nar, work / "copy")[0])
            cpu["cp2"].append(CPU[-2])
            target = work / f"B{rep}"
            sync()
            times["restore"].append(timed(lambda: pull(cfg, [path], local_store=str(target))))
            cpu["restore"].append(CPU[-1])
            rmtree(target)
            c, c2, pu, rs = times["cp"][-1], times["cp2"][-1], times["push"][-1], times["restore"][-1]
            cs = times["cp+sync"][-1]
            print(f"rep {rep + 1}: cp {c:.2f}s (+sync {cs:.2f}s) push {pu:.2f}s ({pu / c:.2f}x cp, {pu / cs:.2f}x "
                  f"cp+sync) | cp {c2:.2f}s restore {rs:.2f}s ({rs / c2:.2f}x) | CPU s: "
                  + " ".join(f"{k} {v[-1]:.2f}" for k, v in cpu.items()), flush=True)
        if opts.nix_copy:
            key = cfg.secret_key_file
            ref, _ = cp(real, work / "copy")
            sync()
            t = timed(lambda: nix_copy(["--from", str(work / "A"), "--to",
                                        f"file://{work / 'nixcache'}?compression=none&secret-key={key}", path]))
            ref2, _ = cp(next((work / "nixcache" / "nar").iterdir()), work / "copy")
            sync()
            t2 = timed(lambda: nix_copy(["--from", f"file://{work / 'nixcache'}", "--to", str(work / "N"), path]))
            print(f"nix copy: push {t:.2f}s ({t / ref:.2f}x cp {ref:.2f}s), restore {t2:.2f}s ({t2 / ref2:.2f}x cp "
                  f"{ref2:.2f}s)")
        cold = dict(data="the data read evicted before each timing (programs warm)",
                    all="dropped entirely before each timing", none="warm")[COLD]
        print(f"page cache: {cold}; push with fsync-nars = {'true' if opts.fsync_nars else 'false'}; "
              f"goal: each ratio <= 1.3")
        for step, base in (("push", "cp"), ("push", "cp+sync"), ("restore", "cp2")):
            ratio = statistics.median(a / b for a, b in zip(times[step], times[base]))
            best = min(times[step]) / min(times[base])
            print(f"{step + ' / ' + base.replace('cp2', 'cp'):<18} {ratio:.2f}  median of {opts.reps} reps;  best of "
                  f"each: {min(times[step]):.2f}s / {min(times[base]):.2f}s = {best:.2f}")
        return 0
    finally:
        rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
