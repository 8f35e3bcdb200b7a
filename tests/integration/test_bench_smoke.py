"""Every benchmark under bench/ runs to its end, at a tiny size: no timing is checked here (the
numbers are the benchmarks' own business), only that they still run against today's code.
bench/data_add.py stopped at its first re-add for a while, after `ds.add` changed its return."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import REPO
from tests.integration.conftest import digits_repo  # noqa: F401

pytestmark = pytest.mark.integration


def bench(name: str, *args: str, timeout: float = 600) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, f"bench/{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_data_add(tmp_path: Path) -> None:
    out = bench("data_add.py", "--gib", "0.0625", "--files", "40")
    assert out.count("mlbuild data add (cold)") == 2 and "peak RSS of data add" in out


BAD_FLAGS = [
    # data_add: an empty file that data add refused after the cp was timed, a missing folder (`cp: cannot stat`),
    # a traceback
    ("data_add.py", ["--gib", "0"], "--gib 0:"), ("data_add.py", ["--gib", "-1"], "--gib -1:"),
    ("data_add.py", ["--gib", "nan"], "--gib nan:"), ("data_add.py", ["--files", "0"], "--files 0:"),
    # store: ratios of an empty path (push 16x cp), tracebacks (some after the whole run)
    ("store.py", ["--gib", "0"], "--gib 0:"), ("store.py", ["--gib", "-1"], "--gib -1:"),
    ("store.py", ["--reps", "0"], "--reps 0:"), ("store.py", ["--settle", "-1"], "--settle -1:"),
    ("store.py", ["--dir", "/etc/passwd"], "--dir /etc/passwd:"),
    # serve: KeyError, AssertionError, ValueError and IndexError tracebacks; --rounds 0 silently 1; --port without
    # --package measured the built-in packages' reference against whatever that server serves
    ("serve.py", ["--models", "foo"], "--models foo:"), ("serve.py", ["--requests", "400"], "--requests 400:"),
    ("serve.py", ["--requests", "a,b"], "--requests a,b:"), ("serve.py", ["--requests", "0,0"], "--requests 0,0:"),
    ("serve.py", ["--rows", "-1"], "--rows -1:"), ("serve.py", ["--threads", "0"], "--threads 0:"),
    ("serve.py", ["--rounds", "0"], "--rounds 0:"), ("serve.py", ["--port", "8080"], "--port 8080:"),
    # train_overhead: a ratio of two untrained runs (--epochs 0), a traceback after the builds (--runs 0)
    ("train_overhead.py", ["--epochs", "0"], "--epochs 0:"), ("train_overhead.py", ["--runs", "0"], "--runs 0:"),
    # image: a ValueError traceback, a build that failed its validation gate
    ("image.py", ["--hidden", "abc"], "--hidden abc:"), ("image.py", ["--hidden", "0"], "--hidden 0:"),
    ("image.py", ["--lr", "-1"], "--lr -1:"),
]


@pytest.mark.parametrize("name, args, named", BAD_FLAGS)
def test_bad_flags_are_refused(name: str, args: list[str], named: str) -> None:
    """A bad value is a usage error naming it, before anything is made or measured."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / name), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2 and named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_run_the_disk_cannot_hold_is_refused(tmp_path: Path) -> None:
    """Refused before any data is made, naming the space it needs; a run that did not fit filled the
    (shared) disk and ended in tracebacks (`No space left on device`)."""
    for name, args, env in (("data_add.py", [], {"MLBUILD_BENCH_DIR": str(tmp_path / "data")}),
                            ("store.py", ["--dir", str(tmp_path / "store")], {})):
        proc = subprocess.run([sys.executable, str(REPO / "bench" / name), "--gib", "100000", *args],
                              capture_output=True, text=True, cwd=REPO, timeout=60, env={**os.environ, **env})
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "needs 300000.0 GiB" in proc.stderr and "smaller --gib" in proc.stderr, proc.stderr
    assert list((tmp_path / "data").iterdir()) == [] and list((tmp_path / "store").iterdir()) == []


def test_data_add_makes_the_size_it_prints(tmp_path: Path) -> None:
    """`--gib 0.1` is printed as "one 0.1 GiB file": it was a 64 MiB one (whole 64 MiB blocks), and
    `--gib 0.05` an empty file."""
    for gib in ("0.1", "0.05"):
        subprocess.run([sys.executable, str(REPO / "bench" / "data_add.py"), "--make-big", str(tmp_path / gib),
                        "--gib", gib], check=True, timeout=60)
        assert (tmp_path / gib).stat().st_size == round(float(gib) * (1 << 30))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "data_add.py"), "--make-big", "/dev/full",
                           "--gib", "0.01"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "bench: making the test data failed: [Errno 28] No space left on device"), proc.stderr


def test_data_add_interrupted_leaves_nothing(tmp_path: Path) -> None:
    """Ctrl-C in the middle (here: while Nix imports the reference copy) leaves no scratch data in
    the bench folder and none of the run's store paths: at the default size each is 2 GiB. The
    reference's hard-linked copy was once left in the bench folder, and both store paths in the store."""
    work = tmp_path / "bench"
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "data_add.py"), "--gib", "0.0625", "--files", "40"],
                            cwd=REPO, env={**os.environ, "MLBUILD_BENCH_DIR": str(work)}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not list(work.rglob("nixref-*")):
        assert proc.poll() is None and time.monotonic() < deadline, "the bench never reached its reference import"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)   # as a terminal's Ctrl-C does: the bench and its children
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode != 0, out
    assert list(work.iterdir()) == [], out
    assert glob.glob(f"/nix/store/*-bench*-{proc.pid}") == [] and glob.glob(f"/nix/store/*-nixref-{proc.pid}") == []


def terminated(args: list[str], ready: Callable[[], bool], env: dict[str, str] | None = None) -> int:
    """Run a bench, send it (not its children) SIGTERM once ``ready()``, as a CI job's cancel or `kill PID`
    does; its pid, after it exited."""
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, "the bench ended before it was ready"
        time.sleep(0.01)
    proc.terminate()
    assert proc.wait(120) == 128 + signal.SIGTERM
    return proc.pid


def test_sigterm_cleans_up(tmp_path: Path) -> None:
    """SIGTERM unwinds each bench like Ctrl-C: it left bench/serve's server running (for good, on
    its port) and the temporary folders of all three (2 GiB and more at the default sizes)."""
    work = tmp_path / "data"
    pid = terminated([str(REPO / "bench" / "data_add.py"), "--gib", "0.0625", "--files", "40"],
                     lambda: bool(list(work.rglob("nixref-*"))), {"MLBUILD_BENCH_DIR": str(work)})
    assert list(work.iterdir()) == []
    assert glob.glob(f"/nix/store/*-bench*-{pid}") == [] and glob.glob(f"/nix/store/*-nixref-{pid}") == []

    store = tmp_path / "store"
    terminated([str(REPO / "bench" / "store.py"), "--gib", "0.02", "--reps", "1", "--settle", "30", "--dir",
                str(store)], lambda: bool(list(store.glob("*/cache/nar/*.nar"))))
    assert list(store.iterdir()) == []

    serve = tmp_path / "serve"
    serve.mkdir()
    pid = terminated([str(REPO / "bench" / "serve.py"), "--models", "digits", "--requests", "20,1000000"],
                     lambda: bool(list(serve.glob("bench-serve-*/digits.port"))), {"TMPDIR": str(serve)})
    time.sleep(0.5)
    assert list(serve.iterdir()) == []
    servers = subprocess.run(["pgrep", "-f", f"mlbuild.runtime.serve --package {serve}"], capture_output=True,
                             text=True).stdout.split()
    for server in servers:   # do not leave it running when the test fails
        os.kill(int(server), signal.SIGKILL)
    assert servers == []


def test_store(tmp_path: Path) -> None:
    out = bench("store.py", "--gib", "0.02", "--reps", "1", "--settle", "0", "--dir", str(tmp_path))
    assert "push / cp" in out and "restore / cp" in out


def test_serve() -> None:
    out = bench("serve.py", "--models", "digits", "--requests", "20,200", "--rounds", "1")
    assert "ratio served/bare at concurrency 32" in out


def test_serve_a_package_of_another_input(tmp_path: Path) -> None:
    """`--package` takes any package the server takes: the requests and the reference's batches
    have its input's name, row shape and datatype. Both were the digits example's (64 FP32 values
    named "input"), so a 30-feature package ended in a traceback (`mat1 and mat2 shapes cannot be
    multiplied`)."""
    import hashlib
    import json

    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    pkg = tmp_path / "cancer30"
    (pkg / "code").mkdir(parents=True)
    (pkg / "model").mkdir()
    (pkg / "code" / "model.py").write_text(
        "from torch import nn\n\n\ndef build_model(params):\n"
        "    h = params['hidden']\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(30, h), nn.ReLU(), nn.Linear(h, 2))\n")
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(pkg / "model" / "model.safetensors"))
    (pkg / "model" / "config.json").write_text(json.dumps({
        "module": "model", "params": {"hidden": 16}, "task": "classification", "labels": ["a", "b"],
        "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, 5, 6]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]}]}))
    digest = hashlib.sha256((pkg / "model" / "model.safetensors").read_bytes()).hexdigest()
    (pkg / "manifest.json").write_text(json.dumps({"name": "cancer30", "version": 1, "hashes": {
        "model": digest, "data": "bench", "code": "bench", "toolchain": "bench"}}))
    out = bench("serve.py", "--package", str(pkg), "--requests", "10,100", "--rounds", "1")
    assert "cancer30 ({'hidden': 16})" in out and "ratio served/bare at concurrency 32" in out


def test_train_overhead(digits_repo: Path) -> None:  # noqa: F811
    out = bench("train_overhead.py", "--project", str(digits_repo), "--epochs", "2", "--runs", "1")
    assert "median: nix build" in out and "ratio" in out


def test_train_overhead_says_why_a_build_failed() -> None:
    """A failing build ends the run with Nix's own message; it was a CalledProcessError traceback
    that showed only the command (its output captured and dropped)."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "train_overhead.py"), "--model", "nosuchmodel",
                           "--runs", "1"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "nix build of nosuchmodel.model" in proc.stderr and 'declare' in proc.stderr, proc.stderr


def test_image(digits_repo: Path) -> None:  # noqa: F811
    out = bench("image.py", "--project", str(digits_repo), "--hidden", "64")
    assert "image/closure" in out and "changed/weights" in out


def test_image_needs_a_second_version(digits_repo: Path) -> None:  # noqa: F811
    """`--lr` equal to the model's own gives no new version: it is said, where it was a ValueError
    traceback (nix build lists the one image once)."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "image.py"), "--project", str(digits_repo),
                           "--hidden", "64", "--lr", "0.003"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "--lr 0.003" in proc.stderr and "same build" in proc.stderr, proc.stderr
