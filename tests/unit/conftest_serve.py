"""Building real model packages for the serving tests (plain Python; Nix builds them for real).

``build_package(root)`` writes the package layout the server reads: manifest.json, model/
(safetensors weights + config.json), code/ (the user's module) and serve.json. The default model
is a small MLP trained for a moment on scikit-learn's digits (64 features, 10 classes).
``ServerProcess`` runs the real server (``python -m mlbuild.runtime.serve``) as a subprocess on a
free port: it binds port 0 itself and writes the port to ``--port-file``, so there is no race.
Imported (as ``tests.unit.conftest_serve``) by tests/unit/test_serve_*.py and tests/e2e/.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

__all__ = ["MLP_SOURCE", "SLOW_SOURCE", "TOKENS_SOURCE", "tokens_config", "validation_spec", "build_package", "load_reference", "digits_split", "ServerProcess",
           "connect"]

REPO = Path(__file__).resolve().parents[2]

MLP_SOURCE = '''\
"""The digits classifier: a small MLP."""
import torch
from torch import nn


def build_model(params):
    return nn.Sequential(
        nn.Linear(params["features"], params["hidden"]),
        nn.ReLU(),
        nn.Linear(params["hidden"], params["classes"]),
    )
'''

SLOW_SOURCE = '''\
"""An MLP whose forward pass sleeps: for graceful-shutdown tests."""
import time

import torch
from torch import nn


class Slow(nn.Module):
    def __init__(self, features, classes, sleep):
        super().__init__()
        self.linear = nn.Linear(features, classes)
        self.sleep = sleep

    def forward(self, x):
        time.sleep(self.sleep)
        return self.linear(x)


def build_model(params):
    return Slow(params["features"], params["classes"], params["sleep"])
'''

TOKENS_SOURCE = '''\
"""A bag of token ids (INT64 input [-1, 6]) over a 50-token vocabulary; preprocess refuses others."""
import numpy as np
import torch
from torch import nn

VOCAB = 50


def build_model(params):
    return nn.Sequential(nn.EmbeddingBag(VOCAB, 8), nn.Linear(8, params["classes"]))


def preprocess(x):
    if x.size and (x.min() < 0 or x.max() >= VOCAB):
        raise ValueError(f"token ids must be in 0..{VOCAB - 1}")
    return torch.from_numpy(np.ascontiguousarray(x))
'''


def validation_spec(tmp_path: Path, pkg: Path, load_body: str) -> Path:
    """The spec of a validation of ``pkg`` (as Nix hands it to runtime/validate.py) whose suite's
    ``load(data)`` runs ``load_body`` (numpy imported as np); written under ``tmp_path``."""
    suite = tmp_path / "suite"
    suite.mkdir()
    body = "".join(f"    {line}\n" for line in load_body.splitlines())
    (suite / "validate.py").write_text(f"import numpy as np\n\ndef load(data):\n{body}")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"version": 1, "name": "digits", "suite": str(suite), "script": "validate.py",
                                "dataset": {"path": str(tmp_path)}, "dataset_name": "split", "package": str(pkg)}))
    return spec


def tokens_config() -> dict[str, Any]:
    """config.json entries of TOKENS_SOURCE's model (3 classes a, b, c): build_package's extra_config."""
    return {"labels": ["a", "b", "c"], "inputs": [{"name": "tokens", "datatype": "INT64", "shape": [-1, 6]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
                        {"name": "label", "datatype": "INT64", "shape": [-1]}]}


_counter = itertools.count()


@lru_cache(maxsize=1)
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits scaled to [0, 1]: (x_train, y_train, x_test, y_test), fixed split."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order].astype(np.int64)
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _import_source(path: Path) -> ModuleType:
    name = f"_serve_test_model_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _train(model: torch.nn.Module, steps: int) -> None:
    x_train, y_train, _, _ = digits_split()
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def build_package(root: Path, *, name: str = "digits", source: str = MLP_SOURCE,
                  params: dict[str, Any] | None = None, serve: dict[str, Any] | None = None,
                  train_steps: int = 150, extra_config: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """Write a package folder at ``root`` and return it."""
    params = params or {"features": 64, "hidden": 32, "classes": 10}
    code = root / "code"
    model_dir = root / "model"
    code.mkdir(parents=True)
    model_dir.mkdir()
    (code / "model.py").write_text(source)
    torch.manual_seed(seed)
    module = _import_source(code / "model.py").build_model(params)
    if train_steps:
        _train(module, train_steps)
    weights = model_dir / "model.safetensors"
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(weights))
    classes = params.get("classes", 10)
    config: dict[str, Any] = {
        "module": "model",
        "params": params,
        "task": "classification",
        "labels": [str(i) for i in range(classes)],
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, params.get("features", 64)]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]}],
    }
    config.update(extra_config or {})
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    code_hash = hashlib.sha256((code / "model.py").read_bytes()).hexdigest()
    manifest = {"name": name, "version": 1, "hashes": {
        "model": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "data": hashlib.sha256(b"sklearn digits").hexdigest(),
        "code": code_hash,
        "toolchain": "/nix/store/00000000000000000000000000000000-mlbuild-toolchain",
    }}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if serve is not None:
        (root / "serve.json").write_text(json.dumps(serve))
    return root


def load_reference(pkg: Path) -> torch.nn.Module:
    """The package's model built in the test process from its own code and weights (no server code)."""
    from safetensors.torch import load_file

    config = json.loads((pkg / "model" / "config.json").read_text())
    module = _import_source(pkg / "code" / f"{config['module']}.py").build_model(config["params"])
    module.load_state_dict(load_file(str(pkg / "model" / "model.safetensors")))
    return module.eval()


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

    def __init__(self, package: Path, workdir: Path, *args: str, threads: int = 1, stdout_apart: bool = False) -> None:
        """``stdout_apart``: the log file gets stderr only, and ``stdout_path`` stdout."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.port_file = workdir / "port"
        self.log_path = workdir / "server.log"
        self.stdout_path = workdir / "stdout.log"
        self._log = open(self.log_path, "wb")
        env = {**os.environ, "MLBUILD_SERVE_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        with open(self.stdout_path, "wb") as stdout:   # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlbuild.runtime.serve", "--package", str(package), "--host", "127.0.0.1",
                 "--port", "0", "--port-file", str(self.port_file), "--log-level", "warning", *args],
                cwd=REPO, env=env, stdout=stdout if stdout_apart else self._log, stderr=self._log)
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
