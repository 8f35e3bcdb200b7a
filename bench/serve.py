"""bench/serve: served throughput and latency vs the bare batched forward pass, in one run.

    .venv/bin/python bench/serve.py [--package PKG [--port P] | --models digits,wide,xl] [--rows 1]
                                    [--requests 400,4000] [--threads N]
                                    [--client python|wrk] [--rounds 3]

For each model it starts the real server (``python -m mlbuild.runtime.serve``, 127.0.0.1, a free
port; or, with ``--package``, uses the one already listening on ``--port`` and serving that
package), then drives it with keep-alive HTTP/1.1 connections on bare sockets (Nagle off), one
thread per connection, sending Triton binary tensor requests (what ``tritonclient.http`` sends by
default) of ``--rows`` rows each: first at concurrency 1, then at concurrency 32 (``--rounds``
times: the ratio is their median, as this shared machine is noisy), a bounded number of requests
each. It prints requests/s, rows/s, p50/p99 latency and the mean batch size the server formed
(from its /metrics).
``--client wrk`` drives it with wrk instead (one C thread, ``--seconds`` per step): the Python
client's threads cost the 2 shared cores about as much CPU per request as the server does, wrk
much less. Both clients gave about the same ratios (see the README's Performance section).

The reference is the bare batched forward pass of the same model, loaded by the server's own
loader in this process with the same torch thread count, on batches of ``max_batch_size`` rows,
measured while the server is idle. The ratio is served rows/s at concurrency 32 over the
reference rows/s. Goal (issue 5): at least 0.7.

Without ``--package`` it builds the ``--models`` packages in a temporary folder (by default all
three): ``digits`` (the example's 64-64-64-10 MLP, tiny: HTTP dominates), ``wide``
(64-2048-2048-10) and ``xl`` (64-4096-4096-10: compute dominates).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import http.client
import json
import os
import signal
import socket
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# The reference runs under the OpenMP setting the server uses (set by its __main__ before torch).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from mlbuild.runtime.serve.package import Package, ServeError, TensorSpec, load_package  # noqa: E402

MODEL_SOURCE = '''\
from torch import nn


def build_model(params):
    h = params["hidden"]
    return nn.Sequential(nn.Linear(64, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 10))
'''
MODELS = {"digits": 64, "wide": 2048, "xl": 4096}


def build_package(root: Path, name: str, hidden: int) -> Path:
    """A package of the example's architecture with seeded random weights (speed does not care)."""
    import torch
    from safetensors.torch import save_file

    (root / "code").mkdir(parents=True)
    (root / "model").mkdir()
    (root / "code" / "model.py").write_text(MODEL_SOURCE)
    namespace: dict[str, Any] = {}
    exec(MODEL_SOURCE, namespace)
    torch.manual_seed(0)
    module = namespace["build_model"]({"hidden": hidden})
    weights = root / "model" / "model.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(weights))
    (root / "model" / "config.json").write_text(json.dumps({
        "module": "model", "params": {"hidden": hidden}, "task": "classification",
        "labels": [str(i) for i in range(10)],
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]}]}))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps({"name": name, "version": 1, "hashes": {
        "model": digest, "data": "bench", "code": "bench", "toolchain": "bench"}}))
    return root


def read_package(path: Path) -> Package:
    """The package's manifest, input and settings, as the server reads them; a bad one ends the run."""
    try:
        pkg = load_package(path)
    except ServeError as e:
        raise SystemExit(f"bench: {e}") from None
    if -1 in pkg.input.shape[1:]:
        raise SystemExit(f"bench: {pkg.name}'s input {pkg.input.name!r} has shape {list(pkg.input.shape)}: rows of "
                         "any size (-1) give the bench no row to send; it needs a fixed row shape")
    return pkg


def batch_of(spec: TensorSpec, rows: int, seed: int) -> np.ndarray:
    """``rows`` rows of the model's input: its row shape and datatype, random values."""
    return np.random.default_rng(seed).random((rows, *spec.shape[1:])).astype(spec.dtype)


def request_body(spec: TensorSpec, rows: int) -> tuple[bytes, dict[str, str]]:
    x = batch_of(spec, rows, 0)
    raw = x.tobytes()
    head = json.dumps({"inputs": [{"name": spec.name, "datatype": spec.datatype, "shape": list(x.shape),
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return head + raw, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}


def connect(port: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.connect()
    assert conn.sock is not None
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


class RawClient:
    """A keep-alive HTTP/1.1 client on a bare socket: the request bytes are built once, the
    response is read by its Content-Length. A few microseconds of Python per request, where
    http.client spends over a hundred: the client must not be what the benchmark measures."""

    def __init__(self, port: int, path: str, body: bytes, headers: dict[str, str]) -> None:
        head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"127.0.0.1:{port}", **headers,
                                                    "Content-Length": str(len(body))}.items())
        self.request = f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + body
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self) -> tuple[int, bytes]:
        self.sock.sendall(self.request)
        buf = self.buffer
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += self._recv()
        head = buf[:end].decode("latin-1")
        status = int(head[9:12])
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        total = end + 4 + length
        while len(buf) < total:
            buf += self._recv()
        self.buffer = buf[total:]
        return status, buf[end + 4:total]

    def _recv(self) -> bytes:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data

    def close(self) -> None:
        self.sock.close()


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = connect(port)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def batch_counts(port: int) -> tuple[float, float]:
    values = {}
    for line in get(port, "/metrics")[1].decode().splitlines():
        if line.startswith(("mlbuild_batch_size_sum ", "mlbuild_batch_size_count ")):
            name, value = line.split()
            values[name] = float(value)
    return values["mlbuild_batch_size_sum"], values["mlbuild_batch_size_count"]


def load(port: int, path: str, body: bytes, headers: dict[str, str], concurrency: int,
         total: int) -> tuple[float, list[float]]:
    """``total`` requests over ``concurrency`` keep-alive connections; (seconds, latencies)."""
    remaining = [total]
    lock = threading.Lock()
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    start_gate = threading.Barrier(concurrency + 1, timeout=60)

    def worker(i: int) -> None:
        try:
            client = RawClient(port, path, body, headers)
            start_gate.wait()
        except (OSError, threading.BrokenBarrierError) as e:
            errors.append(f"no connection: {e}")
            start_gate.abort()
            return
        mine = latencies[i]
        try:
            while True:
                with lock:
                    if remaining[0] <= 0:
                        break
                    remaining[0] -= 1
                t0 = time.perf_counter()
                status, data = client.send()
                mine.append(time.perf_counter() - t0)
                if status != 200:
                    errors.append(f"the server answered {status} {data[:200]!r}")
                    break
        except OSError as e:
            errors.append(f"connection failed: {e}")
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    try:
        start_gate.wait()
    except threading.BrokenBarrierError:
        raise SystemExit(f"bench: {errors[0] if errors else 'clients did not start'}") from None
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"bench: {errors[0]}")
    return elapsed, [x for xs in latencies for x in xs]


WRK_SCRIPT = """
local f = assert(io.open(os.getenv("MLBUILD_BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = os.getenv("MLBUILD_BENCH_HEAD")
"""


def _wrk_time(text: str) -> float:
    """Seconds of a wrk duration like ``812.00us``, ``1.23ms`` or ``2.01s``."""
    for unit, scale in (("us", 1e-6), ("ms", 1e-3), ("m", 60.0), ("s", 1.0)):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * scale
    raise ValueError(f"wrk time {text!r}")


def wrk_load(port: int, path: str, body: bytes, headers: dict[str, str], concurrency: int,
             seconds: float, workdir: Path) -> tuple[float, float, float]:
    """``concurrency`` keep-alive connections from wrk (one C thread, epoll) for ``seconds``:
    (requests/s, p50 s, p99 s). The Python client costs the shared 2 cores about as much CPU per
    request as the server; wrk leaves them to the server."""
    (workdir / "body.bin").write_bytes(body)
    (workdir / "infer.lua").write_text(WRK_SCRIPT)
    env = {**os.environ, "MLBUILD_BENCH_BODY": str(workdir / "body.bin"),
           "MLBUILD_BENCH_HEAD": headers["Inference-Header-Content-Length"]}
    proc = subprocess.run(["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{max(1, round(seconds))}s", "--latency",
                           "-s", str(workdir / "infer.lua"), f"http://127.0.0.1:{port}{path}"],
                          env=env, capture_output=True, text=True)
    out = proc.stdout
    if proc.returncode != 0:
        raise SystemExit(f"bench: wrk failed ({proc.returncode}): {proc.stderr or out}")
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"bench: wrk saw errors:\n{out}")
    rate = float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec:")))
    dist = {line.split()[0]: _wrk_time(line.split()[1]) for line in out.splitlines()
            if line.strip().endswith(("s", "ms", "us")) and line.strip().split()[0] in ("50%", "99%")}
    return rate, dist["50%"], dist["99%"]


def bare_forward(pkg: Package, threads: int, batch: int, rounds: int = 3, seconds: float = 1.0) -> float:
    """Rows/s of the model's forward pass on full batches, loaded by the server's own loader; the
    best of ``rounds`` rounds (the reference's best case: the ratio errs low, never high)."""
    from mlbuild.runtime.serve.model import load_model

    model = load_model(pkg, threads=threads)
    x = batch_of(pkg.input, batch, 1)
    for _ in range(10):
        model.forward(x)
    best = 0.0
    for _ in range(rounds):
        n, t0 = 0, time.perf_counter()
        while n < 5 or time.perf_counter() - t0 < seconds:
            model.forward(x)
            n += 1
        best = max(best, n * batch / (time.perf_counter() - t0))
    return best


def start_server(package: Path, workdir: Path, threads: int,
                 extra: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    port_file = workdir / f"{package.name}.port"
    env = {**os.environ, "MLBUILD_SERVE_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "mlbuild.runtime.serve", "--package", str(package), "--port", "0",
                             "--port-file", str(port_file), "--log-level", "warning", *extra], cwd=REPO, env=env)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"bench: the server exited with {proc.returncode}")
            if port_file.exists():
                port = int(port_file.read_text())
                try:
                    if get(port, "/v2/health/ready")[0] == 200:
                        return proc, port
                except OSError:
                    pass
            time.sleep(0.05)
        raise SystemExit("bench: the server did not get ready in 120 s")
    except BaseException:   # not ready, or interrupted while it got ready: stop it
        proc.kill()
        proc.wait()
        raise


def pct(values: list[float], q: int) -> float:
    """The q-th percentile, in milliseconds."""
    if len(values) < 2:
        return values[0] * 1000
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def bench_model(package: Path, port: int | None, workdir: Path, threads: int, rows: int,
                counts: tuple[int, int], max_wait_ms: float | None = None, client: str = "python",
                seconds: float = 5.0, rounds: int = 1) -> float:
    pkg = read_package(package)
    batch = pkg.settings.max_batch_size
    before = bare_forward(pkg, threads, batch)
    proc = None
    if port is None:
        extra = [] if max_wait_ms is None else ["--max-wait-ms", str(max_wait_ms)]
        proc, port = start_server(package, workdir, threads, extra)
    try:
        body, headers = request_body(pkg.input, rows)
        path = f"/v2/models/{pkg.name}/infer"
        load(port, path, body, headers, 8, 200)  # warm up
        wait = pkg.settings.max_wait_ms if max_wait_ms is None else max_wait_ms
        print(f"\n{pkg.name} ({pkg.params}), {rows} row(s)/request, {threads} torch thread(s), "
              f"max_batch_size {batch}, max_wait_ms {wait}")
        served_32: list[float] = []
        for concurrency, total in ((1, counts[0]), *((32, counts[1]),) * rounds):
            s0, c0 = batch_counts(port)
            if client == "wrk":
                rate, p50, p99 = wrk_load(port, path, body, headers, concurrency, seconds, workdir)
            else:
                elapsed, lat = load(port, path, body, headers, concurrency, total)
                rate, p50, p99 = total / elapsed, pct(lat, 50) / 1000, pct(lat, 99) / 1000
            s1, c1 = batch_counts(port)
            served = rate * rows
            if concurrency == 32:
                served_32.append(served)
            print(f"  concurrency {concurrency:>2}: {rate:8,.0f} req/s {served:10,.0f} rows/s   "
                  f"p50 {p50 * 1000:6.2f} ms  p99 {p99 * 1000:6.2f} ms   mean batch {(s1 - s0) / (c1 - c0):5.1f} rows")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    after = bare_forward(pkg, threads, batch)  # with the server stopped
    reference = max(before, after)
    print(f"  bare batched forward pass (batch {batch}, {threads} thread(s)): "
          f"{reference:,.0f} rows/s (before {before:,.0f}, after {after:,.0f})")
    ratio = statistics.median(served_32) / reference
    each = f" (median of {rounds}: {', '.join(f'{x / reference:.3f}' for x in served_32)})" if rounds > 1 else ""
    print(f"  ratio served/bare at concurrency 32: {ratio:.3f}{each}  (goal >= 0.7)")
    return ratio


def http_stack() -> str:
    """What uvicorn picks with its defaults (httptools and uvloop when installed, else h11/asyncio)."""
    import importlib.util

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"{http}, {loop}"


def stop_on_sigterm() -> None:
    """A SIGTERM (a CI job cancelled, `kill PID`) unwinds like Ctrl-C, so the cleanup runs."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--package", help="benchmark this package instead of the built-in ones")
    ap.add_argument("--models", default="digits,wide,xl", help=f"built-in packages to run, of {sorted(MODELS)}")
    ap.add_argument("--rows", type=int, default=1, help="rows per request (default 1)")
    ap.add_argument("--requests", default="400,4000", help="requests at concurrency 1 and 32 (default 400,4000)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("MLBUILD_SERVE_THREADS", 0))
                    or len(os.sched_getaffinity(0)), help="torch threads of the server and the reference")
    ap.add_argument("--port", type=int, help="use the server already listening on 127.0.0.1:PORT")
    ap.add_argument("--max-wait-ms", type=float, help="override the packages' max_wait_ms in the server")
    ap.add_argument("--client", choices=["python", "wrk"], default="python",
                    help="load generator: Python threads (default), or wrk (C, one thread; `apt-get install wrk`)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="measurements at concurrency 32; the ratio is their median (default 3)")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per step with wrk (default 5)")
    args = ap.parse_args()
    stop_on_sigterm()
    client = args.client
    if client == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("bench: --client wrk needs wrk (`apt-get install wrk`)")
    try:
        counts = tuple(int(n) for n in args.requests.split(","))
    except ValueError:
        counts = ()
    if len(counts) != 2 or min(counts) < 1:
        ap.error(f"--requests {args.requests}: give two counts of at least 1, at concurrency 1 and 32 "
                 "(such as 400,4000)")
    models = args.models.split(",")
    if args.package is None and not set(models) <= set(MODELS):
        ap.error(f"--models {args.models}: give built-in packages of {', '.join(sorted(MODELS))}, comma-separated")
    for flag, value in (("--rows", args.rows), ("--threads", args.threads), ("--rounds", args.rounds)):
        if value < 1:
            ap.error(f"{flag} {value}: give at least 1")
    if not (args.seconds >= 0.5 and args.seconds < float("inf")):   # wrk takes whole seconds
        ap.error(f"--seconds {args.seconds:g}: give at least 0.5 (wrk runs whole seconds)")
    if args.port is not None and args.package is None:
        ap.error(f"--port {args.port}: also give --package, the package that server serves (the reference is "
                 "that package's forward pass)")
    if args.port is not None and args.max_wait_ms is not None:
        ap.error("--max-wait-ms sets the server the bench starts; a server already on --port keeps its own")
    who = "wrk (one thread)" if client == "wrk" else "Python threads in this process"
    print(f"bench/serve: {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f}; client: {who}; "
          f"the server in a subprocess (HTTP: {http_stack()})")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        if args.package:
            packages = [Path(args.package).resolve()]
        else:
            packages = [build_package(work / name, name, MODELS[name]) for name in models]
        # This process holds torch (for the reference): keep its full collections, which would pause
        # the client threads for ~75 ms each, off what was loaded (as the server does).
        gc.collect()
        gc.freeze()
        for package in packages:
            bench_model(package, args.port, work, args.threads, args.rows, (counts[0], counts[1]), args.max_wait_ms,
                        client, args.seconds, args.rounds)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
