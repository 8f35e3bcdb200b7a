"""bench/data_add: `mlbuild data add` against `cp` of the same data, measured in the same run.

    .venv/bin/python bench/data_add.py [--gib 2] [--files 20000]

Prints, for one large file and for many small files: cold add / cp, `nix-store --add-fixed
--recursive` / cp (Nix's own streaming import, for scale), the re-add time of unchanged data
(in-process, and the whole CLI command), and the peak RSS of the add process.
Goals (issue 3): cold add <= 1.5x cp; re-add <= 0.1 s (big file) and <= 0.5 s (small files);
peak memory < 200 MB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
WORK = Path(os.environ.get("MLBUILD_BENCH_DIR", "/nix/var/mlbuild/bench"))  # same file system as the store


def drop_caches() -> bool:
    """Start each measurement with a cold page cache where we may (root): data comes from disk,
    as it does when a dataset is first added. Otherwise both sides read warm data."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(cmd: list[str], cwd: Path | None = None, cold: bool = False) -> tuple[float, int]:
    """(seconds, peak RSS in MB) of one child process."""
    if cold:
        drop_caches()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:   # Ctrl-C: stop the child before the caller deletes what it writes
        proc.kill()
        proc.wait()
        raise
    dt = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return dt, usage.ru_maxrss // 1024


def check_space(gib: float, files: int) -> None:
    """Refuse to start a run that would fill the disk (a shared machine's, often): at its peak it
    holds the data and a copy of it in the bench folder, and two copies in the store."""
    size = max(round(gib * (1 << 30)), files * 4096)   # a small file takes a block at least
    store = Path("/nix/store")
    need = {WORK: 3 * size} if WORK.stat().st_dev == store.stat().st_dev else {WORK: 2 * size, store: 2 * size}
    for where, n in need.items():
        free = shutil.disk_usage(where).free
        if free < n * 1.1:
            raise SystemExit(f"bench: this run needs {n / (1 << 30):.1f} GiB in {where}, and a tenth more to spare, "
                             f"but {free / (1 << 30):.1f} GiB are free: free some, or give a smaller --gib or --files")


def make_big(path: Path, gib: float) -> None:
    """Exactly ``gib`` GiB (to the byte), in 64 MiB blocks, the last one cut short."""
    block = os.urandom(64 << 20)
    left = round(gib * (1 << 30))
    with open(path, "wb") as f:
        while left > 0:
            f.write(block[:left])
            left -= len(block)
            block = block[1:] + block[:1]  # no two blocks alike


def make_small(path: Path, n: int) -> None:
    for i in range(n):
        d = path / f"d{i % 200:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.bin").write_bytes(os.urandom(256 + (i * 37) % 3840))


def project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "mlbuild.toml").write_text('[project]\nname = "bench"\n[python]\ninterpreter = "python3.11"\n')
    lock = json.loads((REPO / "examples/digits/mlbuild.lock").read_text())
    lock.update(requirements=[], datasets={})
    (root / "mlbuild.lock").write_text(json.dumps(lock))
    return root


def delete_store_path(path: str) -> None:
    subprocess.run(["nix-store", "--delete", path], capture_output=True)


def case(label: str, data: Path, proj: Path) -> None:
    """Measure one data set. Its scratch copies live beside it in the run's temporary folder, and
    the store paths it adds are deleted even when a step fails or the run is interrupted."""
    name = f"bench{abs(hash(label)) % 10000}-{os.getpid()}"
    staged = data.parent / f"nixref-{os.getpid()}"
    try:
        measure(label, data, proj, name, staged)
    finally:
        subprocess.run(["rm", "-f", str(proj / ".mlbuild" / "gcroots" / f"dataset-{name}")])
        lock = json.loads((proj / "mlbuild.lock").read_text())
        if name in lock["datasets"]:   # data add ran: its path, and the reference's of the same hash
            from mlbuild.storepath import fixed_output_path

            sha = lock["datasets"][name]["sha256"]
            for path_name in (name, staged.name):
                delete_store_path(fixed_output_path(sha, path_name, recursive=True))
        subprocess.run(["rm", "-rf", str(staged)])


def measure(label: str, data: Path, proj: Path, name: str, staged: Path) -> None:
    dest = data.parent / f"cp-target-{os.getpid()}"
    subprocess.run(["rm", "-rf", str(dest)])
    try:
        cp_s, _ = timed(["cp", "-r", str(data), str(dest)], cold=True)
    finally:
        subprocess.run(["rm", "-rf", str(dest)])
    from mlbuild.config import load_project
    from mlbuild.data import datasets as ds
    from mlbuild.data.statcache import RACY_NS

    # Data written less than RACY_NS before it is hashed is hashed again by the next command (its
    # stat facts cannot prove a write in the same time granule): re-add is measured on data as a
    # user has it, older than that.
    newest = max(os.lstat(os.path.join(d, n)).st_ctime_ns for d, _, ns in os.walk(data) for n in ns) \
        if data.is_dir() else os.lstat(data).st_ctime_ns
    time.sleep(max(0.0, (newest + RACY_NS - time.time_ns()) / 1e9))
    add_s, rss = timed([PY, "-m", "mlbuild.cli", "-C", str(proj), "data", "add", name, str(data)], cold=True)

    t0 = time.perf_counter()
    added = ds.add(load_project(proj), name, data)
    readd_lib = time.perf_counter() - t0
    assert added.imported is None, "re-add imported again"
    readd_cli, _ = timed([PY, "-m", "mlbuild.cli", "-C", str(proj), "data", "add", name, str(data)])
    startup, _ = timed([PY, "-m", "mlbuild.cli", "--version"])
    # Nix's own streaming import of the same data, for scale (its store path goes with case's cleanup).
    subprocess.run(["rm", "-rf", str(staged)])
    os.link(data, staged) if data.is_file() else shutil.copytree(data, staged, copy_function=os.link)
    nix_s, nix_rss = timed(["nix-store", "--add-fixed", "--recursive", "sha256", str(staged)], cold=True)
    print(f"{label} ({'cold page cache' if drop_caches() else 'warm page cache'}):")
    print(f"  cp                       {cp_s:7.2f} s")
    print(f"  mlbuild data add (cold)  {add_s:7.2f} s   ratio to cp {add_s / cp_s:5.2f}   (goal <= 1.5)")
    print(f"  nix-store --add-fixed    {nix_s:7.2f} s   ratio to cp {nix_s / cp_s:5.2f}   (reference; {nix_rss} MB)")
    print(f"  re-add, in process       {readd_lib:7.3f} s")
    print(f"  re-add, whole CLI        {readd_cli:7.3f} s   (of which interpreter+CLI start-up {startup:.3f} s)")
    print(f"  peak RSS of data add     {rss:7d} MB   (goal < 200)")


def stop_on_sigterm() -> None:
    """A SIGTERM (a CI job cancelled, `kill PID`) unwinds like Ctrl-C, so the cleanup runs."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--make-big")
    ap.add_argument("--make-small")
    args = ap.parse_args()
    stop_on_sigterm()
    if not (math.isfinite(args.gib) and round(args.gib * (1 << 30)) >= 1):
        ap.error(f"--gib {args.gib:g}: give the big file's size in GiB, above 0 (such as 0.25)")
    if args.files < 1:
        ap.error(f"--files {args.files}: give how many small files to make, at least 1 (such as 2000)")
    try:
        if args.make_big:
            return make_big(Path(args.make_big), args.gib)
        if args.make_small:
            return make_small(Path(args.make_small), args.files)
    except OSError as e:   # the disk filled up since check_space, say
        raise SystemExit(f"bench: making the test data failed: {e}") from None
    sys.path.insert(0, str(REPO))
    WORK.mkdir(parents=True, exist_ok=True)
    check_space(args.gib, args.files)
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        root = Path(tmp)
        proj = project(root / "proj")
        big = root / "big.bin"
        # Data is made by a child process: the forks that run the measured commands must not
        # inherit (and be charged for) a big parent.
        if subprocess.run([PY, __file__, "--make-big", str(big), "--gib", str(args.gib)]).returncode != 0:
            raise SystemExit(1)   # the child said why
        case(f"one {args.gib:g} GiB file", big, proj)
        big.unlink()
        small = root / "small"
        if subprocess.run([PY, __file__, "--make-small", str(small), "--files", str(args.files)]).returncode != 0:
            raise SystemExit(1)
        case(f"{args.files} small files", small, proj)


if __name__ == "__main__":
    main()
