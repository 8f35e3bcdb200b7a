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
from tests.unit.conftest_serve import MLP_SOURCE, TOKENS_SOURCE, build_package, tokens_config

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
    r = client.get("/v1/models/digits")   # KServe's v1 readiness route: was a 200 while loading
    assert r.status_code == 503 and r.json() == {"name": "digits", "ready": False}
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
    assert client.get("/v1/models/digits").status_code == 200
    state.begin_drain()
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/v1/models/digits").status_code == 503
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
        if status == 413:   # the value and the fix: fewer rows, or a higher limit (was the value alone)
            assert r.json()["error"].endswith("or bin/serve --max-body-bytes)"), r.text
    r = client.post("/v1/models/digits:predict", content=b"x" * 5000)
    assert r.status_code == 413 and "send fewer rows per request" in r.json()["error"], r.text


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


NAN_SOURCE = '''\
"""A linear model whose outputs are NaN for rows whose first feature is negative (as a model
trained on data holding a NaN may give)."""
import torch
from torch import nn


class NanWhenNegative(nn.Module):
    def __init__(self, features, classes):
        super().__init__()
        self.linear = nn.Linear(features, classes)

    def forward(self, x):
        y = self.linear(x)
        return torch.where(x[:, :1] < 0, torch.full_like(y, float("nan")), y)


def build_model(params):
    return NanWhenNegative(params["features"], params["classes"])
'''


def _write_reference(pkg: Path) -> None:
    """reference.json of 64 features uniform in [0, 1) (what ctx.save_reference writes)."""
    x = np.random.default_rng(0).random((200, 64))
    edges = np.quantile(x, np.linspace(0, 1, 11)[1:-1], axis=0).T
    (pkg / "model" / "reference.json").write_text(json.dumps({
        "mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "edges": edges.tolist(),
        "fractions": [[0.1] * 10 for _ in range(64)]}))


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[TestClient, ServerState]]:
    """A ready server of a 10-class model (class names "0".."9") with a drift reference."""
    pkg = build_package(tmp_path / "pkg", source=NAN_SOURCE, train_steps=0, params={"features": 64, "classes": 10})
    _write_reference(pkg)
    state = ServerState(load_package(pkg), ServerMetrics(process=False), threads=1, verify=False)
    with TestClient(create_app(state)) as client:
        _wait(lambda: state.ready)
        gc.unfreeze()
        yield client, state


def _rows_in_drift_window(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("mlbuild_input_drift_rows{"):
            return float(line.split()[-1])
    raise AssertionError("no mlbuild_input_drift_rows")


def test_bad_feedback_labels_are_400_and_break_nothing(served: tuple[TestClient, ServerState]) -> None:
    client, state = served
    r = client.post("/v2/models/digits/infer", content=_body(np.ones((2, 64), np.float32)))
    request_id = r.json()["id"]
    for label, shown in ((99, "99"), (-3, "-3"), ("-3", "'-3'"), ("\u00b2", "'\u00b2'")):
        r = client.post("/v2/models/digits/feedback", json={"feedback": [{"id": request_id, "labels": [1, label]}]})
        assert r.status_code == 400 and shown in r.json()["error"] and "0..9" in r.json()["error"], r.text
    # a JSON integer too big for int64 once made every /metrics (and an infer a second) a 500
    raw = b'{"feedback": [{"id": "%s", "labels": [1, 100000000000000000000000]}]}' % request_id.encode()
    r = client.post("/v2/models/digits/feedback", content=raw)
    assert r.status_code == 400 and "100000000000000000000000" in r.json()["error"]
    assert client.get("/metrics").status_code == 200
    # nested deeper than the JSON parser goes: a RecursionError, which was a 500 with a traceback
    r = client.post("/v2/models/digits/feedback", content=b'{"feedback": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert r.status_code == 400 and r.json()["error"] == "feedback is not valid JSON: nested too deeply"
    assert client.post("/v2/models/digits/infer", content=_body(np.ones((1, 64), np.float32))).status_code == 200
    assert 'mlbuild_live_feedback_samples{model="digits"} 0.0' in client.get("/metrics").text
    body = {"feedback": [{"id": request_id, "labels": [1, "2"]}]}
    assert client.post("/v2/models/digits/feedback", json=body).json() == {
        "matched_rows": 2, "repeated_rows": 0, "unknown_ids": 0}
    assert client.post("/v2/models/digits/feedback", json=body).json() == {   # a client's retry
        "matched_rows": 0, "repeated_rows": 2, "unknown_ids": 0}
    assert 'mlbuild_live_feedback_samples{model="digits"} 2.0' in client.get("/metrics").text


def test_v1_predict_carries_an_id_and_is_monitored(served: tuple[TestClient, ServerState]) -> None:
    client, state = served
    x = np.full((3, 64), 0.5, np.float32)
    before = _rows_in_drift_window(client)
    r = client.post("/v1/models/digits:predict", json={"instances": x.tolist()})
    assert r.status_code == 200 and isinstance(r.json()["id"], str) and len(r.json()["predictions"]) == 3
    assert _rows_in_drift_window(client) == before + 3
    labels = [p["label"] for p in r.json()["predictions"]]
    r = client.post("/v2/models/digits/feedback", json={"feedback": [{"id": r.json()["id"], "labels": labels}]})
    assert r.json()["matched_rows"] == 3
    r = client.post("/v1/models/digits:predict", json={"id": "mine-1", "instances": x[:1].tolist()})
    assert r.json()["id"] == "mine-1"
    r = client.post("/v2/models/digits/feedback", json={"feedback": [{"id": "mine-1", "labels": ["7"]}]})
    assert r.json()["matched_rows"] == 1


def test_long_request_ids_are_refused(served: tuple[TestClient, ServerState]) -> None:
    client, state = served
    x = np.ones((1, 64), np.float32)
    body = json.dumps({"id": "i" * 4_000_000, "inputs": json.loads(_body(x))["inputs"]})
    r = client.post("/v2/models/digits/infer", content=body)
    assert r.status_code == 400 and "256" in r.json()["error"] and len(r.text) < 400
    r = client.post("/v1/models/digits:predict", json={"id": "i" * 4_000_000, "instances": x.tolist()})
    assert r.status_code == 400 and "256" in r.json()["error"] and len(r.text) < 400
    assert len(state.live.predictions) == 0


def test_nan_model_outputs_are_a_500_with_valid_json(served: tuple[TestClient, ServerState],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    client, state = served
    x = np.ones((2, 64), np.float32)
    x[1, 0] = -1.0   # this row's outputs are NaN
    for path, payload in (("/v2/models/digits/infer", json.loads(_body(x))),
                          ("/v1/models/digits:predict", {"instances": x.tolist()})):
        r = client.post(path, json=payload)
        assert r.status_code == 500, r.text
        error = json.loads(r.text, parse_constant=lambda c: pytest.fail(f"bare {c} in the response"))["error"]
        assert "'probabilities' holds NaN or infinity" in error and "the model" in error
    assert caplog.text.count("holds NaN or infinity") == 2
    assert len(state.live.predictions) == 0   # not remembered: the client got no id
    # binary outputs carry NaN as IEEE floats
    payload = json.loads(_body(x))
    payload["parameters"] = {"binary_data_output": True}
    r = client.post("/v2/models/digits/infer", json=payload)
    assert r.status_code == 200
    n = int(r.headers["inference-header-content-length"])
    probabilities = np.frombuffer(r.content[n:n + 80], np.float32).reshape(2, 10)
    assert np.isnan(probabilities[1]).all() and np.isfinite(probabilities[0]).all()


def test_routing_errors_name_the_fix(served: tuple[TestClient, ServerState]) -> None:
    client, state = served
    body = _body(np.ones((1, 64), np.float32))
    r = client.post("/v2/models/digits/infer/", content=body, follow_redirects=False)
    assert r.status_code == 404 and "location" not in r.headers and "trailing slash" in r.json()["error"], r.text
    r = client.get("/v2/models/digits/", follow_redirects=False)
    assert r.status_code == 404 and "location" not in r.headers
    r = client.get("/v1/models/digits:predict")
    assert r.status_code == 405 and "use POST" in r.json()["error"] and r.headers["allow"] == "POST"
    assert client.get("/v1/models/iris:predict").status_code == 405
    # another verb: one answer whatever the method (a 405 "use GET" for POST, and an unknown
    # model 'digits:explain' for GET, before)
    for method in ("GET", "POST", "DELETE"):
        r = client.request(method, "/v1/models/digits:explain")
        assert r.status_code == 404 and r.json()["error"] == (
            "/v1/models/digits:explain: no verb 'explain'; the v1 route is POST /v1/models/digits:predict"), r.text
    r = client.post("/v1/models/digits", json={})
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    for method in ("OPTIONS", "TRACE"):   # Allow listed POST, PUT...: each of them answered "use GET"
        r = client.request(method, "/v1/models/digits")
        assert r.status_code == 405 and r.headers["allow"] == "GET", (method, r.headers)
    r = client.post("/v1/models/:predict", json={"instances": [[0.0] * 64]})   # was a 405 "use POST", to a POST
    assert r.status_code == 404 and r.json()["error"] == (
        "/v1/models/:predict: no model name; the v1 route is POST /v1/models/digits:predict")
    assert client.get("/v1/models/digits").json()["name"] == "digits"
    binary = np.ones((1, 64), np.float32).tobytes()
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                   "parameters": {"binary_data_size": len(binary)}}]}).encode()
    r = client.post("/v2/models/digits/infer", content=head + binary,
                    headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"], r.text


def test_a_path_behind_a_proxy_prefix_or_a_balancer_s_root_health_check_names_the_fix(
        served: tuple[TestClient, ServerState]) -> None:
    """A reverse proxy that passed its prefix on (nginx `proxy_pass http://backend;`, no trailing
    slash) got "no route GET /digits/v2/health/ready; see /v2 and /v2/models/{name}" for every
    request, and a load balancer's default health check (`GET /`: AWS, Google Cloud) "see /v2":
    neither said what to change."""
    client, _ = served
    for method, path, prefix in (("GET", "/digits/v2/health/ready", "/digits"),
                                 ("POST", "/ml/digits/v2/models/digits/infer", "/ml/digits"),
                                 ("POST", "/api/v1/models/digits:predict", "/api"),
                                 ("GET", "/digits/metrics", "/digits")):
        r = client.request(method, path)
        assert r.status_code == 404, r.text
        assert r.json()["error"] == (
            f"no route {method} {path}; this server's routes start at /v2, /v1 and /metrics: behind a proxy, "
            f"have it strip the prefix {prefix!r} (nginx: `proxy_pass http://BACKEND/;` in "
            f"`location {prefix}/`, with the trailing slash)"), r.text
    r = client.get("/")
    assert r.status_code == 404 and r.json()["error"] == (
        "no route GET /; a health check: GET /v2/health/ready (readiness: 503 while loading or stopping) or "
        "/v2/health/live (liveness); the API: /v2 and /v2/models/{name}"), r.text
    for path in ("/v2/nope", "/v2/models/digits/v2"):   # no prefix: as before
        assert client.get(path).json()["error"] == f"no route GET {path}; see /v2 and /v2/models/{{name}}"


def test_a_probe_path_of_another_server_s_names_the_health_routes(served: tuple[TestClient, ServerState]) -> None:
    """A Kubernetes probe or a balancer's health check on another server's path (/healthz, /ping,
    /v2/health without ready or live) got "see /v2 and /v2/models/{name}", which names no health
    route; it gets what GET / gets."""
    client, _ = served
    for path in ("/healthz", "/health", "/ping", "/readyz", "/v2/health", "/v2/health/"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"] == (
            f"no route GET {path}; a health check: GET /v2/health/ready (readiness: 503 while loading or stopping) or "
            "/v2/health/live (liveness); the API: /v2 and /v2/models/{name}"), r.text
    assert client.get("/v2/healthy").json()["error"] == "no route GET /v2/healthy; see /v2 and /v2/models/{name}"


def test_a_proxy_prefix_holding_a_version_of_its_own_is_named_whole(served: tuple[TestClient, ServerState]) -> None:
    """A gateway's prefix with a /v1/ or /v2 in it (/api/v1/digits/v2/health/ready) was split at its
    first /v1/, where no route starts, and got "see /v2": the prefix went unnamed."""
    client, _ = served
    for method, path, prefix in (("GET", "/api/v1/digits/v2/health/ready", "/api/v1/digits"),
                                 ("POST", "/ml/v2/digits/v2/models/digits/infer", "/ml/v2/digits"),
                                 ("GET", "/gw/v2/v2/health/live", "/gw/v2"),
                                 ("GET", "/api/v2/metrics", "/api/v2")):
        r = client.request(method, path)
        assert r.status_code == 404 and f"have it strip the prefix {prefix!r}" in r.json()["error"], r.text


def test_a_wrong_path_under_v2_names_no_proxy_prefix_and_a_doubled_slash_names_the_proxy_s_location(
        served: tuple[TestClient, ServerState]) -> None:
    """GET /v2/metrics (or /v1/metrics, /v2/v2) was told "behind a proxy, have it strip the prefix
    '/v2'", with no proxy in front; and nginx's `location /digits` with `proxy_pass http://BACKEND/;`
    (a slash on one side only) passes //v2/... on, which got "see /v2"."""
    client, _ = served
    for path in ("/v2/metrics", "/v1/metrics", "/v2/v2"):
        assert client.get(path).json()["error"] == f"no route GET {path}; see /v2 and /v2/models/{{name}}"
    for method, path in (("GET", "//v2/health/ready"), ("POST", "//v2/models/digits/infer")):
        r = client.request(method, "http://testserver" + path)   # "//v2/...": the host v2, to httpx
        assert r.status_code == 404 and r.json()["error"] == (
            f"no route {method} {path}; the path begins with two slashes: behind a proxy that strips a prefix, end "
            "its location with a slash as its proxy_pass does (nginx: `location /PREFIX/` with "
            "`proxy_pass http://BACKEND/;`)"), r.text
    assert client.get("http://testserver//nope").json()["error"] == "no route GET //nope; see /v2 and /v2/models/{name}"


def test_server_metadata_is_also_at_the_path_the_protocols_openapi_names(served: tuple[TestClient, ServerState]) -> None:
    """open_inference_rest.yaml (KServe's open-inference-protocol) gives server metadata as `GET /v2/`:
    a client generated from it got a 404 ("drop the trailing slash")."""
    client, _ = served
    for path in ("/v2", "/v2/"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 200 and set(r.json()) >= {"name", "version", "extensions"}, (path, r.text)
    assert client.get("/v2/health/live/").status_code == 404


def test_other_routes_failing_are_not_called_inference(served: tuple[TestClient, ServerState],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    client, state = served

    def broken() -> bytes:
        raise RuntimeError("registry broke")
    monkeypatch.setattr(state.metrics, "render", broken)
    r = client.get("/metrics")
    assert r.status_code == 500 and r.json()["error"].startswith("GET /metrics failed: RuntimeError: registry broke")


def test_a_regression_model_takes_true_values_as_feedback(tmp_path: Path) -> None:
    pkg = build_package(tmp_path / "pkg", name="price", train_steps=0, params={"features": 64, "hidden": 8, "classes": 1},
                        extra_config={"task": "regression", "labels": None,
                                      "outputs": [{"name": "value", "datatype": "FP32", "shape": [-1, 1]}]})
    state = ServerState(load_package(pkg), ServerMetrics(process=False), threads=1, verify=False)
    state.live.min_feedback_rows = 10
    x = np.random.default_rng(1).random((10, 64)).astype(np.float32)
    with TestClient(create_app(state)) as client:
        _wait(lambda: state.ready)
        r = client.post("/v2/models/price/infer", content=_body(x))
        assert r.status_code == 200, r.text
        predicted = np.array(r.json()["outputs"][0]["data"], dtype=np.float64)
        truth = predicted + np.arange(10) * 0.1
        r = client.post("/v2/models/price/feedback", json={"feedback": [{"id": r.json()["id"], "values": truth.tolist()}]})
        assert r.json() == {"matched_rows": 10, "repeated_rows": 0, "unknown_ids": 0}, r.text
        metrics = {line.split('metric="')[1].split('"')[0]: float(line.split()[-1])
                   for line in client.get("/metrics").text.splitlines() if line.startswith("mlbuild_live_metric{")}
        assert set(metrics) == {"mae", "rmse", "r2"}
        assert metrics["mae"] == pytest.approx(0.45, abs=1e-6)   # float32 outputs
        r = client.post("/v2/models/price/feedback", json={"feedback": [{"id": "x", "values": ["high"]}]})
        assert r.status_code == 400 and "value 'high' is not a finite number" in r.json()["error"]
    gc.unfreeze()


def test_a_regression_model_with_several_values_per_row_says_it_takes_no_feedback(tmp_path: Path) -> None:
    pkg = build_package(tmp_path / "pkg", name="multi", train_steps=0, params={"features": 64, "hidden": 8, "classes": 3},
                        extra_config={"task": "regression", "labels": None,
                                      "outputs": [{"name": "values", "datatype": "FP32", "shape": [-1, 3]}]})
    state = ServerState(load_package(pkg), ServerMetrics(process=False), threads=1, verify=False)
    with TestClient(create_app(state)) as client:
        _wait(lambda: state.ready)
        r = client.post("/v2/models/multi/infer", content=_body(np.ones((1, 64), np.float32)))
        assert r.status_code == 200
        r = client.post("/v2/models/multi/feedback", json={"feedback": [{"id": r.json()["id"], "values": [1.0]}]})
        assert r.status_code == 400 and "has no output with one value per row" in r.json()["error"]
    gc.unfreeze()


def test_probes_stay_out_of_the_live_windows(served: tuple[TestClient, ServerState]) -> None:
    """`mlbuild monitor` sends the validation suite every interval: at low traffic its held-out rows
    filled the drift window (and hid drift). Its requests carry the probe header."""
    client, state = served
    x = np.full((3, 64), 0.5, np.float32)
    before = _rows_in_drift_window(client)
    probe = {"mlbuild-probe": "validation-suite"}
    r = client.post("/v2/models/digits/infer", content=_body(x), headers=probe)
    assert r.status_code == 200
    r1 = client.post("/v1/models/digits:predict", json={"instances": x.tolist()}, headers=probe)
    assert r1.status_code == 200
    assert _rows_in_drift_window(client) == before
    for rid in (r.json()["id"], r1.json()["id"]):   # nothing remembered for feedback either
        fb = client.post("/v2/models/digits/feedback", json={"feedback": [{"id": rid, "labels": [1, 1, 1]}]})
        assert fb.json()["unknown_ids"] == 1
    client.post("/v2/models/digits/infer", content=_body(x))
    assert _rows_in_drift_window(client) == before + 3


def test_huge_finite_inputs_that_overflow_the_model_are_a_400(served: tuple[TestClient, ServerState]) -> None:
    """3e38 is a valid FP32 input, but it overflows the model: that was a 500 blaming the model
    (which paged on-call through the error-rate alert), a 200 with a label taken from NaN scores
    when only labels were asked for, and 3e37 in the drift window."""
    client, state = served
    x = np.ones((3, 64), np.float32)
    x[1, 1:33], x[1, 33:] = 3e38, -3e38   # +inf - inf in the first layer: NaN
    # (the fixture's model answers NaN for a negative first feature by itself: x[:, 0] stays 1)
    for path, payload in (("/v2/models/digits/infer", json.loads(_body(x))),
                          ("/v1/models/digits:predict", {"instances": x.tolist()})):
        r = client.post(path, json=payload)
        assert r.status_code == 400, r.text
        assert r.json()["error"].startswith("input row(s) 1 hold values far beyond the data the model was trained on "
                                            "(up to 3e+38 in magnitude, over a million times its scale)")
    labels_only = json.loads(_body(x))
    labels_only["outputs"] = [{"name": "label"}]
    assert client.post("/v2/models/digits/infer", json=labels_only).status_code == 400
    # finite outputs, still meaningless: 1e20 (the model answered it with confidence, a 200)
    y = np.ones((2, 64), np.float32)
    y[0, 5] = 1e20
    r = client.post("/v2/models/digits/infer", content=_body(y))
    assert r.status_code == 400 and r.json()["error"].startswith("input row(s) 0 hold values far beyond"), r.text
    assert _rows_in_drift_window(client) == 0
    assert len(state.live.predictions) == 0
    y[0, 5] = 1e5   # far out, but within a million times the training scale: answered
    assert client.post("/v2/models/digits/infer", content=_body(y)).status_code == 200




def test_a_preprocess_value_error_refuses_only_its_request_with_a_400(tmp_path: Path) -> None:
    """A handler's ValueError is the client's fault: a 400 with its message, for that request
    only (a batch it shared is retried alone), and the server stays ready, nothing logged as a
    model failure."""
    pkg = build_package(tmp_path / "pkg", name="bag", source=TOKENS_SOURCE, train_steps=0,
                        params={"classes": 3}, extra_config=tokens_config())
    state = ServerState(load_package(pkg), ServerMetrics(process=False), threads=1, verify=False)

    def body(rows: list[list[int]]) -> dict[str, Any]:
        return {"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [len(rows), 6],
                            "data": [v for r in rows for v in r]}]}

    with TestClient(create_app(state)) as client:
        _wait(lambda: state.ready)
        gc.unfreeze()
        results: dict[int, Any] = {}

        def send(i: int, rows: list[list[int]]) -> None:
            results[i] = client.post("/v2/models/bag/infer", json=body(rows))

        threads = [threading.Thread(target=send, args=(i, [[1, 2, 3, 0, 0, 99 if i == 3 else 4]]))
                   for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results[3].status_code == 400
        assert results[3].json() == {"error": "preprocess refused the input: token ids must be in 0..49"}
        assert all(results[i].status_code == 200 for i in results if i != 3)
        r = client.post("/v1/models/bag:predict", json={"instances": [[1, 2, 3, 0, 0, -1]]})
        assert r.status_code == 400 and "token ids must be in 0..49" in r.json()["error"]
        assert client.get("/v2/health/ready").status_code == 200


def test_drift_is_measured_for_inputs_of_more_than_two_dimensions(tmp_path: Path) -> None:
    """save_reference flattens each row ([1, 8, 8] -> 64 features); the drift window did not take
    such inputs at all (no psi, rows 0) while the alert and dashboard expected them."""
    source = MLP_SOURCE.replace("return nn.Sequential(", "return nn.Sequential(nn.Flatten(),")
    pkg = build_package(tmp_path / "pkg", name="cnn", source=source, train_steps=0,
                        extra_config={"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]})
    _write_reference(pkg)
    state = ServerState(load_package(pkg), ServerMetrics(process=False), threads=1, verify=False)
    state.live.min_drift_rows = 10
    with TestClient(create_app(state)) as client:
        _wait(lambda: state.ready)
        gc.unfreeze()
        images = np.random.default_rng(1).random((12, 1, 8, 8)).astype(np.float32)
        assert client.post("/v2/models/cnn/infer", content=_body(images)).status_code == 200
        state.live.refresh(force=True)
        assert _rows_in_drift_window(client) == 12
        text = client.get("/metrics").text
        assert 'mlbuild_input_drift_psi{feature="63",model="cnn"}' in text


# build_model busy in torch (a big model's initialisation) until the test lets go
BUSY = GATED.replace("time.sleep(0.01)", "torch.tanh(torch.ones(300, 300) @ torch.ones(300, 300))")


@pytest.mark.parametrize("sig,source", [("SIGTERM", GATED), ("SIGINT", GATED), ("SIGTERM", BUSY)],
                         ids=["SIGTERM", "SIGINT", "SIGTERM-in-torch"])
def test_a_signal_while_the_model_is_loading_stops_the_server_at_once(tmp_path: Path, sig: str,
                                                                      source: str) -> None:
    """The load ran in asyncio.to_thread, whose worker the interpreter joins at exit: a server
    stopped while build_model was still running logged 'Finished server process' and stayed up
    until the load ended (a stuck one: for good, whatever signal came next). In a daemon thread
    busy in torch, the interpreter's exit tore torch's thread pools down under it: SIGABRT."""
    import signal

    from tests.unit.conftest_serve import ServerProcess

    hold = tmp_path / "hold"
    pkg = build_package(tmp_path / "pkg", source=source, train_steps=0,
                        params={"features": 64, "hidden": 8, "classes": 10, "hold": str(hold)})
    hold.touch()   # build_model waits while it exists (30 s at most)
    server = ServerProcess(pkg, tmp_path / "server", "--log-level", "info")
    _wait(lambda: server.port_file.exists() and "Application startup complete" in server.log())
    server.port = int(server.port_file.read_text())
    assert server.json("GET", "/v2/health/ready") == (503, {"ready": False})
    started = time.monotonic()
    server.proc.send_signal(getattr(signal, sig))
    try:
        assert server.proc.wait(10) == 0
    finally:
        server.stop()
    assert time.monotonic() - started < 10
    assert "stopping before model digits finished loading" in server.log()
    assert "terminate called" not in server.log()


def test_the_infer_route_reads_a_body_sent_in_pieces() -> None:
    """receive_body (the infer route's body reader) as read_body: pieces joined, inflated, the
    size limit applied to the whole, a disconnect named."""
    import asyncio

    from starlette.requests import ClientDisconnect

    from mlbuild.runtime.serve.infer import receive_body
    from mlbuild.runtime.serve.protocol import ProtocolError

    def receive_of(*messages: dict[str, Any]) -> Any:
        queue = list(messages)

        async def receive() -> dict[str, Any]:
            return queue.pop(0)
        return receive

    def piece(body: bytes, more: bool) -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": more}

    plain = {"content-type": "application/json"}
    read = asyncio.run(receive_body(plain, receive_of(piece(b"ab", True), piece(b"", True), piece(b"cd", False)), 10))
    assert read == b"abcd"
    zipped = gzip.compress(b"x" * 30)
    read = asyncio.run(receive_body({**plain, "content-encoding": "gzip"},
                                    receive_of(piece(zipped[:5], True), piece(zipped[5:], False)), 100))
    assert read == b"x" * 30
    for pieces in ([piece(b"x" * 11, False)], [piece(b"x" * 6, True), piece(b"x" * 6, False)]):
        with pytest.raises(ProtocolError, match="request body is over the server's limit of 10 bytes"):
            asyncio.run(receive_body(plain, receive_of(*pieces), 10))
    with pytest.raises(ClientDisconnect):
        asyncio.run(receive_body(plain, receive_of(piece(b"ab", True), {"type": "http.disconnect"}), 10))
    with pytest.raises(ProtocolError, match="Content-Type 'text/html' is not supported"):
        asyncio.run(receive_body({"content-type": "text/html"}, receive_of(piece(b"", False)), 10))


def test_the_in_flight_gauge_counts_requests_being_answered_not_the_scrape() -> None:
    import asyncio

    from mlbuild.runtime.serve.metrics import MetricsMiddleware

    metrics = ServerMetrics(process=False)
    seen: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(next(line for line in metrics.render().splitlines()
                         if line.startswith(b"mlbuild_requests_in_flight ")))

    async def nothing(message: Any) -> None:
        pass

    async def drive() -> None:
        middleware = MetricsMiddleware(app, metrics)
        await middleware({"type": "http", "method": "GET", "path": "/metrics"}, nothing, nothing)
        await middleware({"type": "http", "method": "GET", "path": "/v2"}, nothing, nothing)
    asyncio.run(drive())
    assert seen == [b"mlbuild_requests_in_flight 0.0", b"mlbuild_requests_in_flight 1.0"]
    assert b"mlbuild_requests_in_flight 0.0" in metrics.render()


def test_a_two_class_model_without_class_names_publishes_class_1_s_live_metrics(tmp_path: Path) -> None:
    """A classifier trained without `labels=` declares its probabilities `[-1, -1]`, so the server
    had no class count: its live metrics lacked precision, recall and F1 (class 1's, which the
    validation report has; a monitor alert on them never fired), and feedback took any integer as a
    class. The server counts the classes by the outputs it sees at the warm-up, as the validation does."""
    import re

    pkg = build_package(tmp_path / "pkg", train_steps=0, params={"features": 64, "hidden": 8, "classes": 2},
                        extra_config={"labels": None,
                                      "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]},
                                                  {"name": "label", "datatype": "INT64", "shape": [-1]}]})
    state = ServerState(load_package(pkg), ServerMetrics(process=False), threads=1, verify=False)
    with TestClient(create_app(state)) as client:
        _wait(lambda: state.ready)
        gc.unfreeze()
        x = np.random.default_rng(0).uniform(0, 16, (120, 64)).astype(np.float32)
        r = client.post("/v2/models/digits/infer", content=_body(x))
        assert r.status_code == 200, r.text
        answer = r.json()
        predicted = next(o for o in answer["outputs"] if o["name"] == "label")["data"]
        truth = [1 - p if i % 3 == 0 else p for i, p in enumerate(predicted)]   # a third of them wrong
        bad = {"feedback": [{"id": answer["id"], "labels": [2] * len(truth)}]}
        refused = client.post("/v2/models/digits/feedback", json=bad)
        assert refused.status_code == 400 and "a class index 0..1" in refused.json()["error"], refused.text
        r = client.post("/v2/models/digits/feedback", json={"feedback": [{"id": answer["id"], "labels": truth}]})
        assert r.json()["matched_rows"] == 120, r.text
        state.live.refresh(force=True)
        live = {m: float(v) for m, v in re.findall(r'^mlbuild_live_metric\{metric="(\w+)",model="digits"\} (\S+)$',
                                                    client.get("/metrics").text, re.M)}
    from sklearn import metrics as skm

    assert live["precision"] == pytest.approx(skm.precision_score(truth, predicted, zero_division=0))
    assert live["recall"] == pytest.approx(skm.recall_score(truth, predicted, zero_division=0))
    assert live["f1"] == pytest.approx(skm.f1_score(truth, predicted, zero_division=0))
