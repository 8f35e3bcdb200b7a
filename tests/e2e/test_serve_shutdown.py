"""Graceful shutdown and micro-batching, shown with a model whose forward pass sleeps 0.5 s."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.unit.conftest_serve import REPO, ServerProcess

pytestmark = pytest.mark.e2e


def _infer_body(rows: int) -> bytes:
    x = np.full((rows, 64), 0.25, dtype=np.float32)
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 64],
                                   "data": x.ravel().tolist()}]}).encode()


def _wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _connect(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def test_sigterm_lets_in_flight_requests_finish(slow_package: Path, tmp_path: Path) -> None:
    # max_batch_size 2, 6 requests of one row: at least 3 forward passes of 0.5 s, so once all six
    # are in flight at least two passes (1 s) are left when SIGTERM arrives.
    server = ServerProcess(slow_package, tmp_path, "--max-batch-size", "2").ready()
    results: list[tuple[int, dict[str, object]]] = []
    lock = threading.Lock()

    def one() -> None:
        status, _, body = server.request("POST", "/v2/models/slow/infer", _infer_body(1), timeout=60)
        with lock:
            results.append((status, json.loads(body)))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    _wait_for(lambda: server.metric("mlbuild_requests_in_flight") >= 6)   # the scrape is not counted
    server.proc.send_signal(signal.SIGTERM)
    _wait_for(lambda: not _connect(server.port), timeout=10)  # the listener closes at once...
    with lock:
        assert len(results) < 6, "...while requests are still in flight (at least 1 s of work was left)"
    for t in threads:
        t.join(60)
    assert server.proc.wait(60) == 0, server.log()
    assert len(results) == 6
    for status, body in results:
        assert status == 200, body
        assert len(body["outputs"][0]["data"]) == 10  # type: ignore[index]
    assert not _connect(server.port)
    assert "Traceback" not in server.log()
    server.stop()


def test_concurrent_requests_share_a_forward_pass(slow_package: Path, tmp_path: Path) -> None:
    server = ServerProcess(slow_package, tmp_path).ready()  # max_batch_size 4 from serve.json
    try:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: server.request("POST", "/v2/models/slow/infer", _infer_body(1),
                                                              timeout=60)[0], range(8)))
        assert statuses == [200] * 8
        _, _, text = server.request("GET", "/metrics")
        lines = dict(line.rsplit(" ", 1) for line in text.decode().splitlines() if line.startswith("mlbuild_batch"))
        passes = float(lines["mlbuild_batch_size_count"])
        rows = float(lines["mlbuild_batch_size_sum"])
        single = float(lines['mlbuild_batch_size_bucket{le="1.0"}'])
        assert rows == 8 and passes < 8 and single < passes, lines
        assert float(lines['mlbuild_batch_size_bucket{le="4.0"}']) == passes  # never over max_batch_size
    finally:
        assert server.stop() == 0


def test_a_request_over_max_batch_size_runs_alone(slow_package: Path, tmp_path: Path) -> None:
    server = ServerProcess(slow_package, tmp_path).ready()
    try:
        status, _, body = server.request("POST", "/v2/models/slow/infer", _infer_body(9), timeout=60)
        assert status == 200 and json.loads(body)["outputs"][1]["shape"] == [9]
        assert server.metric("mlbuild_batch_size_sum") == 9
    finally:
        server.stop()


def test_a_broken_package_exits_non_zero(digits_package: Path, tmp_path: Path) -> None:
    import shutil

    pkg = tmp_path / "broken"
    shutil.copytree(digits_package, pkg)
    (pkg / "model" / "model.safetensors").write_bytes(b"not weights")
    server = ServerProcess(pkg, tmp_path / "run")
    assert server.proc.wait(120) == 1
    assert "sha256" in server.log()
    server.stop()


@pytest.mark.parametrize("path", [b"/v2/models/slow/infer", b"/v1/models/slow:predict", b"/v2/models/slow/feedback"])
def test_a_request_cut_by_the_graceful_timeout_gets_a_json_503(slow_package: Path, tmp_path: Path,
                                                                path: bytes) -> None:
    """A body still arriving when the graceful timeout ran out was a text/plain 500 with uvicorn's
    'Exception in ASGI application' traceback in the log (the infer route first; :predict and
    feedback until later)."""
    server = ServerProcess(slow_package, tmp_path, "--graceful-timeout", "1").ready()
    body = _infer_body(1)
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    conn.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" % path
                 + b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])   # the rest never comes
    _wait_for(lambda: server.metric("mlbuild_requests_in_flight") >= 1)
    server.proc.send_signal(signal.SIGTERM)
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        answer += chunk
    conn.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and b"application/json" in head, answer
    assert "graceful shutdown timeout ran out" in json.loads(payload)["error"]
    assert server.proc.wait(30) == 0
    assert "Traceback" not in server.log() and "Exception in ASGI application" not in server.log(), server.log()
    server.stop()


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def _serve_as_pid_1(package: Path, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """The server as PID 1 of a PID namespace of its own (as in a container): the unshare process,
    the server's PID outside the namespace (once torch is being loaded) and its log. Its /proc is
    the namespace's, as a container's is."""
    unshare = [shutil.which("unshare") or "unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child",
               "--mount-proc"]
    try:
        usable = subprocess.run([*unshare, "true"], capture_output=True).returncode == 0
    except OSError:
        usable = False
    if not usable:
        pytest.skip("no PID namespace here (unshare --user --pid)")
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*unshare, sys.executable, "-m", "mlbuild.runtime.serve", "--package",
                                 str(package), "--port", "0"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    server = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        pids = _children(proc.pid)
        if pids:
            server = pids[0]
            maps = Path(f"/proc/{server}/maps")
            if "libtorch" in (maps.read_text() if maps.exists() else ""):
                break
        time.sleep(0.005)
    if not server:
        proc.kill()
        pytest.fail(log.read_text())
    return proc, server, log


def test_a_pid_1_server_reaps_orphaned_processes(digits_package: Path, tmp_path: Path) -> None:
    """A process orphaned in a container (the child of a `podman exec` or `kubectl exec` command
    that exits first) becomes PID 1's child; the server never waited for one, so each stayed a
    zombie for the container's life."""
    nsenter = shutil.which("nsenter")
    if nsenter is None:
        pytest.skip("no nsenter here")
    proc, server, log = _serve_as_pid_1(digits_package, tmp_path)
    try:
        # in a session of its own, as `podman exec` runs a command; exits at once, and its child,
        # orphaned, goes to PID 1 and exits 0.5 s later
        orphan = "import os, time\nos.setsid()\nif os.fork() == 0:\n    time.sleep(0.5)\nos._exit(0)\n"
        for _ in range(3):
            subprocess.run([nsenter, "--target", str(server), "--user", "--pid", "--preserve-credentials",
                            sys.executable, "-c", orphan], check=True, timeout=30)
        time.sleep(1.5)

        def state(pid: int) -> str:
            try:
                return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                return "gone"
        zombies = [pid for pid in _children(server) if state(pid) == "Z"]
        assert zombies == [], f"zombies of the server (PID 1): {zombies}\n" + log.read_text()
        os.kill(server, signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_while_starting_stops_a_pid_1_server(digits_package: Path, tmp_path: Path) -> None:
    """As a container's PID 1 (podman, docker, Kubernetes) the server did not see a SIGTERM sent
    while it imported torch, its first second: the kernel sends PID 1 no signal it has no handler
    for, so `podman stop` then waited 10 s and killed it (exit 137). Here it is PID 1 of a PID
    namespace of its own, signalled once torch is being loaded."""
    proc, server, log = _serve_as_pid_1(digits_package, tmp_path)
    try:
        os.kill(server, signal.SIGTERM)
        try:
            code = proc.wait(10)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 0, f"exit {code} (None: still running 10 s after SIGTERM):\n" + log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
