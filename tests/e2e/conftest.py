"""End-to-end fixtures: real model packages and the real server as a subprocess on a free port.

The server binds port 0 itself and writes the port to ``--port-file``, so there is no race for a
free port. ``ServerProcess.ready()`` polls ``/v2/health/ready``.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from conftest_serve import SLOW_SOURCE, build_package  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def connect(port: int, timeout: float = 30.0) -> http.client.HTTPConnection:
    """A connection to the server with Nagle off: http.client sends headers and body in two
    writes, which Nagle plus delayed ACKs would hold up by 40 ms each."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.connect()
    assert conn.sock is not None
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


class ServerProcess:
    """``python -m mlbuild.runtime.serve`` on 127.0.0.1 with a free port; its log in a file."""

    def __init__(self, package: Path, workdir: Path, *args: str, threads: int = 1) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port_file = workdir / "port"
        self.log_path = workdir / "server.log"
        self._log = open(self.log_path, "wb")
        env = {**os.environ, "MLBUILD_SERVE_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlbuild.runtime.serve", "--package", str(package), "--host", "127.0.0.1",
             "--port", "0", "--port-file", str(self.port_file), "--log-level", "warning", *args],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.port = 0

    @property
    def url(self) -> str:
        """``host:port`` as tritonclient wants it."""
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self, timeout: float = 120.0) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if not self.port and self.port_file.exists():
                self.port = int(self.port_file.read_text())
            if self.port:
                try:
                    status, _, _ = self.request("GET", "/v2/health/ready")
                    if status == 200:
                        return self
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.log()}")

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
        conn = connect(self.port, timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        body = None if payload is None else json.dumps(payload).encode()
        status, _, data = self.request(method, path, body, {"Content-Type": "application/json"} if body else None)
        return status, json.loads(data)

    def metric(self, name: str) -> float:
        """The value of one un-labelled sample of /metrics (``name`` as written there)."""
        _, _, text = self.request("GET", "/metrics")
        for line in text.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise AssertionError(f"{name} not in /metrics")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def digits_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_package(tmp_path_factory.mktemp("pkg") / "digits")


@pytest.fixture(scope="session")
def slow_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Its forward pass sleeps 0.5 s: requests stay in flight long enough to signal the server."""
    return build_package(tmp_path_factory.mktemp("pkg") / "slow", name="slow", source=SLOW_SOURCE,
                         params={"features": 64, "classes": 10, "sleep": 0.5}, train_steps=0,
                         serve={"max_batch_size": 4, "max_wait_ms": 1.0})


@pytest.fixture(scope="module")
def digits_server(digits_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(digits_package, tmp_path_factory.mktemp("server")).ready()
    yield server
    server.stop()
