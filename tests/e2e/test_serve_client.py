"""The real server driven by the real Triton client (``tritonclient.http``), JSON and binary tensors."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.unit.conftest_serve import ServerProcess, digits_split, load_reference

pytestmark = pytest.mark.e2e


def _expected(pkg: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        logits = load_reference(pkg)(torch.from_numpy(x))
    return torch.softmax(logits, dim=-1).numpy(), logits.argmax(dim=-1).numpy()


@pytest.fixture()
def client(digits_server: ServerProcess) -> httpclient.InferenceServerClient:
    with httpclient.InferenceServerClient(digits_server.url) as c:
        yield c


def test_health(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", model_version="1")
    assert not client.is_model_ready("nope")


def test_metadata_carries_the_package_hashes(client: httpclient.InferenceServerClient, digits_package: Path) -> None:
    manifest = json.loads((digits_package / "manifest.json").read_text())
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata("digits")
    assert meta["name"] == "digits" and meta["versions"] == ["1"]
    for key in ("model", "data", "code"):
        assert meta["hashes"][key] == manifest["hashes"][key] and len(meta["hashes"][key]) == 64
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label"]
    assert client.get_model_metadata("digits", model_version="1") == meta
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("nope")
    assert err.value.status() == "404" and "nope" in err.value.message()


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [False, True, None])
def test_predictions_equal_the_models_forward_pass(client: httpclient.InferenceServerClient, digits_package: Path,
                                                   binary_in: bool, binary_out: bool | None) -> None:
    _, _, x_test, y_test = digits_split()
    x = x_test[:50]
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    outputs = None if binary_out is None else [
        httpclient.InferRequestedOutput("probabilities", binary_data=binary_out),
        httpclient.InferRequestedOutput("label", binary_data=binary_out)]
    result = client.infer("digits", [inp], outputs=outputs, request_id="req-7")
    probs, labels = _expected(digits_package, x)
    np.testing.assert_allclose(result.as_numpy("probabilities"), probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), labels)
    assert result.as_numpy("label").dtype == np.int64
    assert result.get_response()["id"] == "req-7"
    assert (labels == y_test[:50]).mean() > 0.9  # a trained model, not noise


def test_versioned_route_and_one_output(client: httpclient.InferenceServerClient, digits_package: Path) -> None:
    x = digits_split()[2][:3]
    inp = httpclient.InferInput("input", [3, 64], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("digits", [inp], model_version="1", outputs=[httpclient.InferRequestedOutput("label")])
    assert result.as_numpy("probabilities") is None
    np.testing.assert_array_equal(result.as_numpy("label"), _expected(digits_package, x)[1])


def test_client_errors_are_4xx_with_a_message(client: httpclient.InferenceServerClient) -> None:
    x64 = np.zeros((2, 64), dtype=np.float64)
    inp = httpclient.InferInput("input", [2, 64], "FP64")
    inp.set_data_from_numpy(x64)
    with pytest.raises(InferenceServerException) as err:
        client.infer("digits", [inp])
    assert err.value.status() == "400" and "FP32" in err.value.message()

    bad = np.zeros((2, 63), dtype=np.float32)
    inp = httpclient.InferInput("input", [2, 63], "FP32")
    inp.set_data_from_numpy(bad)
    with pytest.raises(InferenceServerException) as err:
        client.infer("digits", [inp])
    assert err.value.status() == "400" and "shape" in err.value.message()

    nan = np.full((1, 64), np.nan, dtype=np.float32)
    inp = httpclient.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(nan)
    with pytest.raises(InferenceServerException) as err:
        client.infer("digits", [inp])
    assert err.value.status() == "400" and "NaN" in err.value.message()

    inp.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("other", [inp])
    assert err.value.status() == "404"
    with pytest.raises(InferenceServerException) as err:
        client.infer("digits", [inp], model_version="2")
    assert err.value.status() == "404"


def test_v1_predict_for_humans(digits_server: ServerProcess, digits_package: Path) -> None:
    x = digits_split()[2][:4]
    status, body = digits_server.json("POST", "/v1/models/digits:predict", {"instances": x.tolist()})
    assert status == 200 and isinstance(body["id"], str)   # for feedback, as the v2 route's
    labels = _expected(digits_package, x)[1]
    assert [p["label"] for p in body["predictions"]] == labels.tolist()
    assert [p["class"] for p in body["predictions"]] == [str(v) for v in labels]
    status, body = digits_server.json("GET", "/v1/models/digits")
    assert status == 200 and body["ready"] is True


def test_concurrent_requests_each_get_their_own_rows(digits_server: ServerProcess, digits_package: Path) -> None:
    """Many clients at once: batched together, every response still holds exactly its rows."""
    x_test = digits_split()[2]
    probs, labels = _expected(digits_package, x_test)
    before = digits_server.metric("mlbuild_batch_size_count")

    def one(i: int) -> None:
        rows = slice(i % 300, i % 300 + 1 + i % 3)
        with httpclient.InferenceServerClient(digits_server.url) as c:
            inp = httpclient.InferInput("input", list(x_test[rows].shape), "FP32")
            inp.set_data_from_numpy(x_test[rows])
            result = c.infer("digits", [inp])
        np.testing.assert_allclose(result.as_numpy("probabilities"), probs[rows], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(result.as_numpy("label"), labels[rows])

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(240)))
    batches = digits_server.metric("mlbuild_batch_size_count") - before
    assert 1 <= batches <= 240


def test_metrics(digits_server: ServerProcess) -> None:
    # a request the HTTP layer refuses itself (a bad Content-Length) is counted too
    with socket.create_connection(("127.0.0.1", digits_server.port), timeout=10) as conn:
        conn.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
        assert conn.recv(65536).startswith(b"HTTP/1.1 400 ")
    status, headers, body = digits_server.request("GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'mlbuild_requests_total{method="POST",route="/v2/models/{name}/infer",status="200"}' in text
    assert 'mlbuild_request_duration_seconds_bucket{le="0.005",route="/v2/models/{name}/infer"}' in text
    assert "mlbuild_batch_size_bucket" in text and "mlbuild_requests_in_flight 0.0" in text  # the scrape is not counted
    assert 'mlbuild_model_info{code_hash="' in text and 'model="digits"' in text
    assert "mlbuild_model_load_seconds" in text and "mlbuild_model_ready 1.0" in text
    assert "_created" not in text
    assert 'mlbuild_requests_total{method="other",route="unparsed",status="400"} 1.0' in text


def test_an_oversize_body_gets_its_413_in_urllib(digits_server: ServerProcess) -> None:
    """urllib sends ``Connection: close`` and its whole body before reading: the server answered
    the 413 from Content-Length and closed with the body unread, and the kernel's reset reached
    the client first ("connection reset by peer")."""
    body = b" " * (9 << 20)   # over the default 8 MiB
    req = urllib.request.Request(f"http://{digits_server.url}/v2/models/digits/infer", data=body,
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 413 and b"over the server's limit" in refused.value.read()
