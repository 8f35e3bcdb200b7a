"""mlbuild.runtime.serve.protocol: OIP v2 JSON and binary tensors, validation, the v1 route."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.http import InferInput, InferRequestedOutput, InferResult
from tritonclient.http._utils import _get_inference_request

from mlbuild.runtime.serve.package import Package, TensorSpec
from mlbuild.runtime.serve.protocol import (InferCodec, InferRequest, ModelOutputError, ProtocolError, decode_infer,
                                            decode_predict, encode_infer, encode_predict)


def _pkg(datatype: str = "FP32", shape: tuple[int, ...] = (-1, 4)) -> Package:
    return Package(root=Path("/nonexistent"), name="m", hashes={}, module="model", params={}, task="classification",
                   labels=("a", "b", "c"), inputs=(TensorSpec("input", datatype, shape),),
                   outputs=(TensorSpec("probabilities", "FP32", (-1, 3)), TensorSpec("label", "INT64", (-1,))))


PKG = _pkg()


def _triton(x: np.ndarray, datatype: str = "FP32", binary: bool = True,
            outputs: list[InferRequestedOutput] | None = None) -> tuple[bytes, str | None]:
    """A request body exactly as tritonclient.http builds it."""
    inp = InferInput("input", list(x.shape), datatype)
    inp.set_data_from_numpy(x, binary_data=binary)
    body, json_size = _get_inference_request(inputs=[inp], request_id="", outputs=outputs, sequence_id=0,
                                             sequence_start=False, sequence_end=False, priority=0, timeout=None,
                                             custom_parameters=None)
    return (body if isinstance(body, bytes) else body.encode()), (None if json_size is None else str(json_size))


def _json_body(data: Any, shape: Any = (2, 4), datatype: str = "FP32", **extra: Any) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "datatype": datatype, "shape": list(shape), "data": data}],
                       **extra}).encode()


def _error(body: bytes, header: str | None = None, pkg: Package = PKG) -> ProtocolError:
    with pytest.raises(ProtocolError) as err:
        decode_infer(pkg, body, header)
    assert 400 <= err.value.status < 500
    return err.value


@pytest.mark.parametrize("binary", [True, False])
def test_decode_what_tritonclient_sends(binary: bool) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    req = decode_infer(PKG, *_triton(x, binary=binary))
    np.testing.assert_array_equal(req.array, x)
    assert req.array.dtype == np.float32 and req.array.flags.writeable
    assert req.outputs == [("probabilities", True), ("label", True)]  # no outputs named: binary_data_output
    req = decode_infer(PKG, *_triton(x, outputs=[InferRequestedOutput("label", binary_data=False)]))
    assert req.outputs == [("label", False)]


def test_json_data_may_be_nested_and_ints() -> None:
    req = decode_infer(PKG, _json_body([[1, 2, 3, 4], [5, 6, 7, 8.5]]), None)
    assert req.array.dtype == np.float32 and req.array.shape == (2, 4) and req.array[1, 3] == 8.5
    assert req.outputs == [("probabilities", False), ("label", False)] and req.id is None


def test_null_parameters_are_none() -> None:
    """A Go client's nil map (no omitempty) or an optional field left unset sends "parameters": null,
    on the request, an input or an output; it was refused ("parameters must be an object") while a
    null id or outputs was taken as none."""
    body = json.dumps({"id": None, "parameters": None, "outputs": [{"name": "label", "parameters": None}],
                       "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0, 1, 2, 3],
                                   "parameters": None}]}).encode()
    req = decode_infer(PKG, body, None)
    assert req.array.tolist() == [[0, 1, 2, 3]] and req.outputs == [("label", False)]
    # a null parameter is unset too (a struct of pointers): it was refused as shared memory, or
    # "must be true or false"
    body = json.dumps({"parameters": {"binary_data_output": None},
                       "outputs": [{"name": "label", "parameters": {"binary_data": None, "classification": None}}],
                       "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0, 1, 2, 3],
                                   "parameters": {"binary_data_size": None, "shared_memory_region": None,
                                                  "shared_memory_byte_size": None}}]}).encode()
    req = decode_infer(PKG, body, None)
    assert req.array.tolist() == [[0, 1, 2, 3]] and req.outputs == [("label", False)]
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    triton, n = _triton(x)
    head = json.loads(triton[:int(n or 0)])
    head["parameters"] = None
    raw = json.dumps(head).encode()
    assert InferCodec(PKG).decode(raw + triton[int(n or 0):], str(len(raw))).outputs == [
        ("probabilities", False), ("label", False)]


@pytest.mark.parametrize(("body", "message"), [
    (b"{", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[" * 100_000, "not valid JSON: nested too deeply"),
    (b"[]", "must be a JSON object, got an array"),
    (b"null", "must be a JSON object, got null"),   # was "got NoneType": Python's name, not JSON's
    (_json_body([0.0] * 8, id=True), "id must be a string, got a boolean"),
    (_json_body([0.0] * 8, parameters="x"), "parameters must be an object, got a string"),
    (b"{}", "inputs must be a non-empty list"),
    (_json_body([0.0] * 8, datatype="FP64"), 'datatype "FP64", the model expects FP32'),
    (_json_body([0.0] * 8, shape=(2, 5)), "does not match the model's [-1, 4]"),
    (_json_body([0.0] * 8, shape=(0, 4)), "has no rows"),
    (_json_body([0.0] * 8, shape=(2, "4")), "shape must be a list of integers"),
    (_json_body([0.0] * 8, shape=(2, True)), "shape must be a list of integers"),
    (_json_body([0.0] * 7), "7 element(s)"),
    (_json_body([0.0] * 7 + ["x"]), "not numbers"),
    (_json_body([0.0] * 7 + [True]), "true/false"),
    (_json_body([0.0] * 7 + [None]), "not numbers"),
    (_json_body([0.0] * 7 + [10**400]), "data holds a number beyond FP32's range"),
    (_json_body([[0.0] * 4, [0.0] * 3]), "not a regular array"),
    (_json_body([0.0] * 7 + [1e39]), "NaN or infinity"),
    (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 4], "data": [NaN, 0,0,0,0,0,0,0]}]}',
     "NaN or infinity"),
    (_json_body([0.0] * 8, id=3), "id must be a string, got a number"),
    (_json_body([0.0] * 8, parameters=[]), "parameters must be an object"),
    (_json_body([0.0] * 8, parameters={"binary_data_output": "yes"}), "binary_data_output"),
    (_json_body([0.0] * 8, outputs=[{"name": "x"}]), "unknown output 'x'"),
    (_json_body([0.0] * 8, outputs=[{"name": "label"}, {"name": "label"}]), "requested twice"),
    (_json_body([0.0] * 8, outputs=[]), "outputs is empty"),
    (_json_body([0.0] * 8, outputs=[{"name": "label", "parameters": {"classification": 2}}]), "classification"),
    (_json_body([0.0] * 8, outputs=[{"name": "label", "parameters": {"binary_data": 1}}]), "true or false"),
    (json.dumps({"inputs": [{"name": "other", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4}]}).encode(),
     "unknown input 'other'"),
    (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4]}]}).encode(), "no data"),
    (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4}] * 2}).encode(),
     "given twice"),
    (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4,
                             "parameters": {"binary_data_size": 16}}]}).encode(), "no Inference-Header"),
])
def test_bad_json_requests(body: bytes, message: str) -> None:
    assert message in _error(body).message


def test_binary_sizes_are_checked() -> None:
    x = np.ones((2, 4), dtype=np.float32)
    body, header = _triton(x)
    assert header is not None
    n = int(header)
    assert "not a size" in _error(body, "abc").message
    assert "not a size" in _error(body, "\u00b2").message
    assert "not a size" in _error(body, str(len(body) + 1)).message
    assert "not claimed" in _error(body + b"x", header).message
    assert "ends after" in _error(body[:-1], header).message
    head = json.loads(body[:n])
    head["inputs"][0]["parameters"]["binary_data_size"] = 31
    bad = json.dumps(head).encode()
    assert "needs 32 bytes" in _error(bad + body[n:], str(len(bad))).message
    nan = x.copy()
    nan[1, 2] = np.inf
    assert "NaN or infinity" in _error(*_triton(nan)).message


@pytest.mark.parametrize(("datatype", "data", "ok"), [
    ("INT32", [1, 2, 3, 2**31 - 1], True),
    ("INT32", [1, 2, 3, 2**31], False),
    ("INT32", [1.0, 2, 3, 4], False),
    ("UINT8", [0, 1, 255, 3], True),
    ("UINT8", [0, -1, 2, 3], False),
    ("BOOL", [True, False, True, True], True),
    ("BOOL", [1, 0, 1, 1], False),
    ("FP16", [1.0, 2, 3, 70000.0], False),
    ("UINT64", [0, 2**64 - 1, 1, 2**63], True),   # numpy alone reads these as float64
    ("UINT64", [[2**63, 2**63 + 1], [2, 3]], True),
    ("UINT64", [0, 2**64, 1, 2], False),
    ("INT64", [-1, 2**63, 0, 1], False),
])
def test_other_datatypes(datatype: str, data: list[Any], ok: bool) -> None:
    pkg = _pkg(datatype)
    body = _json_body(data, shape=(1, 4), datatype=datatype)
    if ok:
        arr = decode_infer(pkg, body, None).array
        assert arr.dtype == np.dtype(pkg.input.dtype) and arr.ravel().tolist() == np.asarray(data, dtype=object).ravel().tolist()
    else:
        _error(body, pkg=pkg)


def test_integers_beyond_int64_are_integers_not_floats() -> None:
    """numpy reads [0, 2**64 - 1] as float64: a UINT64 request of such values was refused as floats
    ("write whole numbers as 1, not 1.0"), and a value out of an integer type's range was named so
    only when numpy happened to read it as an integer."""
    pkg = _pkg("UINT64")
    big = [0, 2**64 - 1, 2**63, 7]
    assert decode_infer(pkg, _json_body(big, shape=(1, 4), datatype="UINT64"), None).array.tolist() == [big]
    assert decode_predict(pkg, json.dumps({"instances": [big]}).encode()).array.tolist() == [big]
    for datatype, data in (("UINT64", [0, 2**64, 1, 2]), ("INT64", [-1, 2**63, 0, 1]), ("INT64", [2**64, 0, 0, 0])):
        err = _error(_json_body(data, shape=(1, 4), datatype=datatype), pkg=_pkg(datatype))
        assert err.message == f"input 'input': values out of range for {datatype}"
    err = _error(_json_body([2**64, 0.5, 0, 0], shape=(1, 4), datatype="UINT64"), pkg=pkg)
    assert "needs integers" in err.message
    err = _error(_json_body([], shape=(1, 0), datatype="UINT64"), pkg=_pkg("UINT64", (-1, -1)))
    assert err.message == "input 'input': data is empty; datatype UINT64 needs integers"


def test_json_integers_beyond_uint64_are_numbers() -> None:
    """JavaScript and Go write a float 1e20 as 100000000000000000000, which numpy reads (beside
    other values) as a Python object: an FP32 request holding it was refused as "not numbers", and
    a boolean or a fraction beside such an integer was named "not numbers" too, for any datatype."""
    req = decode_infer(PKG, _json_body([0.5] * 7 + [10**20], shape=(2, 4)), None)
    assert req.array.dtype == np.float32 and req.array[1, 3] == np.float32(1e20)
    assert decode_predict(PKG, json.dumps({"instances": [[0.5, 1, 2, 10**30]]}).encode()).array[0, 3] == np.float32(1e30)
    assert "NaN or infinity" in _error(_json_body([0.5] * 7 + [10**39], shape=(2, 4))).message   # beyond FP32
    for datatype in ("INT8", "INT64", "UINT64", "FP64"):
        needs = "numbers" if datatype == "FP64" else "integers"
        for data in ([2**64, True, 0, 0], [0, 2**64 - 1, 0, True]):
            err = _error(_json_body(data, shape=(1, 4), datatype=datatype), pkg=_pkg(datatype))
            assert err.message == f"input 'input': data holds true/false; datatype {datatype} needs {needs}"
    err = _error(_json_body([2**64, 0.5, 0, 0], shape=(1, 4), datatype="INT8"), pkg=_pkg("INT8"))
    assert err.message == ("input 'input': data is of kind float64; datatype INT8 needs integers "
                           "(write whole numbers as 1, not 1.0)")


def test_bad_values_are_named_as_the_client_wrote_them() -> None:
    """A client writes JSON: a bad datatype, shape or binary_data_size was shown as Python's repr
    ("datatype None", "got [2, None]", "got '16'"), and a missing datatype as "datatype None"."""
    def message(**item: Any) -> str:
        entry = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4, **item}
        return _error(json.dumps({"inputs": [{k: v for k, v in entry.items() if v is not ...}]}).encode()).message

    assert message(datatype=None) == "input 'input': datatype null, the model expects FP32"
    assert message(datatype=...) == "input 'input': no datatype, the model expects FP32"
    assert message(shape=[1, None]) == "input 'input': shape must be a list of integers, got [1, null]"
    assert message(shape="1,4") == 'input \'input\': shape must be a list of integers, got "1,4"'
    assert message(shape=...) == ("input 'input': no shape; give its sizes, rows first (the model's: [-1, 4], "
                                  "-1 meaning any size)")
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                                   "parameters": {"binary_data_size": "16"}}]}).encode()
    assert _error(head + bytes(16), str(len(head))).message == (
        'input \'input\': binary_data_size must be a non-negative integer, got "16"')


def test_binary_bool_bytes_are_0_or_1() -> None:
    pkg = _pkg("BOOL")
    head = json.dumps({"inputs": [{"name": "input", "datatype": "BOOL", "shape": [1, 4],
                                   "parameters": {"binary_data_size": 4}}]}).encode()
    assert decode_infer(pkg, head + b"\x00\x01\x01\x00", str(len(head))).array.tolist() == [[False, True, True, False]]
    assert "0 or 1" in _error(head + b"\x00\x02\x01\x00", str(len(head)), pkg=pkg).message


def _result(pkg: Package, req: InferRequest, rows: int) -> tuple[InferResult, dict[str, np.ndarray]]:
    results = {"probabilities": np.random.default_rng(rows).random((rows, 3), dtype=np.float32),
               "label": np.arange(rows, dtype=np.int64) % 3}
    body, header = encode_infer(pkg, req, results)
    return InferResult.from_response_body(body, header_length=header), results


@pytest.mark.parametrize("binary", [True, False])
def test_responses_decode_with_tritonclient(binary: bool) -> None:
    req = InferRequest("r1", np.zeros((5, 4), np.float32), [("probabilities", binary), ("label", binary)])
    result, results = _result(PKG, req, 5)
    for name, arr in results.items():
        out = result.as_numpy(name)
        np.testing.assert_array_equal(out.reshape(arr.shape), arr)
        assert out.dtype == arr.dtype
    response = result.get_response()
    assert response["id"] == "r1" and response["model_name"] == "m"
    assert response["outputs"][0]["shape"] == [5, 3]


def test_only_the_requested_outputs() -> None:
    req = InferRequest(None, np.zeros((2, 4), np.float32), [("label", False)])
    body, header = encode_infer(PKG, req, {"probabilities": np.zeros((2, 3), np.float32),
                                           "label": np.array([1, 2])})
    assert header is None and json.loads(body) == {
        "model_name": "m", "model_version": "1",
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 2]}]}


@settings(max_examples=200, deadline=None)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6).map(
    lambda s: (s[0], 4)), elements=st.floats(width=32, allow_nan=False, allow_infinity=False)), binary=st.booleans())
def test_round_trip(x: np.ndarray, binary: bool) -> None:
    req = decode_infer(PKG, *_triton(x, binary=binary))
    np.testing.assert_array_equal(req.array, x)
    result, results = _result(PKG, req, len(x))
    np.testing.assert_array_equal(result.as_numpy("label").reshape(-1), results["label"])


def test_predict() -> None:
    req = decode_predict(PKG, json.dumps({"instances": [[0, 1, 2, 3], [4, 5, 6, 7]]}).encode())
    assert req.array.dtype == np.float32 and req.array.shape == (2, 4) and req.id is None
    assert decode_predict(PKG, json.dumps({"id": "q-1", "instances": [[0, 1, 2, 3]]}).encode()).id == "q-1"
    body = encode_predict(PKG, {"probabilities": np.array([[0.1, 0.2, 0.7]], dtype=np.float32),
                                "label": np.array([2])}, "q-1")
    assert json.loads(body)["id"] == "q-1"
    prediction = json.loads(body)["predictions"][0]
    assert prediction["label"] == 2 and prediction["class"] == "c"
    assert math.isclose(prediction["probabilities"][2], 0.7, rel_tol=1e-6)


@pytest.mark.parametrize("body", [
    b"[]", b'{"rows": []}', b'{"instances": []}', b'{"instances": [[1, 2, 3]]}', b'{"instances": [[1, 2], [3]]}',
    b'{"instances": [["a", "b", "c", "d"]]}', b'{"instances": [[NaN, 1, 2, 3]]}', b'{"instances": 3}',
    b'{"id": 3, "instances": [[1, 2, 3, 4]]}', b'{"id": "%s", "instances": [[1, 2, 3, 4]]}' % (b"x" * 257),
])
def test_bad_predict(body: bytes) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_predict(PKG, body)
    assert err.value.status == 400


@pytest.mark.parametrize(("body", "message"), [
    (b'{"instance": [[1, 2, 3, 4]]}', 'request has no "instances" (its keys: "instance"); send {"instances": [[...], ...]}'),
    (b'{}', 'request has no "instances" (its keys: none)'),
    (b'{"instances": [1, 2, 3, 4]}', "instances must be a list of rows, each a list (4 values for this model); for one "
                                     "row send [[...]], not [...]"),
])
def test_a_near_miss_predict_request_is_told_the_fix(body: bytes, message: str) -> None:
    """{"instance": ...} was told to be a JSON object, which it was; a bare row got a shape
    mismatch of [4] against [-1, 4], with no word of the wrapping list."""
    with pytest.raises(ProtocolError) as err:
        decode_predict(PKG, body)
    assert err.value.status == 400 and message in str(err.value)


def _same_request(a: InferRequest, b: InferRequest) -> None:
    assert (a.id, a.outputs, a.array.dtype, a.array.shape) == (b.id, b.outputs, b.array.dtype, b.array.shape)
    np.testing.assert_array_equal(a.array, b.array)
    assert a.array.flags.writeable and b.array.flags.writeable


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(hnp.arrays(np.float32, (4,), elements=st.floats(-1e6, 1e6, width=32)), min_size=1, max_size=5),
       request_id=st.one_of(st.none(), st.text(max_size=8)), binary_out=st.booleans(), seen=st.booleans())
def test_codec_gives_what_the_plain_functions_give(rows: list[np.ndarray], request_id: str | None, binary_out: bool,
                                                   seen: bool) -> None:
    codec = InferCodec(PKG)
    x = np.stack(rows)
    outputs = [InferRequestedOutput("probabilities", binary_data=binary_out), InferRequestedOutput("label")]
    body, header = _triton(x, outputs=outputs)
    if request_id is not None:  # an id in the JSON header, as tritonclient's request_id= puts it
        head = json.loads(body[:int(header or 0)])
        head["id"] = request_id
        raw = json.dumps(head).encode()
        body, header = raw + body[int(header or 0):], str(len(raw))
    if seen:
        codec.decode(body, header)  # the second decode below comes from the cache
    req = codec.decode(body, header)
    _same_request(req, decode_infer(PKG, body, header))
    results = {"probabilities": np.abs(x[:, :3]) / 7, "label": np.arange(len(x), dtype=np.int64)}
    for assigned in (request_id, "server-1", 'quote"\\ \u00e9'):
        req.id = assigned
        if seen:
            codec.encode(req, results)
        assert codec.encode(req, results) == encode_infer(PKG, req, results)


def test_codec_checks_every_request_in_full() -> None:
    codec = InferCodec(PKG)
    x = np.ones((2, 4), np.float32)
    body, header = _triton(x)
    assert header is not None
    codec.decode(body, header)  # now remembered
    n = int(header)
    nan = body[:n] + np.array([[1, 2, 3, np.nan], [1, 1, 1, 1]], np.float32).tobytes()
    with pytest.raises(ProtocolError, match="NaN"):
        codec.decode(nan, header)
    with pytest.raises(ProtocolError, match="binary data ends after 28 of 32 bytes"):
        codec.decode(body[:-4], header)
    with pytest.raises(ProtocolError, match="not claimed"):
        codec.decode(body + b"xxxx", header)
    with pytest.raises(ProtocolError, match="Inference-Header-Content-Length"):
        codec.decode(body, str(len(body) + 1))
    second = codec.decode(body, header)
    second.array[0, 0] = 5  # each request gets its own writable array
    assert codec.decode(body, header).array[0, 0] == 1

    bools = _pkg("BOOL")
    codec = InferCodec(bools)
    body, header = _triton(np.array([[True, False, True, True]]), datatype="BOOL")
    codec.decode(body, header)
    bad = body[:-1] + b"\x02"
    with pytest.raises(ProtocolError, match="0 or 1"):
        codec.decode(bad, header)


def test_codec_cache_stays_bounded() -> None:
    codec = InferCodec(PKG, limit=4)
    x = np.ones((1, 4), np.float32)
    for i in range(10):
        head = json.dumps({"id": f"r{i}", "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                                                      "parameters": {"binary_data_size": 16}}]}).encode()
        assert codec.decode(head + x.tobytes(), str(len(head))).id == f"r{i}"
        assert len(codec._requests) <= 4
    # a header padded to megabytes is decoded, not kept: 256 of them held ~2 GiB
    codec = InferCodec(PKG)
    head = json.dumps({"pad": "p" * 1_000_000, "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                                                           "parameters": {"binary_data_size": 16}}]}).encode()
    assert codec.decode(head + x.tobytes(), str(len(head))).array.shape == (1, 4)
    assert not codec._requests


def test_request_ids_are_length_limited() -> None:
    """An id is remembered (for feedback) and echoed: 100 ids of 4 MB took 400 MB of memory."""
    x = np.ones((1, 4), np.float32)
    assert decode_infer(PKG, _json_body(x.tolist(), shape=(1, 4), id="i" * 256), None).id == "i" * 256
    message = _error(_json_body(x.tolist(), shape=(1, 4), id="i" * 4_000_000)).message
    assert "4000000 characters" in message and "256" in message and len(message) < 300
    body, header = _triton(x)
    assert header is not None
    head = json.loads(body[:int(header)])
    head["id"] = "i" * 257
    raw = json.dumps(head).encode()
    for codec in (None, InferCodec(PKG)):
        with pytest.raises(ProtocolError, match="257 characters"):
            (codec.decode if codec else lambda b, h: decode_infer(PKG, b, h))(raw + body[int(header):], str(len(raw)))
    with pytest.raises(ProtocolError, match="257 characters"):
        decode_predict(PKG, json.dumps({"id": "i" * 257, "instances": x.tolist()}).encode())


def test_rows_of_different_lengths_are_named_with_the_fix() -> None:
    """Token ids of a model taking rows of any length ([-1, -1]), two rows of 3 and 2 ids in one
    request: "instances is not a regular array of numbers", which did not say what was irregular."""
    ids = _pkg("INT64", (-1, -1))
    with pytest.raises(ProtocolError, match=re.escape(
            "instances is not a regular array of numbers: its rows differ in length (row 0 has 3 values, row 1 has "
            "2); the rows of one request must be one length: pad them to one length, or send rows of each length in "
            "a request of their own")):
        decode_predict(ids, json.dumps({"instances": [[1, 2, 3], [4, 5]]}).encode())
    message = _error(_json_body([[1, 2, 3], [4, 5]], shape=(2, 3), datatype="INT64"), pkg=ids).message
    assert message.startswith("input 'input': data is not a regular array of numbers: its rows differ in length "
                              "(row 0 has 3 values, row 1 has 2)"), message
    assert _error(_json_body([[0.0] * 4, [0.0] * 3])).message.endswith(
        "the rows of one request must be one length: the model takes rows of shape [4]")
    assert decode_predict(ids, json.dumps({"instances": [[1, 2, 3], [4, 5, 6]]}).encode()).array.shape == (2, 3)


def test_minus_one_is_not_a_request_dimension() -> None:
    message = _error(_json_body([0.0] * 8, shape=(-1, 4))).message
    assert "-1 is not a size" in message and "actual row count" in message, message


def test_a_binary_body_without_its_header_length_is_named() -> None:
    body, header = _triton(np.arange(8, dtype=np.float32).reshape(2, 4))
    assert header is not None
    message = _error(body).message
    assert "Inference-Header-Content-Length" in message and f"{len(body) - int(header)} byte" in message, message
    assert "5 byte(s) follow its JSON object" in _error(b'{"inputs": []} junk').message
    assert "Inference-Header" not in _error(b'{"inputs": [}').message


def test_nan_outputs_are_a_model_error_not_invalid_json() -> None:
    """Bare NaN tokens are not JSON (JSON.parse rejects them): a model output holding NaN or
    infinity cannot be sent as JSON; binary outputs carry it as IEEE floats."""
    results = {"probabilities": np.array([[0.5, np.nan, 0.5]], np.float32), "label": np.array([0])}
    for binary in (False, True):
        req = InferRequest("r", np.zeros((1, 4), np.float32), [("probabilities", binary), ("label", False)])
        for encode in (lambda: encode_infer(PKG, req, results), lambda: InferCodec(PKG).encode(req, results)):
            if binary:
                body, length = encode()
                assert np.isnan(InferResult.from_response_body(body, header_length=length)
                                .as_numpy("probabilities")).any()
            else:
                with pytest.raises(ModelOutputError, match="'probabilities' holds NaN or infinity"):
                    encode()
    with pytest.raises(ModelOutputError, match="'probabilities' holds NaN or infinity"):
        encode_predict(PKG, {"probabilities": np.array([[np.inf, 0, 0]], np.float32), "label": np.array([0])}, "r")


def test_the_input_guard_without_reference_statistics_refuses_only_overflow() -> None:
    """Without the training data's scale a feature may be in the millions (prices): only a row
    that huge whose outputs overflowed is refused."""
    from mlbuild.runtime.serve.protocol import InputGuard

    guard = InputGuard(None)
    x = np.array([[2e7, 1.0], [3e38, -3e38], [1.0, 1.0]], np.float32)
    fine = {"y": np.ones((3, 2), np.float32)}
    assert not guard.suspect(x, fine)
    guard.check(x, fine)
    nan = {"y": np.array([[1.0, 1.0], [np.nan, 1.0], [np.nan, 0.0]], np.float32)}
    assert guard.suspect(x, nan)
    with pytest.raises(ProtocolError, match=r"^input row\(s\) 1 hold values far beyond"):
        guard.check(x, nan)   # row 2's NaN comes from ordinary values: the model's own, not refused here
    with_scale = InputGuard(np.array([1.0, 1.0]))
    assert with_scale.suspect(x, fine)
    with pytest.raises(ProtocolError, match=r"^input row\(s\) 0, 1 hold values far beyond"):
        with_scale.check(x, fine)


def test_floats_for_an_integer_input_say_how_to_write_them() -> None:
    """A float array's .tolist() sends 1.0 for a token id: the message says what to send instead."""
    err = _error(_json_body([1.0, 2, 3, 0, 0, 0, 0, 0], datatype="INT64"), pkg=_pkg("INT64"))
    assert err.message == ("input 'input': data is of kind float64; datatype INT64 needs integers "
                           "(write whole numbers as 1, not 1.0)")
