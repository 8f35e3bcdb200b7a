"""uvicorn's httptools protocol, writing each response's head and body in one ``write``.

An ASGI app sends a response as two messages (``http.response.start``, then the body), and
uvicorn writes each to the socket at once: two ``send`` system calls and, with ``TCP_NODELAY``
(which keep-alive needs, or every response waits ~40 ms for a delayed ACK), two TCP segments per
response. Profiled under 32 keep-alive clients, those two writes were a fifth of the event loop's
time. This protocol holds the head back and writes it together with the first body chunk, so a
ordinary response costs one system call and one segment.

How: each request's ``RequestResponseCycle`` gets a thin transport wrapper (``_HeldHead``) that
keeps the first write made after the response started (the status line and headers; uvicorn sets
``response_started`` just before writing them) and prepends it to the next write. It writes what it
holds before closing the connection and when the response completes without another write (a
``HEAD`` response, or a body-less one). Writes before the response starts (``100 Continue``) pass
straight through.

It leans on three names inside uvicorn (``HttpToolsProtocol._start_asgi_task``, and a cycle's
``transport``, ``response_started`` and ``on_response``), all of the uvicorn version the toolchain
locks. ``protocol_class()`` checks they are there and falls back to uvicorn's own protocol if not.

The same protocol bounds what one client can hold, which uvicorn's httptools protocol does not:

- a request's line and headers at most ``MAX_HEAD`` bytes (a 431; 195 MB of headers got a 200
  and kept the memory);
- a request that stalls: no bytes of its line, headers or body for ``request_timeout`` seconds
  (a 408; a connection that sent nothing, or half a body, was held for ever, and 20,000 of them
  used up the server's file descriptors);
- a request the HTTP parser refuses (a bad Content-Length, a bad chunk) gets a JSON 400 like every
  other error, not uvicorn's text/plain one.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

__all__ = ["protocol_class", "MAX_HEAD", "REQUEST_TIMEOUT"]

_JOIN_LIMIT = 64 * 1024
#: The most bytes of a request line and headers (URL, names and values) a request may have.
MAX_HEAD = 64 * 1024
#: Seconds a request may go without sending its next bytes (line, headers or body).
REQUEST_TIMEOUT = 30.0


class _HeadTooLarge(Exception):
    """Raised in a parser callback, once the 431 is written: the parser stops there."""


def _json_close(transport: Any, status: int, reason: str, message: str) -> None:
    """Answer ``status`` with the server's JSON error body and close the connection."""
    body = json.dumps({"error": message}).encode()
    transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                    b"connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body))
    transport.close()


class _HeldHead:
    """A cycle's transport that joins the response head with the write after it."""

    __slots__ = ("_transport", "_cycle", "_held", "_head_seen")

    def __init__(self, transport: asyncio.Transport, cycle: Any) -> None:
        self._transport, self._cycle = transport, cycle
        self._held: bytes | None = None
        self._head_seen = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if len(data) <= _JOIN_LIMIT:
                self._transport.write(b"".join((held, data)))
            else:  # a big body: two writes cost less than copying it
                self._transport.write(held)
                self._transport.write(data)
        elif not self._head_seen and self._cycle.response_started:
            self._head_seen = True
            self._held = bytes(data)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, ...
        return getattr(self._transport, name)


def _wrap(cycle: Any) -> None:
    held = _HeldHead(cycle.transport, cycle)
    cycle.transport = held
    on_response: Callable[[], None] = cycle.on_response

    def completed() -> None:
        held.flush()
        on_response()

    cycle.on_response = completed


def protocol_class(request_timeout: float = REQUEST_TIMEOUT) -> type[asyncio.Protocol] | str:
    """The one-write protocol class, or ``"auto"`` (uvicorn's choice) where httptools or the
    internals it relies on are missing."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
    except ImportError:  # no httptools: uvicorn's h11 protocol, as it is
        return "auto"
    if not hasattr(HttpToolsProtocol, "_start_asgi_task") or not hasattr(RequestResponseCycle, "send"):
        return "auto"

    sweep_every = min(1.0, request_timeout / 4)
    sweeping: dict[int, bool] = {}   # id(loop) -> its sweep is scheduled

    class OneWriteProtocol(HttpToolsProtocol):
        _head_bytes = 0     # bytes received while this request's head is incomplete
        _in_head = True     # a request's line and headers are still coming
        _waiting = False    # between a connection's start or a request's first bytes and its last
        _since = 0.0        # when this connection last received bytes (loop.time())

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            if hasattr(cycle, "transport") and hasattr(cycle, "on_response"):
                _wrap(cycle)
            super()._start_asgi_task(cycle, app)

        # -- a stalled request: a 408 once no bytes came for request_timeout seconds ----------
        # A timer per request cost ~8% of the digits server's throughput (one armed and cancelled
        # for every read); instead a read only notes the time, and one sweep a loop checks the
        # connections waiting for a request's bytes, a few times per timeout.
        def _sweep(self) -> None:
            now = self.loop.time()
            for conn in list(self.connections):
                # Not where the server itself stopped reading: a request queued behind one still being
                # answered (pipelining), or a body the app has not consumed yet (flow control).
                if (isinstance(conn, OneWriteProtocol) and conn._waiting and now - conn._since >= request_timeout
                        and not conn.pipeline and not conn.flow.read_paused):
                    conn._stalled()
            try:
                self.loop.call_later(sweep_every, self._sweep)
            except RuntimeError:   # the loop is closing
                pass

        def _stalled(self) -> None:
            self._waiting = False
            if self.transport.is_closing():
                return
            if self.cycle is not None and self.cycle.response_started:
                self.transport.close()
                return
            _json_close(self.transport, 408, "Request Timeout",
                        f"no bytes of the request came for {request_timeout:g} s; send the whole request at once")

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._waiting, self._since = True, self.loop.time()   # a connection that sends nothing at all
            if not sweeping.get(id(self.loop)):
                sweeping[id(self.loop)] = True
                self.loop.call_later(sweep_every, self._sweep)

        # -- the size of a request's line and headers: a 431 past MAX_HEAD -------------------
        # Counted per read, not per header (a Python call for each header, on the hot path): the
        # bytes that came while a request's head was incomplete (a read that completes it may
        # carry body bytes too; it is not counted against the head).
        def data_received(self, data: bytes) -> None:
            self._since = self.loop.time()
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._in_head and self._head_bytes > MAX_HEAD and not self.transport.is_closing():
                self._head_too_large()   # still incomplete, and over the limit already

        def _head_too_large(self) -> None:
            self._waiting = False
            _json_close(self.transport, 431, "Request Header Fields Too Large",
                        f"the request line and headers exceed {MAX_HEAD // 1024} KiB; send a shorter URL "
                        "and fewer or shorter headers")

        def on_message_begin(self) -> None:
            self._waiting = True
            super().on_message_begin()

        def on_response_complete(self) -> None:
            # a pipelined request waited for this one (reading was paused): its clock starts now
            self._since = self.loop.time()
            super().on_response_complete()

        def on_headers_complete(self) -> None:
            self._in_head = False
            # a whole head in one read (with some body, maybe): measured only when the read was big
            if self._head_bytes > MAX_HEAD and len(self.url) + sum(
                    len(n) + len(v) + 4 for n, v in self.headers) > MAX_HEAD:
                self._head_too_large()
                raise _HeadTooLarge()   # stops the parser: no request starts
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._waiting, self._in_head, self._head_bytes = False, True, 0
            super().on_message_complete()

        def send_400_response(self, msg: str) -> None:   # what the HTTP parser refuses
            self._waiting = False
            if self.transport.is_closing():   # answered already (a 431)
                return
            _json_close(self.transport, 400, "Bad Request",
                        "invalid HTTP request: its request line, headers or chunked body could not be parsed "
                        "(a bad Content-Length, a malformed header or chunk)")

    return OneWriteProtocol
