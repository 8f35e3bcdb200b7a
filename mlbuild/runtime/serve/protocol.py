"""Open Inference Protocol v2 requests and responses: JSON tensors, Triton's binary extension, v1.

Decoding validates everything a client controls (JSON shape, names, datatypes, shapes, element
counts, binary sizes, finiteness) and raises ``ProtocolError`` with an HTTP status and a message
naming the bad value; nothing a client sends may surface as another exception.

A request may carry an ``id`` (a string of at most ``MAX_ID_LENGTH`` characters: the server
remembers recent ids for feedback and echoes them back). Outputs are sent as JSON only when every
value is finite: bare ``NaN``/``Infinity`` tokens are not JSON, so a model output holding them
raises ``ModelOutputError`` (a 500: the model's fault), unless it is sent as binary data.

Binary extension (as ``tritonclient.http`` sends it): the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw little-endian input tensors, in
input order, each sized by its ``parameters.binary_data_size``. Outputs requested with
``parameters.binary_data`` (or all outputs, with request ``parameters.binary_data_output``) are
returned the same way.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .package import DATATYPES, MODEL_VERSION, Package, ServeError, TensorSpec

__all__ = [
    "ProtocolError",
    "ModelOutputError",
    "InputGuard",
    "MAX_ID_LENGTH",
    "InferRequest",
    "InferCodec",
    "decode_infer",
    "encode_infer",
    "decode_predict",
    "encode_predict",
    "error_body",
]

_INT_BOUNDS: dict[str, tuple[int, int]] = {
    k: (int(np.iinfo(DATATYPES[k]).min), int(np.iinfo(DATATYPES[k]).max))
    for k in ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")}

#: The longest request id accepted (as common request-id limits); the server remembers and echoes ids.
MAX_ID_LENGTH = 256


class ProtocolError(ServeError):
    """A request the server refuses: ``status`` (4xx) and a message naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message
        super().__init__(message)


class ModelOutputError(ServeError):
    """The model's outputs cannot be sent as asked (NaN or infinity as JSON): answered with 500."""


@dataclass
class InferRequest:
    """A decoded, validated inference request: the input rows and the outputs to send back."""

    id: str | None
    array: np.ndarray
    outputs: list[tuple[str, bool]]  # (output name, as binary)


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def _bad(message: str) -> ProtocolError:
    return ProtocolError(400, message)


def _loads(data: bytes | memoryview, what: str, binary_hint: bool = False) -> Any:
    try:
        return json.loads(bytes(data))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        tail = _after_json(bytes(data)) if binary_hint else 0
        if tail:
            raise _bad(f"{what} is not valid JSON: {tail} byte(s) follow its JSON object; binary tensor data "
                       "needs the Inference-Header-Content-Length header (the JSON part's length in bytes)") from None
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:200]
        raise _bad(f"{what} is not valid JSON: {reason}") from None


def _after_json(body: bytes) -> int:
    """How many bytes follow a JSON object at the start of ``body`` (0: none, or no such object):
    what a binary-tensor request sent without its header length looks like. (Latin-1 maps each
    byte to one character, so offsets are byte offsets.)"""
    text = body.decode("latin-1")
    start = len(text) - len(text.lstrip())
    try:
        obj, end = json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError):
        return 0
    return len(body) - end if isinstance(obj, dict) and body[end:].strip() else 0


def _json_type(value: Any) -> str:
    """What JSON calls ``value``'s type (a client wrote JSON: null, not NoneType; a string, not str)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return "a string" if isinstance(value, str) else "a number"


def _json_value(value: Any, limit: int) -> str:
    """``value`` as the client wrote it (JSON: null, true, "x"; not Python's None, True, 'x'), cut at ``limit``."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_id(request_id: Any) -> str | None:
    if request_id is not None and not isinstance(request_id, str):
        raise _bad(f"id must be a string, got {_json_type(request_id)}")
    if request_id is not None and len(request_id) > MAX_ID_LENGTH:
        raise _bad(f"id is {len(request_id)} characters long; the limit is {MAX_ID_LENGTH}: send a shorter id")
    return request_id


def _parameters(item: dict[str, Any], where: str) -> dict[str, Any]:
    """``item``'s parameters object, without its null entries; a JSON null, as a client with a nil
    map or an unset optional field sends it, is none (as a null ``id`` or ``outputs`` is), in the
    object as for it ({"binary_data_size": null, "shared_memory_region": null} beside JSON data,
    from a struct of pointers: it was refused as shared memory)."""
    params = item.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise _bad(f"{where}parameters must be an object, got {_json_type(params)}")
    return params if None not in params.values() else {k: v for k, v in params.items() if v is not None}


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_shape(spec: TensorSpec, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise _bad(f"input {spec.name!r}: shape must be a list of integers, got {_json_value(shape, 200)}")
    if len(shape) == len(spec.shape) and any(d < 0 for d in shape):
        raise _bad(f"input {spec.name!r}: shape {shape}: {min(shape)} is not a size; a request gives its actual "
                   f"row count and sizes (the model's {list(spec.shape)}: -1 there means any size)")
    if len(shape) != len(spec.shape) or any(want != -1 and want != got for want, got in zip(spec.shape, shape)):
        raise _bad(f"input {spec.name!r}: shape {shape} does not match the model's {list(spec.shape)}")
    if shape[0] < 1:
        raise _bad(f"input {spec.name!r}: shape {shape} has no rows")
    return tuple(shape)


def _has_bool(data: Any) -> bool:
    """Whether a regular nested list (numpy accepted it) holds a JSON boolean."""
    if type(data) is bool:
        return True
    if type(data) is not list or not data:
        return False
    if type(data[0]) is list:
        return any(_has_bool(row) for row in data)
    return bool in set(map(type, data))


def _leaf_types(data: Any) -> set[type]:
    """The types of the values in a nested list (int, float, bool, str, NoneType, dict)."""
    if type(data) is not list:
        return {type(data)}
    types = set(map(type, data))
    if list in types:
        types.discard(list)
        for row in data:
            if type(row) is list:
                types |= _leaf_types(row)
    return types


def accepted_kinds(datatype: str) -> tuple[str, str]:
    """The numpy kinds a request's values may have for ``datatype`` (they are cast to it), and
    what to call them: booleans for BOOL, integers for the integer types, numbers for the rest."""
    if datatype == "BOOL":
        return "b", "booleans"
    return ("iu", "integers") if datatype in _INT_BOUNDS else ("iuf", "numbers")


def _ragged(rows: Any, spec: TensorSpec) -> str:
    """Why nested ``rows`` are no array, where their rows differ in length (token ids of a model
    taking rows of any length, ``[-1, -1]``): numpy said only that they are not regular."""
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        return ""
    first = len(rows[0]) if rows else 0
    other = next((i for i, r in enumerate(rows) if len(r) != first), None)
    if other is None:
        return ""
    fix = ("pad them to one length, or send rows of each length in a request of their own"
           if -1 in spec.shape[1:] else f"the model takes rows of shape {list(spec.shape[1:])}")
    return (f": its rows differ in length (row 0 has {first} values, row {other} has {len(rows[other])}); the rows "
            f"of one request must be one length: {fix}")


def _from_json_data(spec: TensorSpec, data: Any, shape: tuple[int, ...], datatype: str) -> np.ndarray:
    """Convert JSON ``data`` (flat or nested) to an array of ``shape`` and the spec's dtype."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError):
        raise _bad(f"input {spec.name!r}: data is not a regular array of numbers{_ragged(data, spec)}") from None
    kind = arr.dtype.kind
    allowed, needs = accepted_kinds(datatype)
    if kind != "b" and allowed != "b" and _has_bool(data):  # numpy would silently read true/false as 1/0
        raise _bad(f"input {spec.name!r}: data holds true/false; datatype {datatype} needs {needs}")
    if arr.size and allowed != "b" and (kind == "O" or kind == "f" and allowed == "iu"):
        # numpy reads integers beyond INT64 (UINT64's upper half) beside smaller or negative ones
        # as floats, and beyond UINT64 as objects, even beside floats (JavaScript and Go write 1e20
        # as 100000000000000000000): take the numbers JSON gave
        types = _leaf_types(data)
        if allowed == "iu" and types == {int}:   # the range check below names what is out of range
            arr, kind = np.asarray(data, dtype=object), "i"
        elif kind == "O" and types <= {int, float}:
            try:
                arr, kind = np.asarray(data, dtype=np.float64), "f"
            except OverflowError:   # an integer beyond float64's range
                raise _bad(f"input {spec.name!r}: data holds a number beyond {datatype}'s range") from None
    if kind not in allowed or arr.size != math.prod(shape):
        if kind not in allowed:
            what = "empty" if arr.size == 0 else "not numbers" if kind not in "biuf" else f"of kind {arr.dtype}"
            # a float array's .tolist() sends 1.0 for 1: JSON integers have no fraction
            hint = " (write whole numbers as 1, not 1.0)" if allowed == "iu" and kind == "f" and arr.size else ""
            raise _bad(f"input {spec.name!r}: data is {what}; datatype {datatype} needs {needs}{hint}")
        raise _bad(f"input {spec.name!r}: data has {arr.size} element(s), shape {list(shape)} needs {math.prod(shape)}")
    if datatype in _INT_BOUNDS and arr.size:
        lo, hi = _INT_BOUNDS[datatype]
        if int(arr.min()) < lo or int(arr.max()) > hi:
            raise _bad(f"input {spec.name!r}: values out of range for {datatype}")
    with np.errstate(all="ignore"):
        return arr.reshape(shape).astype(spec.dtype, copy=False)


def _decode_input(spec: TensorSpec, item: dict[str, Any], binary: memoryview, offset: int,
                  has_binary: bool) -> tuple[np.ndarray, int]:
    datatype = item.get("datatype")
    if datatype != spec.datatype:
        given = f"datatype {_json_value(datatype, 50)}" if "datatype" in item else "no datatype"
        raise _bad(f"input {spec.name!r}: {given}, the model expects {spec.datatype}")
    if "shape" not in item:
        raise _bad(f"input {spec.name!r}: no shape; give its sizes, rows first (the model's: {list(spec.shape)}, "
                   "-1 meaning any size)")
    shape = _check_shape(spec, item["shape"])
    params = _parameters(item, f"input {spec.name!r}: ")
    for unsupported in ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"):
        if unsupported in params:
            raise _bad(f"input {spec.name!r}: shared memory is not supported")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not has_binary:
            raise _bad(f"input {spec.name!r}: binary_data_size given, but no Inference-Header-Content-Length header")
        if not _is_int(size) or size < 0:
            raise _bad(f"input {spec.name!r}: binary_data_size must be a non-negative integer, "
                       f"got {_json_value(size, 50)}")
        if "data" in item:
            raise _bad(f"input {spec.name!r}: both data and binary_data_size given")
        itemsize = np.dtype(spec.dtype).itemsize
        need = math.prod(shape) * itemsize
        if size != need:
            raise _bad(f"input {spec.name!r}: binary_data_size is {size}, shape {list(shape)} of "
                       f"{spec.datatype} needs {need} bytes")
        if offset + size > len(binary):
            raise _bad(f"input {spec.name!r}: binary data ends after {len(binary) - offset} of {size} bytes")
        return _binary_array(spec, binary[offset:offset + size], shape), offset + size
    if "data" not in item:
        raise _bad(f"input {spec.name!r}: no data (give data, or parameters.binary_data_size)")
    return _from_json_data(spec, item["data"], shape, spec.datatype), offset


def _binary_array(spec: TensorSpec, data: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    # A writable copy: the body's buffer is read-only, and torch.from_numpy wants writable arrays.
    arr = np.frombuffer(data, dtype=spec.dtype).reshape(shape).copy()
    if spec.datatype == "BOOL" and arr.size and int(arr.view(np.uint8).max()) > 1:
        raise _bad(f"input {spec.name!r}: BOOL bytes must be 0 or 1")
    return arr


def _check_finite(spec: TensorSpec, arr: np.ndarray) -> None:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise _bad(f"input {spec.name!r}: contains NaN or infinity (or a number beyond {spec.datatype}'s range, "
                   f"which becomes infinity)")


def _requested_outputs(pkg: Package, raw: Any, default_binary: bool) -> list[tuple[str, bool]]:
    if raw is None:
        return [(spec.name, default_binary) for spec in pkg.outputs]
    if not isinstance(raw, list):
        raise _bad("outputs must be a list")
    result: list[tuple[str, bool]] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _bad("each requested output must be an object with a string name")
        name = item["name"]
        if pkg.output(name) is None:
            raise _bad(f"unknown output {name!r:.100}; the model has {[s.name for s in pkg.outputs]}")
        if any(name == n for n, _ in result):
            raise _bad(f"output {name!r} requested twice")
        params = _parameters(item, f"output {name!r}: ")
        if params.get("classification") not in (None, 0):
            raise _bad(f"output {name!r}: the classification extension is not supported; "
                       "read the probabilities and label outputs")
        if "shared_memory_region" in params:
            raise _bad(f"output {name!r}: shared memory is not supported")
        binary = params.get("binary_data", default_binary)
        if not isinstance(binary, bool):
            raise _bad(f"output {name!r}: binary_data must be true or false")
        result.append((name, binary))
    if not result:
        raise _bad("outputs is empty; omit it to get every output")
    return result


def decode_infer(pkg: Package, body: bytes, header_length: str | None) -> InferRequest:
    """Decode and validate a ``POST /v2/models/{name}/infer`` body."""
    return _decode_infer(pkg, body, header_length)[0]


def _decode_infer(pkg: Package, body: bytes, header_length: str | None) -> tuple[InferRequest, bool]:
    """The request, and whether its input came as binary data (its JSON header then holds no values)."""
    view = memoryview(body)
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
            raise _bad(f"Inference-Header-Content-Length {header_length!r:.30} is not a size within "
                       f"the {len(body)}-byte body")
        n = int(header_length)
        header, binary = view[:n], view[n:]
    else:
        header, binary = view, view[:0]
    req = _loads(header, "request", binary_hint=header_length is None)
    if not isinstance(req, dict):
        raise _bad(f"request must be a JSON object, got {_json_type(req)}")
    request_id = _check_id(req.get("id"))
    params = _parameters(req, "")
    binary_output = params.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise _bad("parameters.binary_data_output must be true or false")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("inputs must be a non-empty list")
    spec = pkg.input
    found: np.ndarray | None = None
    offset = 0
    binary_input = False
    for item in inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _bad("each input must be an object with a string name")
        if item["name"] != spec.name:
            raise _bad(f"unknown input {item['name']!r:.100}; the model has [{spec.name!r}]")
        if found is not None:
            raise _bad(f"input {spec.name!r} given twice")
        found, offset = _decode_input(spec, item, binary, offset, header_length is not None)
        binary_input = offset > 0
    assert found is not None
    if offset != len(binary):
        raise _bad(f"{len(binary) - offset} byte(s) of binary data are not claimed by any input's binary_data_size")
    _check_finite(spec, found)
    outputs = _requested_outputs(pkg, req.get("outputs"), binary_output)
    return InferRequest(request_id, found, outputs), binary_input


def _binary_bytes(spec: TensorSpec, arr: np.ndarray) -> bytes:
    """An output's values as the binary tensor extension sends them (C order, the spec's dtype)."""
    return np.ascontiguousarray(arr, dtype=spec.dtype).tobytes()


def encode_infer(pkg: Package, req: InferRequest, results: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, binary in req.outputs:
        arr = results[name]
        spec = pkg.output(name)
        assert spec is not None
        entry: dict[str, Any] = {"name": name, "datatype": spec.datatype, "shape": list(arr.shape)}
        if binary:
            raw = _binary_bytes(spec, arr)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = arr.ravel().tolist()
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": pkg.name, "model_version": MODEL_VERSION, "outputs": outputs}
    if req.id is not None:
        response["id"] = req.id
    try:
        header = json.dumps(response, allow_nan=False).encode()
    except ValueError:
        raise _nonfinite(results, [name for name, binary in req.outputs if not binary],
                         "or ask for binary outputs (parameters.binary_data), which carry them as IEEE floats") from None
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


#: The largest binary-tensor JSON header InferCodec remembers (a client's is ~200 bytes).
MAX_CACHED_HEADER = 4096


class InferCodec:
    """``decode_infer`` and ``encode_infer`` for one package, remembering binary-tensor headers.

    A client sending binary tensors sends the same JSON header again and again (the values are in
    the binary part; only an ``id`` may change), and gets the same response header back but for
    the id. The codec keeps the validated outcome of each header it has seen (shape, outputs; at
    most ``limit`` of them) and the JSON of each response header without its id, so such a request
    costs a dictionary lookup and a copy of its values instead of parsing and validating JSON:
    ~10 µs of ~100 µs of the event loop's time per request, measured on the digits model. Every
    request is still checked in full: the size of its binary data (any mismatch is decoded from
    scratch, which names the error), BOOL bytes and finiteness. The bytes are the same as the
    uncached functions give (a unit test compares them).
    """

    def __init__(self, pkg: Package, limit: int = 256) -> None:
        self.pkg, self.limit = pkg, limit
        self._requests: dict[bytes, tuple[str | None, tuple[int, ...], int, list[tuple[str, bool]]]] = {}
        self._responses: dict[tuple[Any, ...], bytes] = {}

    def _remember(self, cache: dict[Any, Any], key: Any, value: Any) -> None:
        if len(cache) >= self.limit:
            cache.clear()  # clients with ever-new headers (ids): start over rather than grow
        cache[key] = value

    def decode(self, body: bytes, header_length: str | None) -> InferRequest:
        if header_length is None or not (header_length.isascii() and header_length.isdigit()):
            return decode_infer(self.pkg, body, header_length)
        n = int(header_length)
        header = body[:n]
        plan = self._requests.get(header)
        if plan is None or len(body) - n != plan[2]:
            req, binary_input = _decode_infer(self.pkg, body, header_length)
            if binary_input and n <= MAX_CACHED_HEADER:   # a padded 8 MiB header is not kept (256 of them: 2 GiB)
                self._remember(self._requests, header, (req.id, req.array.shape, len(body) - n, req.outputs))
            return req
        request_id, shape, _, outputs = plan
        spec = self.pkg.input
        arr = _binary_array(spec, memoryview(body)[n:], shape)
        _check_finite(spec, arr)
        return InferRequest(request_id, arr, list(outputs))

    def encode(self, req: InferRequest, results: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
        if not req.outputs or not all(binary for _, binary in req.outputs):
            return encode_infer(self.pkg, req, results)
        arrays = [results[name] for name, _ in req.outputs]
        key = (tuple(req.outputs), *(a.shape for a in arrays))
        prefix = self._responses.get(key)
        if prefix is None:
            header, length = encode_infer(self.pkg, InferRequest(None, req.array, req.outputs), results)
            assert length is not None
            prefix = header[:length - 1]  # without the closing brace: the id goes there
            self._remember(self._responses, key, prefix)
        chunks = [_binary_bytes(self.pkg.output(name), a)  # type: ignore[arg-type]
                  for a, (name, _) in zip(arrays, req.outputs)]
        head = prefix + (b"}" if req.id is None else b', "id": ' + json.dumps(req.id).encode() + b"}")
        return b"".join([head, *chunks]), len(head)


# How far beyond what training saw an input value must be to be refused: a million times the
# training data's scale is a unit error or garbage, not data (3e38 is a valid FP32, and overflows
# the model; 1e20 does not, and still gets a confident, meaningless answer).
OVERFLOW_FACTOR = 1e6


class InputGuard:
    """Refuses (400, naming the rows) requests whose rows the model cannot answer meaningfully.

    With the package's reference statistics (``scale``, per feature: |mean| + std of the training
    data), a row holding a value over ``OVERFLOW_FACTOR`` times its feature's scale is refused,
    whatever the model answers. Without them, only such a row (scale 1) whose outputs are NaN or
    infinite is refused (a feature may legitimately be in the millions). A model's own NaN from
    ordinary values stays the model's fault (a 500 for JSON outputs, from the encoders).
    ``suspect`` is the cheap per-batch test the batcher's worker runs; ``check`` runs per request
    only for a suspect batch."""

    def __init__(self, scale: np.ndarray | None) -> None:
        self.scale = scale

    @classmethod
    def from_reference(cls, reference: Any) -> InputGuard:
        """From the package's reference.json (``mean`` and ``std`` per feature), or None."""
        if not isinstance(reference, dict) or "mean" not in reference or "std" not in reference:
            return cls(None)
        return cls(np.maximum(np.abs(np.asarray(reference["mean"], np.float64))
                              + np.asarray(reference["std"], np.float64), 1.0))

    def _limit(self, flat: np.ndarray) -> np.ndarray | float:
        if self.scale is not None and self.scale.shape == flat.shape[1:]:
            return OVERFLOW_FACTOR * self.scale
        return OVERFLOW_FACTOR

    def suspect(self, array: np.ndarray, results: dict[str, np.ndarray]) -> bool:
        if array.dtype.kind in "fiu" and self.scale is not None:
            flat = array.reshape(array.shape[0], -1)
            if (np.abs(flat) > self._limit(flat)).any():
                return True
        return any(v.dtype.kind in "fc" and not np.isfinite(v).all() for v in results.values())

    def check(self, array: np.ndarray, results: dict[str, np.ndarray]) -> None:
        if array.dtype.kind not in "fiu" or not len(array):
            return
        flat = np.abs(array.reshape(array.shape[0], -1).astype(np.float64))
        extreme = (flat > self._limit(flat)).any(axis=1)
        if self.scale is None:   # only where the outputs overflowed
            bad = np.zeros(len(flat), dtype=bool)
            for arr in results.values():
                if arr.dtype.kind in "fc":
                    bad |= ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
            extreme &= bad
        rows = np.flatnonzero(extreme)
        if not len(rows):
            return
        shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
        raise ProtocolError(400, f"input row(s) {shown} hold values far beyond the data the model was trained on "
                                 f"(up to {float(flat[rows].max()):.3g} in magnitude, over a million times its "
                                 f"scale), so its answer would mean nothing; check the input's units and scale")


def _nonfinite(results: dict[str, np.ndarray], names: list[str], fix: str) -> ModelOutputError:
    """The error for outputs that JSON cannot carry, naming the first output holding NaN or infinity."""
    bad = next((n for n in names if results[n].dtype.kind in "fc" and not np.isfinite(results[n]).all()), "?")
    return ModelOutputError(f"the model's output {bad!r} holds NaN or infinity, which JSON cannot carry; the model "
                            f"is at fault (e.g. trained on data holding NaN): fix the model, {fix}")


def decode_predict(pkg: Package, body: bytes) -> InferRequest:
    """Decode ``POST /v1/models/{name}:predict``: ``{"id": ..., "instances": [row, ...]}`` (``id``
    optional) to the input array; the request asks for every output, as JSON."""
    req = _loads(body, "request")
    if not isinstance(req, dict):
        raise _bad('request must be a JSON object {"instances": [[...], ...]}')
    if "instances" not in req:   # {"instance": ...}: the object is right, its key is not
        keys = ", ".join(json.dumps(k) for k in list(req)[:5]) or "none"
        raise _bad(f'request has no "instances" (its keys: {keys}); send {{"instances": [[...], ...]}}')
    request_id = _check_id(req.get("id"))
    instances = req["instances"]
    spec = pkg.input
    if not isinstance(instances, list) or not instances:
        raise _bad("instances must be a non-empty list of rows")
    if len(spec.shape) > 1 and not isinstance(instances[0], list):   # one bare row: a list of rows holds it
        raise _bad(f"instances must be a list of rows, each a list ({spec.shape[1] if len(spec.shape) == 2 else '...'}"
                   " values for this model); for one row send [[...]], not [...]")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = np.asarray(instances)
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError):
        raise _bad(f"instances is not a regular array of numbers{_ragged(instances, spec)}") from None
    shape = _check_shape(spec, list(probe.shape))
    arr = _from_json_data(spec, instances, shape, spec.datatype)
    _check_finite(spec, arr)
    return InferRequest(request_id, arr, [(s.name, False) for s in pkg.outputs])


def encode_predict(pkg: Package, results: dict[str, np.ndarray], request_id: str) -> bytes:
    """``{"id": ..., "predictions": [{output: value, ..., "class": label name}, ...]}``, one entry per row."""
    rows = next(iter(results.values())).shape[0]
    columns = {name: arr.tolist() for name, arr in results.items()}
    predictions: list[dict[str, Any]] = []
    for i in range(rows):
        row = {name: col[i] for name, col in columns.items()}
        label = row.get("label")
        if pkg.labels is not None and isinstance(label, int) and 0 <= label < len(pkg.labels):
            row["class"] = pkg.labels[label]
        predictions.append(row)
    try:
        return json.dumps({"id": request_id, "predictions": predictions}, allow_nan=False).encode()
    except ValueError:
        raise _nonfinite(results, list(results), "or use the v2 infer route with binary outputs") from None
