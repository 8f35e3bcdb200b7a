"""Over 1,000 malformed requests (hypothesis) against the running server: every answer is a 4xx
with a JSON ``{"error": ...}`` body, nothing is a 5xx, and the server stays ready.

Each strategy builds a request that is invalid by construction (a valid request with exactly one
thing broken, or something that cannot be a request at all), so the expected class is known.
"""

from __future__ import annotations

import gzip
import http.client
import json
import math
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.conftest_serve import ServerProcess, connect

pytestmark = pytest.mark.e2e

LIMIT = 64 * 1024
INFER = "/v2/models/digits/infer"
ROWS = 2
X = np.linspace(0, 1, ROWS * 64, dtype=np.float32)
BINARY = X.tobytes()

Req = tuple[str, str, dict[str, str], bytes, tuple[int, ...]]  # method, path, headers, body, allowed statuses


def _valid() -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [ROWS, 64], "data": X.tolist()}]}


def _valid_binary() -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [ROWS, 64],
                        "parameters": {"binary_data_size": len(BINARY)}}],
            "parameters": {"binary_data_output": True}}


def _post(payload: Any, path: str = INFER, statuses: tuple[int, ...] = (400,)) -> Req:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return ("POST", path, {"Content-Type": "application/json"}, body, statuses)


def _binary(header: dict[str, Any], tail: bytes = BINARY, length: str | None = None) -> Req:
    head = json.dumps(header).encode()
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": str(len(head)) if length is None else length}
    return ("POST", INFER, headers, head + tail, (400,))


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=12))
json_any = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                        max_size=4), max_leaves=12)
other_text = st.text(max_size=12)
no_slash = st.characters(exclude_characters="/", exclude_categories=("Cs",))   # a URL path is UTF-8: no lone surrogates


@st.composite
def broken_field(draw: st.DrawFn) -> Req:
    """A valid request with one input field replaced by a wrong value, or removed."""
    req = _valid()
    field = draw(st.sampled_from(["name", "datatype", "shape", "data", "parameters"]))
    valid = req["inputs"][0].get(field)
    if draw(st.booleans()) and field != "parameters":
        del req["inputs"][0][field]
    else:
        value = draw(json_any.filter(lambda v: v != valid))
        if field == "parameters" and isinstance(value, dict):
            # claims binary data without the header (null would be no claim: a parameter set to null is unset)
            value = {**value, "binary_data_size": draw(json_any.filter(lambda v: v is not None))}
        req["inputs"][0][field] = value
    return _post(req)


@st.composite
def broken_top(draw: st.DrawFn) -> Req:
    """A valid input, but a wrong top-level field (inputs, id, parameters, outputs)."""
    req = _valid()
    field = draw(st.sampled_from(["inputs", "id", "parameters", "outputs", "outputs_named", "duplicate"]))
    if field == "inputs":
        if draw(st.booleans()):
            del req["inputs"]
        else:
            req["inputs"] = draw(json_any.filter(lambda v: not (isinstance(v, list) and v)))
    elif field == "id":
        req["id"] = draw(st.one_of(json_any.filter(lambda v: v is not None and not isinstance(v, str)),
                                   st.text(min_size=257, max_size=300)))
    elif field == "parameters":
        # null is none, as a client with a nil map or an unset field sends it: not malformed
        value = draw(json_any.filter(lambda v: v is not None and not isinstance(v, dict)))
        req["parameters"] = value if draw(st.booleans()) else {"binary_data_output": value}
        if isinstance(value, bool):
            req["parameters"] = [value]
    elif field == "outputs":
        req["outputs"] = draw(json_any.filter(lambda v: v is not None and not (isinstance(v, list) and v and all(
            isinstance(o, dict) and o.get("name") in ("probabilities", "label") for o in v))))
    elif field == "outputs_named":
        name = draw(st.sampled_from(["probabilities", "label"]))
        params = draw(st.sampled_from([{"classification": 3}, {"binary_data": "yes"}, {"binary_data": 1},
                                       {"shared_memory_region": "r"}]))
        req["outputs"] = [{"name": name, "parameters": params}]
        if draw(st.booleans()):
            req["outputs"] = [{"name": draw(other_text.filter(lambda s: s not in ("probabilities", "label")))}]
    else:
        req["inputs"].append(dict(req["inputs"][0]))
    return _post(req)


@st.composite
def bad_data(draw: st.DrawFn) -> Req:
    """Data that is not the 128 finite FP32 numbers the shape asks for."""
    req = _valid()
    data: list[Any] = list(X.tolist())
    kind = draw(st.sampled_from(["nonfinite", "overflow", "count", "type", "nested", "shape", "big_shape"]))
    i = draw(st.integers(0, len(data) - 1))
    if kind == "nonfinite":
        data[i] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    elif kind == "overflow":
        data[i] = draw(st.sampled_from([1e39, -1e300, 3.5e38 * 10]))
    elif kind == "count":
        n = draw(st.integers(0, 300).filter(lambda n: n != len(data)))
        data = (data * 3)[:n]
    elif kind == "type":
        data[i] = draw(st.one_of(st.text(max_size=5), st.booleans(), st.none(), st.just([1.0]), st.just({}),
                                 # an integer beyond FP32's range (1e20 is an FP32 value, as JavaScript writes it)
                                 st.integers(min_value=10**39)))
    elif kind == "nested":
        data = [data[:64], data[64:127]]  # ragged
    elif kind == "shape":
        req["inputs"][0]["shape"] = draw(st.lists(st.integers(-3, 300), max_size=4).filter(
            lambda s: s != [ROWS, 64]))
    else:
        req["inputs"][0]["shape"] = [draw(st.integers(10**6, 10**15)), 64]
    req["inputs"][0]["data"] = data
    return _post(req)


@st.composite
def bad_binary(draw: st.DrawFn) -> Req:
    """Triton's binary extension with wrong sizes, headers or payloads."""
    kind = draw(st.sampled_from(["size", "extra", "short", "header", "no_header", "both", "nan"]))
    req = _valid_binary()
    if kind == "size":
        req["inputs"][0]["parameters"]["binary_data_size"] = draw(
            st.one_of(st.integers(-10, 10**6).filter(lambda n: n != len(BINARY)), st.text(max_size=4), st.floats()))
        return _binary(req)
    if kind == "extra":
        return _binary(req, BINARY + draw(st.binary(min_size=1, max_size=64)))
    if kind == "short":
        return _binary(req, BINARY[:draw(st.integers(0, len(BINARY) - 1))])
    if kind == "header":
        head = len(json.dumps(req).encode())
        length = draw(st.one_of(st.integers(-5, 10**9).filter(lambda n: n != head).map(str),
                                st.text(alphabet="0123456789abc -+x.\u00b2", max_size=8).filter(
                                    lambda s: not (s.isascii() and s.isdigit() and int(s) == head))))
        return _binary(req, length=length)
    if kind == "no_header":
        method, path, headers, body, statuses = _binary(req)
        del headers["Inference-Header-Content-Length"]
        return method, path, headers, body, statuses
    if kind == "both":
        req["inputs"][0]["data"] = X.tolist()
        return _binary(req)
    tail = bytearray(BINARY)
    j = draw(st.integers(0, ROWS * 64 - 1)) * 4
    tail[j:j + 4] = np.array([draw(st.sampled_from([np.nan, np.inf, -np.inf]))], dtype="<f4").tobytes()
    return _binary(req, bytes(tail))


@st.composite
def bad_transport(draw: st.DrawFn) -> Req:
    """Bodies that are not JSON, too large, wrongly typed or encoded; wrong paths and methods."""
    kind = draw(st.sampled_from(["bytes", "json", "huge", "bomb", "media", "encoding", "gzip_junk", "model",
                                 "version", "method", "path", "predict"]))
    if kind == "bytes":
        return _post(draw(st.binary(max_size=300)))
    if kind == "json":
        return _post(draw(json_any))
    if kind == "huge":
        return _post(b"[" + b"0," * draw(st.integers(LIMIT // 2 + 1, 2 * LIMIT)) + b"0]", statuses=(413,))
    if kind == "bomb":
        body = gzip.compress(b" " * draw(st.integers(LIMIT + 1, 50 * LIMIT)))
        return ("POST", INFER, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, body, (413,))
    if kind == "media":
        media = draw(st.sampled_from(["multipart/form-data; boundary=x", "image/png", "text/html", "application/xml"]))
        return ("POST", INFER, {"Content-Type": media}, json.dumps(_valid()).encode(), (415,))
    if kind == "encoding":
        enc = draw(st.sampled_from(["br", "compress", "zstd", "x-junk"]))
        return ("POST", INFER, {"Content-Encoding": enc}, json.dumps(_valid()).encode(), (415,))
    if kind == "gzip_junk":
        body = draw(st.one_of(st.binary(max_size=64), st.just(gzip.compress(json.dumps(_valid()).encode())[:-9])))
        return ("POST", INFER, {"Content-Encoding": "gzip"}, body, (400,))
    if kind == "model":
        name = quote(draw(st.text(no_slash, min_size=1, max_size=10).filter(lambda s: s != "digits")), safe="")
        route = draw(st.sampled_from(["/v2/models/{}/infer", "/v2/models/{}", "/v2/models/{}/ready",
                                      "/v1/models/{}:predict"]))
        method = "GET" if not route.endswith(("infer", "predict")) else "POST"
        return (method, route.format(name), {}, json.dumps(_valid()).encode() if method == "POST" else b"", (404,))
    if kind == "version":
        version = quote(draw(st.text(no_slash, min_size=1, max_size=6).filter(lambda s: s != "1")), safe="")
        return ("POST", f"/v2/models/digits/versions/{version}/infer", {}, json.dumps(_valid()).encode(), (404,))
    if kind == "method":
        method, path = draw(st.sampled_from([("GET", INFER), ("PUT", INFER), ("DELETE", "/v2/health/ready"),
                                             ("POST", "/v2/health/live"), ("POST", "/metrics"),
                                             ("PATCH", "/v2/models/digits")]))
        return (method, path, {}, b"", (405,))
    if kind == "path":
        return ("GET", "/zz/" + quote(draw(st.text(max_size=20)), safe=""), {}, b"", (404,))
    instances = draw(st.one_of(json_any, st.just([[0.5] * 63]), st.just([[math.nan] * 64]), st.just([])))
    payload = draw(st.sampled_from([{"instances": instances}, {"rows": instances}, instances]))
    return _post(payload, path="/v1/models/digits:predict")


def _is_class(label: Any) -> bool:
    """Whether the digits model (classes 0..9, named "0".."9") takes ``label`` as a true label."""
    if isinstance(label, str):
        return label.isascii() and label.isdigit() and len(label) < 20 and int(label) < 10
    return type(label) is int and 0 <= label < 10


@st.composite
def bad_feedback(draw: st.DrawFn) -> Req:
    """Feedback with one label that is not a class of the model (or no list of items at all)."""
    label = draw(st.one_of(json_leaf, st.integers(min_value=-(10**30), max_value=10**30), st.text(
        alphabet="0123456789-+.²٣ ", max_size=25)).filter(lambda v: not _is_class(v)))
    labels = draw(st.lists(st.integers(0, 9), max_size=3))
    labels.insert(draw(st.integers(0, len(labels))), label)
    item = {"id": draw(st.text(max_size=10)), "labels": labels}
    body = draw(st.sampled_from([{"feedback": [item]}, {"feedback": [{"id": "x", "labels": [1]}, item]},
                                 {"feedback": item}, {"feedback": []}, [item]]))
    return _post(body, path="/v2/models/digits/feedback")


malformed = st.one_of(broken_field(), broken_top(), bad_data(), bad_binary(), bad_transport(), bad_feedback())


class Client:
    """One keep-alive connection, reopened if the server closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = connect(port)
        self.sent = 0

    def send(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body or None, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    self.conn.close()
                self.sent += 1
                return resp.status, resp.getheader("content-type", ""), data
            except (http.client.RemoteDisconnected, ConnectionError, http.client.CannotSendRequest):
                self.conn.close()
                self.conn = connect(self.port)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def small_server(digits_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(digits_package, tmp_path_factory.mktemp("fuzz"), "--max-body-bytes", str(LIMIT)).ready()
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def client(small_server: ServerProcess) -> Iterator[Client]:
    c = Client(small_server.port)
    yield c
    c.conn.close()


def test_valid_requests_pass(client: Client) -> None:
    """The generators' starting points are valid: the 4xx below come from the one broken thing."""
    status, _, body = client.send(*_post(_valid(), statuses=(200,))[:4])
    assert status == 200, body
    method, path, headers, data, _ = _binary(_valid_binary())
    status, _, body = client.send(method, path, headers, data)
    assert status == 200, body[:200]


@settings(max_examples=1100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(req=malformed)
def test_malformed_requests_get_4xx_json(client: Client, req: Req) -> None:
    method, path, headers, body, statuses = req
    status, content_type, data = client.send(method, path, headers, body)
    assert status in statuses, (status, data[:300])
    assert content_type.startswith("application/json"), content_type
    error = json.loads(data)["error"]
    assert isinstance(error, str) and error


def test_server_stayed_ready(client: Client, small_server: ServerProcess) -> None:
    assert client.sent >= 1000
    assert small_server.request("GET", "/v2/health/ready")[0] == 200
    _, _, text = small_server.request("GET", "/metrics")
    # (503s from /v2/health/ready while the fixture waited for the model to load are expected)
    server_errors = [line for line in text.decode().splitlines()
                     if 'status="5' in line and 'route="/v2/health/ready"' not in line]
    assert not server_errors, server_errors
    assert "Traceback" not in small_server.log()
