"""The infer route as a bare ASGI endpoint, and the request-body and error handling it shares with
the Starlette routes of ``app``.

Measured with py-spy under 32 keep-alive clients of a small model: Starlette's middleware stack,
router, ``Request`` and ``Response`` objects were about a third of the event loop's time per
infer request. ``InferEndpoint`` answers ``POST /v2/models/{name}[/versions/{version}]/infer``
in front of them, with the same errors (4xx with a JSON body) and the same metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from typing import TYPE_CHECKING, AsyncIterator, Mapping

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from .batching import BatcherClosed
from .names import PROBE_HEADER
from .protocol import ModelOutputError, ProtocolError, error_body

if TYPE_CHECKING:
    from .app import ServerState

__all__ = ["INFER_ROUTES", "InferEndpoint", "infer_route", "read_body", "failure"]

log = logging.getLogger("mlbuild.serve")

_MEDIA_TYPES = {"", "application/json", "application/octet-stream", "text/plain", "application/x-www-form-urlencoded"}


#: What a client refused for its body's size can do about it (the 413's message ends with it).
TOO_LARGE_FIX = ("send fewer rows per request (binary tensors take ~4 bytes a value, JSON ~20), or serve with "
                 "a higher limit (mlbuild.toml [models.NAME.serve] max_body_bytes, or bin/serve --max-body-bytes)")


def _body_encoding(headers: Mapping[str, str], limit: int) -> str:
    """The body's Content-Encoding, once its media type, encoding and declared size are checked."""
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in _MEDIA_TYPES:
        raise ProtocolError(415, f"Content-Type {media!r:.100} is not supported; send application/json "
                                 "(binary tensors: application/octet-stream with Inference-Header-Content-Length)")
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise ProtocolError(415, f"Content-Encoding {encoding!r:.50} is not supported; use gzip, deflate or none")
    length = headers.get("content-length", "")
    if length.isascii() and length.isdigit() and int(length) > limit:
        raise ProtocolError(413, f"request body of {length} bytes is over the server's limit of {limit} bytes; "
                                 f"{TOO_LARGE_FIX}")
    return encoding


async def _gather(stream: AsyncIterator[bytes], limit: int, first: bytes = b"") -> bytes:
    """``first`` and the rest of a body from ``stream``, size-limited."""
    chunks = [first]
    total = len(first)
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise ProtocolError(413, f"request body is over the server's limit of {limit} bytes; "
                                     f"{TOO_LARGE_FIX}")
        chunks.append(chunk)
    return b"".join(chunks)


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding == "identity":
        return body
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise ProtocolError(400, f"request body is not valid {encoding} data: {e}") from None
    if len(out) > limit:
        raise ProtocolError(413, f"decompressed request body is over the server's limit of {limit} bytes; "
                                 f"{TOO_LARGE_FIX}")
    if not inflater.eof:
        raise ProtocolError(400, f"request body is truncated {encoding} data")
    return out


async def read_body(headers: Mapping[str, str], stream: AsyncIterator[bytes], limit: int) -> bytes:
    """A request body from ``stream``: media type and encoding checked, size-limited, inflated."""
    encoding = _body_encoding(headers, limit)
    return _inflate(await _gather(stream, limit), encoding, limit)


async def receive_body(headers: Mapping[str, str], receive: Receive, limit: int) -> bytes:
    """``read_body`` from an ASGI ``receive``. A body that came in one message (the usual case) is
    taken as it is: the async iterator and the join of ``read_body`` were ~2 us of the event
    loop's ~45 us of app time per infer request (digits, 32 clients)."""
    encoding = _body_encoding(headers, limit)
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnect()
    body: bytes = message.get("body", b"")
    if len(body) > limit:
        raise ProtocolError(413, f"request body is over the server's limit of {limit} bytes; "
                                 f"{TOO_LARGE_FIX}")
    if message.get("more_body", False):
        body = await _gather(_receive_body(receive), limit, body)
    return _inflate(body, encoding, limit)


def failure(exc: Exception, method: str, path: str) -> tuple[int, bytes]:
    """The status and JSON error body answering a request that raised ``exc``."""
    if isinstance(exc, ProtocolError):
        return exc.status, error_body(exc.message)
    if isinstance(exc, BatcherClosed):
        return 503, error_body(str(exc))
    if isinstance(exc, ClientDisconnect):
        return 400, error_body("the client disconnected before sending the whole body")
    if isinstance(exc, ModelOutputError):  # the model's outputs, not the server: no traceback
        log.error("%s %s failed: %s", method, path[:200], exc)
        return 500, error_body(str(exc))
    # the model (user code) or a bug: log it, answer, keep serving
    log.error("%s %s failed", method, path[:200], exc_info=exc)
    what = "inference" if path.endswith(("/infer", ":predict")) else f"{method} {path[:200]}"
    return 500, error_body(f"{what} failed: {type(exc).__name__}: {str(exc)[:500]}")


#: The error of a request uvicorn cancels once the graceful shutdown timeout ran out.
SHUTDOWN_CUT = "the server shut down before this request finished (its graceful shutdown timeout ran out); send it again"

INFER_ROUTES = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")


def infer_route(scope: Scope) -> tuple[str, str | None] | None:
    """(name, version) when ``scope`` is a POST to an infer route (as Starlette would match it)."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    parts = scope["path"].split("/")
    if parts[-1] != "infer" or parts[1:3] != ["v2", "models"] or not parts[3]:
        return None
    if len(parts) == 5:
        return parts[3], None
    if len(parts) == 7 and parts[4] == "versions" and parts[5]:
        return parts[3], parts[5]
    return None


async def _receive_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


class InferEndpoint:
    """``POST /v2/models/{name}[/versions/{version}]/infer``: the hot path, as a bare ASGI app.

    ``app.create_app`` sends these requests here before Starlette's middleware, router, ``Request``
    and ``Response`` objects (and does the metrics middleware's work itself): under 32 clients of
    a small model, those layers were about a third of the event loop's time per request. Other
    methods on these paths still go through Starlette (405 with a JSON error).
    """

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = infer_route(scope)
        assert route is not None, "only POSTs to the infer routes come here"
        await self.answer(scope, receive, send, route)

    async def answer(self, scope: Scope, receive: Receive, send: Send, route: tuple[str, str | None]) -> None:
        """Answer a request whose ``infer_route`` is ``route`` (the dispatcher has matched it)."""
        metrics = self.state.metrics
        started = time.perf_counter()
        status = 500
        metrics.in_flight_now += 1
        try:
            try:
                content, headers = await self._infer(scope, receive, *route)
                status = 200
            except Exception as e:
                status, content = failure(e, "POST", scope["path"])
                headers = [(b"content-type", b"application/json")]
            except asyncio.CancelledError:
                if not self.state.draining:
                    raise
                # uvicorn cancels what is left once the graceful timeout runs out (a body still
                # arriving, say): a JSON 503 rather than its text/plain 500 and traceback.
                status, content = 503, error_body(SHUTDOWN_CUT)
                headers = [(b"content-type", b"application/json")]
            headers.append((b"content-length", b"%d" % len(content)))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})
        finally:
            metrics.in_flight_now -= 1
            metrics.observe_request(INFER_ROUTES[route[1] is not None], "POST", status,
                                    time.perf_counter() - started)

    async def _infer(self, scope: Scope, receive: Receive, name: str,
                     version: str | None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        state = self.state
        state.check_model(name, version)
        batcher = state.require_batcher()
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:  # the first of repeated headers, as Starlette's get()
            headers.setdefault(key.decode("latin-1"), value.decode("latin-1"))
        batcher.arriving(1)
        submitted = False
        try:
            body = await receive_body(headers, receive, state.pkg.settings.max_body_bytes)
            req = state.codec.decode(body, headers.get("inference-header-content-length"))
            submitted = True
            results = await batcher.submit(req.array, arrived=True)
        finally:
            if not submitted:
                batcher.arriving(-1)
        # Every response carries an id (the client's, or one assigned here): feedback refers to it.
        # Observed once encoded: a response that cannot be sent (NaN as JSON) leaves no trace.
        req.id = request_id = state.live.request_id(req.id)
        content, header_length = state.codec.encode(req, results)
        if PROBE_HEADER not in headers:
            state.live.observe_response(request_id, req.array, results)
        if header_length is None:
            return content, [(b"content-type", b"application/json")]
        return content, [(b"content-type", b"application/octet-stream"),
                         (b"inference-header-content-length", b"%d" % header_length)]
