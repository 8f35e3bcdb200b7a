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
  used up the server's file descriptors), or whose line and headers have not all come
  ``request_timeout`` seconds after their first byte (a 408, as nginx's ``client_header_timeout``:
  a client trickling a byte of headers every 29 s held its connection for days);
- a request the HTTP parser refuses (a bad Content-Length, a bad chunk) gets a JSON 400 like every
  other error, not uvicorn's text/plain one, as does one asking to upgrade (h2c) with a body,
  which the parser would hand to the app empty;
- pipelined requests: at most one read of them waits to be answered (uvicorn read on after every
  answer, and a client that never read its answers filled the server's memory).

And it closes a connection as a client can read: a response that starts before its request's
body has all come (a 413 answered from ``Content-Length`` alone) closes the connection after it,
keep-alive or not (``connection: close``); a connection closed while its client is still sending
(that 413; a 431; a 400 from the parser) is half-closed after the answer, and what
the client still sends is read and dropped until it stops (its FIN) or for ``LINGER`` seconds at
most, as nginx's ``lingering_close`` does. Closed at once, the unread bytes made the kernel answer
with a TCP reset, and a client that sends its whole body before reading (``urllib``,
``http.client``) got "connection reset by peer" instead of the 413.
"""

from __future__ import annotations

import asyncio
import json
import socket
import weakref
from typing import Any, Callable

__all__ = ["protocol_class", "MAX_HEAD", "REQUEST_TIMEOUT", "LINGER"]

_JOIN_LIMIT = 64 * 1024
#: The most bytes of a request line and headers (URL, names and values) a request may have.
MAX_HEAD = 64 * 1024
#: Seconds a request may go without sending its next bytes (line, headers or body).
REQUEST_TIMEOUT = 30.0
#: Seconds at most a connection closed mid-request goes on reading (and dropping) the client's bytes.
LINGER = 5.0
#: The most waiting connections one accepted connection takes in after it (see ``_accept_waiting``).
ACCEPT_BATCH = 256


class _Answered(Exception):
    """Raised in a parser callback once the protocol answered the request itself (a 431, a 400 for
    an upgrade with a body): the parser stops there and no request starts."""


def _json_error(transport: Any, status: int, reason: str, message: str) -> None:
    """Answer ``status`` with the server's JSON error body (the caller closes the connection)."""
    body = json.dumps({"error": message}).encode()
    transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                    b"connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body))


class _HeldHead:
    """A cycle's transport that joins the response head with the write after it.

    It refers to its cycle weakly: the cycle refers to it (its ``transport``), and a strong
    reference back made every request's cycle (its scope, headers, body, event) a reference cycle
    that only the garbage collector freed: ~5 us of collections per request under 32 clients."""

    __slots__ = ("_transport", "_cycle_ref", "_held", "_head_seen", "_linger")

    def __init__(self, transport: asyncio.Transport, cycle: Any, linger: Callable[[], None]) -> None:
        self._transport, self._cycle_ref, self._linger = transport, weakref.ref(cycle), linger
        self._held: bytes | None = None
        self._head_seen = False

    @property
    def _cycle(self) -> Any:
        return self._cycle_ref()

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
            cycle = self._cycle
            if cycle.more_body and cycle.keep_alive:
                # Answered before the client sent all its body (a 413 from Content-Length alone): the
                # connection closes after it (lingering), rather than stay open while uvicorn reads
                # and drops any amount of body (15 GB in 8 s, held for as long as the client sent).
                cycle.keep_alive = False
                data = bytes(data)[:-2] + b"connection: close\r\n\r\n"
            self._held = bytes(data)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        cycle = self._cycle   # None once the cycle is gone (only it closes through this wrapper)
        if cycle is not None and cycle.more_body:   # the client is still sending this request's body
            self._linger()
        else:
            self._transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, ...
        return getattr(self._transport, name)


def _wrap(cycle: Any, linger: Callable[[], None]) -> None:
    held = _HeldHead(cycle.transport, cycle, linger)
    cycle.transport = held
    on_response: Callable[[], None] = cycle.on_response

    def completed() -> None:   # refers to the held head, not the cycle (see _HeldHead)
        held.flush()
        on_response()

    cycle.on_response = completed


def protocol_class(request_timeout: float = REQUEST_TIMEOUT, linger: float = LINGER,
                   refused: Callable[[int], None] = lambda status: None,
                   listener: socket.socket | None = None) -> type[asyncio.Protocol] | str:
    """The one-write protocol class, or ``"auto"`` (uvicorn's choice) where httptools or the
    internals it relies on are missing. ``refused(status)`` is called for each request the protocol
    answers itself (400, 408, 431): the app never sees those, so its metrics would not count them.
    ``listener``: the socket the server listens on, whose waiting connections each new connection
    accepts at once (the loop's own accept takes one per iteration)."""
    try:
        import httptools
        from uvicorn.protocols.http.flow_control import FlowControl
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
    except ImportError:  # no httptools: uvicorn's h11 protocol, as it is
        return "auto"

    class PipelineFlow(FlowControl):
        """Reading stays paused while pipelined requests wait: uvicorn resumed it after every answer
        and every body read, parsing a whole read of requests into the pipeline to answer one, so a
        client that pipelined without reading its answers grew it without bound (the digits server
        took 600 MB of requests in 20 s and reached 3.2 GB, one connection)."""

        def __init__(self, transport: asyncio.Transport, pipeline: Any) -> None:
            super().__init__(transport)
            self.pipeline = pipeline

        def resume_reading(self) -> None:
            if not self.pipeline:   # else: once the last waiting request has started
                super().resume_reading()
    if not all(hasattr(HttpToolsProtocol, name) for name in (
            "_start_asgi_task", "_unset_keepalive_if_required", "_should_upgrade", "handle_websocket_upgrade")) \
            or not hasattr(RequestResponseCycle, "send"):
        return "auto"

    sweep_every = min(1.0, request_timeout / 4)
    sweeping: dict[int, bool] = {}   # id(loop) -> its sweep is scheduled
    accepting: set[asyncio.Task[Any]] = set()   # connections being handed to the loop (a task needs a reference)
    if listener is not None:
        listener.setblocking(False)   # as the loop has it: accept() says when none is waiting

    class OneWriteProtocol(HttpToolsProtocol):
        _head_bytes = 0     # bytes received while this request's head is incomplete
        _in_head = True     # a request's line and headers are still coming
        _waiting = False    # between a connection's start or a request's first bytes and its last
        _since = 0.0        # when this connection last received bytes (loop.time())
        _head_since = 0.0   # when this request's head began (its first byte, or the connection)
        _linger_until = 0.0  # > 0: answered and half-closed; the client's bytes are dropped until then
        _refusal: Callable[[], None] | None = None   # a refusal waiting for the answers before it

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            if hasattr(cycle, "transport") and hasattr(cycle, "on_response") and hasattr(cycle, "more_body"):
                _wrap(cycle, self._linger)
            super()._start_asgi_task(cycle, app)

        # -- a stalled request: a 408 once no bytes came for request_timeout seconds ----------
        # A timer per request cost ~8% of the digits server's throughput (one armed and cancelled
        # for every read); instead a read only notes the time, and one sweep a loop checks the
        # connections waiting for a request's bytes, a few times per timeout.
        def _sweep(self) -> None:
            now = self.loop.time()
            for conn in list(self.connections):
                if not isinstance(conn, OneWriteProtocol):
                    continue
                if conn._linger_until:   # lingering (not waiting for a request): closed once its time is up
                    if now >= conn._linger_until:
                        conn.transport.close()
                # Not where the server itself stopped reading: a request queued behind one still being
                # answered (pipelining), or a body the app has not consumed yet (flow control); nor a
                # request whose head began while the one before it is still being answered (its clocks
                # start with that answer; a 408 then took that answer's place).
                elif (conn._waiting and not conn.pipeline and not conn.flow.read_paused
                        and not (conn._in_head and conn.cycle is not None and not conn.cycle.response_complete)
                        and (now - conn._since >= request_timeout
                             or conn._in_head and now - conn._head_since >= request_timeout)):
                    conn._stalled()
            try:
                self.loop.call_later(sweep_every, self._sweep)
            except RuntimeError:   # the loop is closing
                pass

        def _stalled(self) -> None:
            self._waiting = False
            if self.transport.is_closing():
                return
            if self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete:
                self.transport.close()   # mid-answer: no room for a 408 (the cycle of a request before
                return                   # this one, answered already, leaves room for it)
            refused(408)
            if self.loop.time() - self._since >= request_timeout:
                message = f"no bytes of the request came for {request_timeout:g} s"
            else:
                message = f"the request line and headers did not all come within {request_timeout:g} s"
            _json_error(self.transport, 408, "Request Timeout", f"{message}; send the whole request at once")
            self.transport.close()   # a stalled client is not sending: nothing to linger for

        # -- closing while the client still sends: half-close, drop its bytes, then close --------
        def _linger(self) -> None:
            self._waiting = False
            if self._linger_until or self.transport.is_closing():
                return
            if not self.transport.can_write_eof():
                self.transport.close()
                return
            self.transport.write_eof()   # the answer, then FIN: the client reads it, then EOF
            self._linger_until = self.loop.time() + min(linger, request_timeout)

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.flow = PipelineFlow(transport, self.pipeline)
            self._waiting = True   # a connection that sends nothing at all
            self._since = self._head_since = self.loop.time()
            if not sweeping.get(id(self.loop)):
                sweeping[id(self.loop)] = True
                self.loop.call_later(sweep_every, self._sweep)
            if listener is not None:
                if listener.fileno() < 0:   # taken in as the server stopped (it closes the listener first): its
                    self.shutdown()         # shutdown passed this connection by, and would wait for it to go idle
                    return
                self._accept_waiting()

        # -- a connection surge: take in every waiting connection, not one per loop iteration --
        def _accept_waiting(self) -> None:
            assert listener is not None
            for _ in range(ACCEPT_BATCH):
                try:
                    conn, _ = listener.accept()
                except OSError:   # none waiting (EAGAIN); the listener closed (shutdown); out of files
                    return
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # as the loop sets it on its own
                task = self.loop.create_task(self._hand_over(conn))
                accepting.add(task)
                task.add_done_callback(accepting.discard)

        async def _hand_over(self, conn: socket.socket) -> None:
            """Serve ``conn`` as the loop serves the connections it accepts itself."""
            protocol = type(self)(config=self.config, server_state=self.server_state,
                                  app_state=self.app_state, _loop=self.loop)
            try:
                await self.loop.connect_accepted_socket(lambda: protocol, conn)
            except OSError:   # the client is gone already
                conn.close()

        # -- the size of a request's line and headers: a 431 past MAX_HEAD -------------------
        # Counted per read, not per header (a Python call for each header, on the hot path): the
        # bytes that came while a request's head was incomplete (a read that completes it may
        # carry body bytes too; it is not counted against the head).
        def data_received(self, data: bytes) -> None:
            if self._linger_until or self._refusal:   # closing: drop it (the client's FIN, or the sweep, closes)
                return
            self._since = self.loop.time()
            if self._in_head:
                self._head_bytes += len(data)
            self._feed(data)
            if (self._in_head and self._head_bytes > MAX_HEAD and not self._linger_until and not self._refusal
                    and not self.transport.is_closing()):
                self._head_too_large()   # still incomplete, and over the limit already (and not answered)

        def _feed(self, data: bytes) -> None:
            """uvicorn's data_received, but for the bytes after a request asking to upgrade (h2c, or a
            websocket with no websocket library), answered as plain HTTP: httptools stops at its
            head, and uvicorn dropped the rest of the read, so a request pipelined behind it was
            never answered (the client waited for it until the keep-alive timeout)."""
            self._unset_keepalive_if_required()
            while data:
                try:
                    self.parser.feed_data(data)
                    return
                except httptools.HttpParserError:
                    self.logger.warning("Invalid HTTP request received.")
                    self.send_400_response("Invalid HTTP request received.")
                    return
                except httptools.HttpParserUpgrade as upgrade:
                    if self._should_upgrade():   # a websocket library is installed: uvicorn's websocket protocol
                        self.handle_websocket_upgrade()
                        return
                    # not switching (no 101 was sent): what follows is HTTP/1.1 again (RFC 9110 7.8)
                    data = data[upgrade.args[0]:] if upgrade.args and isinstance(upgrade.args[0], int) else b""

        def _refuse(self, status: int, reason: str, message: str) -> None:
            """Answer a request the protocol refuses itself (a JSON error, then linger and close),
            once the requests before it on this connection are answered: pipelined, a refusal
            written at once took the place of the answer still being made (the client read the 400
            as its earlier request's answer, and that answer was lost)."""
            self._waiting = False
            refused(status)

            def answer() -> None:
                if not self.transport.is_closing():
                    _json_error(self.transport, status, reason, message)
                    self._linger()
            cycle = self.cycle   # the request before this one, all read (not this one, whose body failed)
            if cycle is not None and not cycle.more_body and not cycle.response_complete:
                self._refusal = answer   # on_response_complete answers it
            else:
                answer()

        def _head_too_large(self) -> None:
            self._refuse(431, "Request Header Fields Too Large",
                         f"the request line and headers exceed {MAX_HEAD // 1024} KiB; send a shorter URL "
                         "and fewer or shorter headers")

        def on_message_begin(self) -> None:
            self._waiting, self._head_since = True, self.loop.time()
            super().on_message_begin()

        def on_response_complete(self) -> None:
            # a pipelined request waited for this one (reading was paused): its clocks start now
            self._since = self._head_since = self.loop.time()
            super().on_response_complete()
            refusal = self._refusal
            if refusal is not None and (self.cycle is None or self.cycle.response_complete):
                self._refusal = None   # the requests before it are answered (pipelined ones too)
                refusal()

        def on_headers_complete(self) -> None:
            self._in_head = False
            # a whole head in one read (with some body, maybe): measured only when the read was big
            if self._head_bytes > MAX_HEAD and len(self.url) + sum(
                    len(n) + len(v) + 4 for n, v in self.headers) > MAX_HEAD:
                self._head_too_large()
                raise _Answered()   # stops the parser: no request starts
            if self.parser.should_upgrade() and any(
                    n == b"transfer-encoding" or (n == b"content-length" and v.strip() not in (b"", b"0"))
                    for n, v in self.headers):
                self._upgrade_with_body()
                raise _Answered()
            super().on_headers_complete()

        # -- an Upgrade (h2c: `curl --http2`) with a body: httptools takes the bytes after the head
        # as the new protocol's, so the app read an empty body ("request is not valid JSON") and
        # the body was then parsed as the next request. This server does not switch protocols.
        def _upgrade_with_body(self) -> None:
            upgrade = next((v for n, v in self.headers if n == b"upgrade"), b"").decode("latin-1")
            self._refuse(400, "Bad Request",
                         f"the request asks to switch to {upgrade[:50]!r} (its Upgrade header), which this server "
                         "does not speak, so its body cannot be read; send it as plain HTTP/1.1, without "
                         "Upgrade and Connection: Upgrade (curl: --http1.1, not --http2)")

        def on_message_complete(self) -> None:
            self._waiting, self._in_head, self._head_bytes = False, True, 0
            super().on_message_complete()

        def send_400_response(self, msg: str) -> None:   # what the HTTP parser refuses
            self._waiting = False
            if self._linger_until or self._refusal or self.transport.is_closing():   # answered already (a 431)
                return
            self._refuse(400, "Bad Request",
                         "invalid HTTP request: its request line, headers or chunked body could not be parsed "
                         "(a bad Content-Length, a malformed header or chunk)")

    return OneWriteProtocol
