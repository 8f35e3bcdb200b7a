"""mlbuild.runtime.serve.app in process: lifecycle (loading, ready, draining), errors, metrics."""

from __future__ import annotations

import gc
import gzip
import json
import threading
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from mlbuild.runtime.serve.app import ServerState, create_app
from mlbuild.runtime.serve.metrics import ServerMetrics
from mlbuild.runtime.serve.package import load_package
from tests.unit.conftest_serve import MLP_SOURCE, build_package

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx vs httpx2
    from starlette.testclient import TestClient

GATED = MLP_SOURCE.replace("def build_model(params):", '''def build_model(params):
    import os, time
    deadline = time.monotonic() + 30
    while os.path.exists(params["hold"]) and time.monotonic() < deadline:  # until the test lets go
        time.sleep(0.01)''') + '''

def postprocess(out):
    if (out == 0).all():
        raise RuntimeError("model exploded")
    p = torch.softmax(out, -1)
    return {"probabilities": p.numpy(), "label": p.argmax(-1).numpy()}
'''


def _body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}]}).encode()


def _wait(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.fixture()
def gated(tmp_path: Path) -> Iterator[tuple[TestClient, ServerState, Path]]:
    hold = tmp_path / "hold"
    pkg = build_package(tmp_path / "pkg", source=GATED, train_steps=0,
                        params={"features": 64, "hidden": 8, "classes": 10, "hold": str(hold)},
                        serve={"max_body_bytes": 4096})
    hold.touch()
    # A zero-weight model gives all-zero logits: its postprocess raises, as a broken model would.
    state = ServerState(load_package(pkg), ServerMetrics(process=False), threads=1, verify=False)
    with TestClient(create_app(state), raise_server_exceptions=True) as client:
        try:
            yield client, state, hold
        finally:
            hold.unlink(missing_ok=True)


def test_ready_only_after_the_weights_load(gated: tuple[TestClient, ServerState, Path]) -> None:
    client, state, gate = gated
    assert client.get("/v2/health/live").json() == {"live": True}
    r = client.get("/v2/health/ready")
    assert r.status_code == 503 and r.json() == {"ready": False}
    assert client.get("/v2/models/digits/ready").status_code == 503
    assert client.get("/v2/models/digits").status_code == 200  # metadata needs no weights
    r = client.post("/v2/models/digits/infer", content=_body(np.ones((1, 64), np.float32)))
    assert r.status_code == 503 and "not loaded yet" in r.json()["error"]
    assert "mlbuild_model_ready 0.0" in client.get("/metrics").text
    gc.unfreeze()
    gate.unlink()
    _wait(lambda: client.get("/v2/health/ready").status_code == 200)
    assert gc.get_freeze_count() > 0   # what was loaded is out of the collector's reach (no long pauses)
    gc.unfreeze()
    assert client.get("/v2/models/digits/versions/1/ready").json() == {"name": "digits", "ready": True}
    assert "mlbuild_model_ready 1.0" in client.get("/metrics").text
    state.begin_drain()
    assert client.get("/v2/health/ready").status_code == 503
    assert "mlbuild_model_ready 0.0" in client.get("/metrics").text


def test_model_errors_are_500_json_and_the_server_lives_on(gated: tuple[TestClient, ServerState, Path],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    client, state, gate = gated
    gate.unlink()
    _wait(lambda: state.ready)
    assert state.model is not None
    for p in state.model.module.parameters():
        p.data.zero_()
    r = client.post("/v2/models/digits/infer", content=_body(np.ones((1, 64), np.float32)))
    assert r.status_code == 500 and "model exploded" in r.json()["error"]
    assert caplog.text.count("RuntimeError: model exploded") == 1  # logged once, with its traceback
    state.model.module[2].bias.data.fill_(1.0)  # non-zero logits: the model works again
    r = client.post("/v2/models/digits/infer", content=_body(np.ones((2, 64), np.float32)))
    assert r.status_code == 200 and r.json()["outputs"][1]["shape"] == [2]


def test_transport_errors(gated: tuple[TestClient, ServerState, Path]) -> None:
    client, state, gate = gated
    gate.unlink()
    _wait(lambda: state.ready)
    body = _body(np.ones((1, 64), np.float32))
    for encoding, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        r = client.post("/v2/models/digits/infer", content=data, headers={"Content-Encoding": encoding})
        assert r.status_code == 200, r.text
    cases: list[tuple[str, str, dict[str, str], bytes, int, str]] = [
        ("POST", "/v2/models/digits/infer", {}, b"x" * 5000, 413, "limit of 4096"),
        ("POST", "/v2/models/digits/infer", {"Content-Encoding": "gzip"}, gzip.compress(b" " * 5000), 413, "decompressed"),
        ("POST", "/v2/models/digits/infer", {"Content-Encoding": "br"}, body, 415, "Content-Encoding"),
        ("POST", "/v2/models/digits/infer", {"Content-Type": "image/png"}, body, 415, "image/png"),
        ("POST", "/v2/models/digits/infer", {"Content-Encoding": "gzip"}, b"junk", 400, "gzip"),
        ("POST", "/v2/models/other/infer", {}, body, 404, "unknown model 'other'"),
        ("POST", "/v2/models/digits/versions/7/infer", {}, body, 404, "no version '7'"),
        ("GET", "/v2/models/digits/infer", {}, b"", 405, "not allowed"),
        ("GET", "/nothing/here", {}, b"", 404, "no route GET /nothing/here"),
        ("POST", "/v1/models/digits:predict", {}, b'{"instances": [[1]]}', 400, "shape"),
    ]
    for method, path, headers, data, status, message in cases:
        r = client.request(method, path, content=data or None, headers=headers)
        assert r.status_code == status and message in r.json()["error"], (path, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json"


def test_metrics_and_metadata(gated: tuple[TestClient, ServerState, Path]) -> None:
    client, state, gate = gated
    gate.unlink()
    _wait(lambda: state.ready)
    x = np.ones((3, 64), np.float32)
    assert client.post("/v2/models/digits/infer", content=_body(x)).status_code == 200
    r = client.post("/v1/models/digits:predict", json={"instances": x.tolist()})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3
    client.get("/missing")
    text = client.get("/metrics").text
    assert 'mlbuild_requests_total{method="POST",route="/v2/models/{name}/infer",status="200"} 1.0' in text
    assert 'mlbuild_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert "mlbuild_batch_size_sum 6.0" in text and "mlbuild_batch_size_count 2.0" in text
    assert 'model="digits"' in text and f'model_hash="{state.pkg.hashes["model"]}"' in text
    meta = client.get("/v2/models/digits").json()
    assert meta["hashes"] == state.pkg.hashes and meta["parameters"]["max_batch_size"] == 32
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]


def test_a_failed_load_is_reported(tmp_path: Path) -> None:
    pkg = build_package(tmp_path / "pkg", train_steps=0)
    (pkg / "code" / "model.py").write_text("raise SystemError('cannot import')\n")
    failures: list[BaseException] = []
    done = threading.Event()

    def on_failure(e: BaseException) -> None:
        failures.append(e)
        done.set()

    state = ServerState(load_package(pkg), ServerMetrics(process=False), on_load_failure=on_failure)
    with TestClient(create_app(state)) as client:
        assert done.wait(30)
        assert client.get("/v2/health/ready").status_code == 503
    assert "cannot import" in str(failures[0]) and state.load_error is failures[0]


@pytest.mark.parametrize(("method", "path", "route"), [
    ("POST", "/v2/models/digits/infer", ("digits", None)),
    ("POST", "/v2/models/digits/versions/1/infer", ("digits", "1")),
    ("GET", "/v2/models/digits/infer", None),            # Starlette answers: 405
    ("POST", "/v2/models//infer", None),                 # as Starlette's [^/]+: no empty name
    ("POST", "/v2/models/digits/versions//infer", None),
    ("POST", "/v2/models/digits/infer/", None),
    ("POST", "/v2/models/a/b/infer", None),
    ("POST", "/v1/models/digits/infer", None),
    ("POST", "/v2/models/digits/feedback", None),
])
def test_infer_fast_path_matches_what_starlette_routes(method: str, path: str, route: Any) -> None:
    from starlette.routing import Match, Route

    from mlbuild.runtime.serve.infer import INFER_ROUTES, infer_route

    scope = {"type": "http", "method": method, "path": path}
    assert infer_route(scope) == route
    if route is not None:  # the same request would match the Starlette route it bypasses
        matched = [Route(p, lambda r: None, methods=["POST"]).matches(scope)[0] for p in INFER_ROUTES]
        assert Match.FULL in matched
