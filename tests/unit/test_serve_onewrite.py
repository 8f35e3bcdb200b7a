"""mlbuild.runtime.serve.onewrite: a real uvicorn server whose responses go out in one write each,
and stay correct HTTP for every kind of response (keep-alive, HEAD, 204, streaming, 100-continue,
Connection: close, an app that fails after starting its response)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import threading
import time
from typing import Any, Iterator

import pytest
import uvicorn

from mlbuild.runtime.serve.onewrite import protocol_class


class _Recording:
    """A transport proxy counting the writes that reach the socket."""

    def __init__(self, transport: Any, writes: list[bytes]) -> None:
        self._transport, self._writes = transport, writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/echo":  # reads the whole body (100-continue if the client asks for it)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
    elif path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/stream":  # no content-length: chunked, three chunks
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/big":
        data = b"x" * (256 * 1024)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(data))]})
        await send({"type": "http.response.body", "body": data})
    elif path == "/slow":  # an answer that takes a while (a slow model)
        await asyncio.sleep(1.5)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"slow"})
    elif path == "/busy":  # holds the event loop, as a loaded server's request does (JSON, numpy)
        time.sleep(0.005)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"busy"})
    elif path == "/block":  # holds the event loop for a while (connections pile up in the accept queue)
        time.sleep(0.5)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"block"})
    elif path == "/refuse":  # answers before reading the body (a 413 from Content-Length alone)
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-length", b"7")]})
        await send({"type": "http.response.body", "body": b"refused"})
    elif path == "/broken":  # starts a response, then fails: the client sees the head, then EOF
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        raise RuntimeError("failed after the head")
    else:
        body = b"hello"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[int, list[bytes]]]:
    base = protocol_class()
    assert not isinstance(base, str), "the toolchain's uvicorn has httptools: the one-write protocol applies"
    writes: list[bytes] = []

    class Recorded(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(_Recording(transport, writes))

    with _serving(Recorded) as port:
        yield port, writes


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def _serving(protocol: Any, sock: socket.socket | None = None, run: Any = asyncio.run,
             servers: list[uvicorn.Server] | None = None) -> Iterator[int]:
    """A real uvicorn server of _app with ``protocol`` on ``sock`` (default: a new one), its loop
    run by ``run`` (asyncio's; ``uvloop.run``, the server's), in a thread; yields its port (and
    appends the server to ``servers``, to stop it early)."""
    sock = sock or _listener()
    config = uvicorn.Config(_app, http=protocol, lifespan="off", log_level="critical", server_header=False,
                            timeout_keep_alive=30)
    srv = uvicorn.Server(config)
    if servers is not None:
        servers.append(srv)
    thread = threading.Thread(target=lambda: run(srv.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        srv.should_exit = True
        thread.join(10)


def _request(port: int, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _settled(writes: list[bytes], n: int) -> list[bytes]:
    deadline = time.monotonic() + 5
    while len(writes) < n and time.monotonic() < deadline:
        time.sleep(0.005)
    return list(writes)


def test_keep_alive_responses_go_out_in_one_write_each(server: tuple[int, list[bytes]]) -> None:
    port, writes = server
    writes.clear()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(3):
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert (resp.status, resp.read(), resp.headers["content-type"]) == (200, b"hello", "text/plain")
    conn.close()
    got = _settled(writes, 3)
    assert len(got) == 3, got
    assert all(w.startswith(b"HTTP/1.1 200 OK\r\n") and w.endswith(b"\r\n\r\nhello") for w in got)


def test_bodyless_and_head_responses_are_flushed(server: tuple[int, list[bytes]]) -> None:
    port, writes = server
    assert _request(port, "GET", "/empty") == (204, b"")
    assert _request(port, "HEAD", "/") == (200, b"")  # HEAD: uvicorn writes no body; the head still goes


def test_streamed_and_big_responses(server: tuple[int, list[bytes]]) -> None:
    port, writes = server
    assert _request(port, "GET", "/stream") == (200, b"one two three")
    writes.clear()
    status, body = _request(port, "GET", "/big")
    assert (status, len(body), set(body)) == (200, 256 * 1024, {ord("x")})
    got = _settled(writes, 2)
    assert len(got) == 2 and got[1] == b"x" * (256 * 1024), "a big body is not copied to join the head"


def test_expect_100_continue_is_not_held_back(server: tuple[int, list[bytes]]) -> None:
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(1024).startswith(b"HTTP/1.1 100 Continue"), "the client waits for this before its body"
        s.sendall(b"ping")
        reply = b""
        while not reply.endswith(b"ping"):
            chunk = s.recv(1024)
            assert chunk, reply
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 OK")


def test_connection_close_and_a_failing_app(server: tuple[int, list[bytes]]) -> None:
    port, _ = server
    assert _request(port, "POST", "/echo", b"abc", {"Connection": "close"}) == (200, b"abc")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while chunk := s.recv(1024):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"\r\n\r\n"), reply


def test_pipelined_requests_each_get_their_response(server: tuple[int, list[bytes]]) -> None:
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2 + b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nend")
        reply = b""
        while not reply.endswith(b"end"):
            chunk = s.recv(4096)
            assert chunk, reply
            reply += chunk
    assert reply.count(b"HTTP/1.1 200 OK") == 3 and reply.count(b"\r\n\r\nhello") == 2, reply


@pytest.fixture(scope="module")
def strict() -> Iterator[int]:
    """The protocol with a request timeout of 0.5 s (the server's default is 30 s)."""
    base = protocol_class(request_timeout=0.5)
    assert not isinstance(base, str)
    with _serving(base) as port:
        yield port


def _answer(port: int, *parts: bytes, pause: float = 0.0) -> tuple[bytes, float]:
    """Send ``parts`` (``pause`` seconds apart) and read until the server closes: (answer, seconds)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        for i, part in enumerate(parts):
            if i and pause:
                time.sleep(pause)
            conn.sendall(part)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer, time.monotonic() - started


@pytest.mark.parametrize("sent", [b"", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Le",
                                  b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"])
def test_a_stalled_request_gets_a_json_408(strict: int, sent: bytes) -> None:
    """Nothing sent, half the headers, a tenth of the body: held for ever, and 20,000 such
    connections used up the server's file descriptors."""
    answer, took = _answer(strict, sent)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"application/json" in head, answer
    assert b"no bytes of the request came for 0.5 s" in body
    assert took < 5


def test_a_stalled_request_after_an_answered_one_gets_a_json_408(strict: int) -> None:
    """On a kept-alive connection the 408 was only for its first request: a later one that stalled
    (or trickled its headers) was closed without an answer, and /metrics did not count it."""
    statuses: list[int] = []
    base = protocol_class(request_timeout=0.5, refused=statuses.append)
    assert not isinstance(base, str)
    with _serving(base) as port:
        for stalled in (b"GET / HTT", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nab"):
            answer, took = _answer(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", stalled, pause=0.1)
            first, _, rest = answer.partition(b"hello")
            assert first.startswith(b"HTTP/1.1 200") and rest.startswith(b"HTTP/1.1 408 "), answer
            assert b"no bytes of the request came for 0.5 s" in rest and took < 5
    assert statuses == [408, 408]


def test_headers_trickled_byte_by_byte_get_a_408(strict: int) -> None:
    """A byte of headers every 0.2 s, each within the 0.5 s timeout (slowloris): the connection
    was held for as long as the client went on (a request timeout of 2 s let a request trickled
    over 88 s through; at the default 30 s, 64 KiB of headers holds a connection for 22 days)."""
    started = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", strict), timeout=10) as conn:
        with contextlib.suppress(OSError):   # the server closes once it has answered
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 40:
                conn.sendall(bytes([byte]))
                time.sleep(0.2)
                if time.monotonic() - started > 5:
                    break
        with contextlib.suppress(OSError):
            while chunk := conn.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"application/json" in head, answer
    assert b"the request line and headers did not all come within 0.5 s" in body
    assert time.monotonic() - started < 3


def test_huge_headers_get_a_431_and_bad_framing_a_json_400(strict: int) -> None:
    answer, _ = _answer(strict, b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: " + b"a" * 100_000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ") and b"exceed 64 KiB" in answer, answer[:300]
    answer, _ = _answer(strict, b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 100_000)   # never ends
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:300]
    body = b"b" * 300_000   # a small head with a big body in the same reads: no 431
    answer, _ = _answer(strict, b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(body), answer[:300]
    answer, _ = _answer(strict, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"application/json" in head and b"invalid HTTP request" in body


def test_idle_keep_alive_and_a_slow_steady_body_are_not_cut(strict: int) -> None:
    with socket.create_connection(("127.0.0.1", strict), timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(1.0)   # idle between requests: keep-alive's 30 s, not the request timeout
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.recv(65536).startswith(b"HTTP/1.1 200")
    parts = [b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\n", b"a", b"b", b"c", b"d"]
    answer, _ = _answer(strict, *parts, pause=0.3)   # each byte within the timeout: answered
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"abcd"), answer


def test_a_request_queued_behind_a_slow_one_is_not_timed_out(strict: int) -> None:
    """uvicorn stops reading while a pipelined request waits for the one before it: its body
    could not come, and it got a 408 (which cut the first answer too)."""
    with socket.create_connection(("127.0.0.1", strict), timeout=10) as conn:
        conn.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\n")
        time.sleep(0.1)
        conn.sendall(b"abcd")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.count(b"HTTP/1.1 200") == 2 and answer.endswith(b"abcd") and b"slow" in answer, answer


def test_a_request_begun_behind_a_slow_one_does_not_take_its_answer(strict: int) -> None:
    """The next request's first bytes pipelined behind a slow one, the rest not (yet) sent: once
    the timeout passed, its 408 went out in place of the slow request's answer, which was lost."""
    answer, _ = _answer(strict, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET / HTT")
    assert answer.startswith(b"HTTP/1.1 200") and b"slow" in answer, answer
    assert answer.count(b"HTTP/1.1 408") == 1 and b"no bytes of the request came for 0.5 s" in answer, answer


@pytest.mark.parametrize("close", [True, False])
def test_an_answer_before_the_body_is_read_reaches_a_client_that_sends_it_all(
        server: tuple[int, list[bytes]], close: bool) -> None:
    """A 413 answered from Content-Length, to a client that sends its whole body before reading
    (http.client, urllib, which sends ``Connection: close``): closed at once, the unread body made
    the kernel send a reset, and the client saw "connection reset by peer", not the 413."""
    port, _ = server
    body = b"x" * (20 << 20)
    for _ in range(3):
        status, answer = _request(port, "POST", "/refuse", body=body,
                                  headers={"Connection": "close"} if close else {})
        assert (status, answer) == (413, b"refused")


def test_a_kept_alive_connection_answered_before_its_body_closes_after_lingering(strict: int) -> None:
    """Without `Connection: close` the 413 kept the connection open, and uvicorn read and dropped
    whatever body was declared, for as long as the client sent it (15 GB in 8 s)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", strict), timeout=10) as conn:
        conn.sendall(b"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n")
        with pytest.raises(OSError):
            while time.monotonic() - started < 8:
                conn.sendall(b"y" * 65536)
                time.sleep(0.01)
    assert time.monotonic() - started < 5


def test_a_parse_error_in_a_big_read_is_one_400(strict: int) -> None:
    """A malformed header and 100 KB more in one read: the 400 (lingering) was followed by a 431
    written after EOF (an asyncio traceback), and the request counted twice."""
    statuses: list[int] = []
    base = protocol_class(request_timeout=0.5, refused=statuses.append)
    assert not isinstance(base, str)
    with _serving(base) as port:
        answer, _ = _answer(port, b"GET / HTTP/1.1\r\nHost: x\r\nBad\x01Header: y\r\nX-A: " + b"a" * 100_000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.count(b"HTTP/1.1") == 1, answer[:300]
    assert statuses == [400]


def test_an_upgrade_with_a_body_is_refused_not_answered_with_the_body_lost() -> None:
    """`curl --http2 -d ... http://...` asks for h2c with its body: httptools handed the app an empty
    body (the server answered "request is not valid JSON") and parsed the body as the next request.
    Now a JSON 400 names the Upgrade and the fix; an upgrade without a body is served as before."""
    statuses: list[int] = []
    base = protocol_class(request_timeout=0.5, refused=statuses.append)
    assert not isinstance(base, str)
    upgrade = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
    with _serving(base) as port:
        for framing in (b"Content-Length: 5\r\n\r\nhello", b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"):
            answer, _ = _answer(port, b"POST /echo HTTP/1.1\r\nHost: x\r\n" + upgrade + framing)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 ") and b"application/json" in head and answer.count(b"HTTP/1.1 ") == 1
            assert b"'h2c'" in body and b"--http1.1" in body, body
        answer, _ = _answer(port, b"GET / HTTP/1.1\r\nHost: x\r\n" + upgrade + b"Connection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"hello"), answer
        answer, _ = _answer(port, b"POST /echo HTTP/1.1\r\nHost: x\r\n" + upgrade + b"Content-Length: 0\r\n"
                                  b"Connection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert statuses == [400, 400]


@pytest.mark.parametrize("upgrade", [
    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n",
    b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"], ids=["h2c", "websocket"])
def test_a_request_pipelined_behind_an_upgrade_is_answered(server: tuple[int, list[bytes]], upgrade: bytes) -> None:
    """An upgrade without a body is answered as plain HTTP, and httptools stops at its head: uvicorn
    dropped the rest of that read, so a request pipelined behind it was never answered (the client
    waited until the keep-alive timeout)."""
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + upgrade + b"\r\n"
                  b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nend")
        reply = b""
        while not reply.endswith(b"end"):
            chunk = s.recv(4096)
            assert chunk, reply
            reply += chunk
    assert reply.count(b"HTTP/1.1 200 OK") == 2 and b"\r\n\r\nhello" in reply, reply


@pytest.mark.parametrize("refused", [
    b"GET / HTTP/1.1\r\nBad\x01Header: y\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 5\r\n\r\nhello"],
    ids=["malformed", "upgrade-with-body"])
def test_a_refusal_pipelined_behind_a_request_comes_after_its_answer(refused: bytes) -> None:
    """A request the protocol refuses itself, pipelined behind one still being answered: its 400 was
    written at once, so the client read it as the first request's answer, and that answer was lost."""
    statuses: list[int] = []
    base = protocol_class(request_timeout=5, refused=statuses.append)
    assert not isinstance(base, str)
    with _serving(base) as port:
        answer, _ = _answer(port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + refused)
        # a bad chunk in the body of the request being answered is refused at once, as before
        # (its app waits for that body: the refusal would wait for it for good)
        bad_chunk, seconds = _answer(port, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                           b"5\r\nhello\r\nZZZ\r\n")
    first, _, rest = answer.partition(b"slow")
    assert first.startswith(b"HTTP/1.1 200 OK") and rest.startswith(b"HTTP/1.1 400 Bad Request"), answer
    assert rest.count(b"HTTP/1.1 ") == 1 and statuses == [400, 400]
    assert bad_chunk.startswith(b"HTTP/1.1 400 Bad Request") and seconds < 3, bad_chunk


def test_lingering_after_an_early_answer_is_bounded(strict: int) -> None:
    """A client that goes on sending after the answer is cut off after the linger (here 0.5 s)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", strict), timeout=10) as conn:
        conn.sendall(b"POST /refuse HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 999999999999\r\n\r\n")
        answer = b""
        with pytest.raises(OSError):   # a reset once the server has closed for good
            while time.monotonic() - started < 8:
                conn.sendall(b"y" * 65536)
                time.sleep(0.01)
        with contextlib.suppress(OSError):
            answer = conn.recv(65536)
    assert time.monotonic() - started < 5
    assert answer.startswith(b"HTTP/1.1 413") or answer == b"", answer


def test_what_the_protocol_refuses_itself_is_reported_for_the_metrics() -> None:
    """A 400, 408 or 431 answered by the protocol never reaches the app, whose middleware counts
    requests: ``refused`` is the only place /metrics hears of them."""
    statuses: list[int] = []
    base = protocol_class(request_timeout=0.5, refused=statuses.append)
    assert not isinstance(base, str)
    with _serving(base) as port:
        assert _answer(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 100_000 + b"\r\n\r\n")[0].startswith(b"HTTP/1.1 431")
        assert _answer(port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")[0].startswith(b"HTTP/1.1 400")
        assert _answer(port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nab")[0].startswith(b"HTTP/1.1 408")
        assert _answer(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0].startswith(b"HTTP/1.1 200")
    assert statuses == [431, 400, 408]


def test_a_client_pipelining_without_reading_its_answers_is_not_buffered() -> None:
    """uvicorn read on after each answer and queued a whole read of requests to answer one: a
    client sending requests without reading the answers grew the queue without bound (the digits
    server took 600 MB of requests in 20 s and reached 3.2 GB). Now at most one read of them waits."""
    base = protocol_class()
    assert not isinstance(base, str)
    queued: list[int] = []

    class Measured(base):  # type: ignore[misc, valid-type]
        def on_response_complete(self) -> None:
            super().on_response_complete()
            queued.append(len(self.pipeline))

    request = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"   # reading its body resumed reading too
    with _serving(Measured) as port, socket.create_connection(("127.0.0.1", port), timeout=3) as conn:
        with contextlib.suppress(socket.timeout):   # until the server stops taking them
            for _ in range(1000):   # 1,000,000 requests, 58 MB
                conn.sendall(request * 1000)
    assert queued and max(queued) <= 262144 // len(request), max(queued)   # one read (asyncio reads 256 KiB)


def test_a_connection_surge_is_accepted_while_the_server_is_busy() -> None:
    """uvloop (libuv) accepts one connection per loop iteration, and a busy server's iteration
    answers every keep-alive connection's request first: 1,000 busy connections left a surge of
    new ones (health probes, scrapes) waiting minutes in the accept queue. Given the listener, each
    accepted connection takes in every one waiting: here 60 newcomers behind 20 busy clients (an
    iteration of ~0.1 s) took ~6 s one by one."""
    uvloop = pytest.importorskip("uvloop")
    sock = _listener()
    base = protocol_class(listener=sock)
    assert not isinstance(base, str)
    stop = threading.Event()

    def busy(port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while not stop.is_set():
            conn.request("GET", "/busy")
            conn.getresponse().read()
        conn.close()

    took: list[float] = []

    def newcomer(port: int) -> None:
        started = time.monotonic()
        assert _request(port, "GET", "/") == (200, b"hello")
        took.append(time.monotonic() - started)

    with _serving(base, sock, uvloop.run) as port:
        clients = [threading.Thread(target=busy, args=(port,)) for _ in range(20)]
        for t in clients:
            t.start()
        try:
            time.sleep(0.5)
            newcomers = [threading.Thread(target=newcomer, args=(port,)) for _ in range(60)]
            for t in newcomers:
                t.start()
            for t in newcomers:
                t.join(30)
        finally:
            stop.set()
            for t in clients:
                t.join(30)
    assert len(took) == 60 and max(took) < 2.0, sorted(took)[-5:]


def test_connections_taken_in_as_the_server_stops_do_not_hold_its_shutdown() -> None:
    """Connections waiting in the accept queue as the server stopped were handed to the loop after
    uvicorn's shutdown had closed the idle ones: they were served and kept alive, and the server
    waited for them for the whole graceful timeout (the real server: 20 s instead of 0.5 s after
    SIGTERM, two runs in five, under a stream of new connections)."""
    uvloop = pytest.importorskip("uvloop")
    sock = _listener()
    base = protocol_class(listener=sock)
    assert not isinstance(base, str)
    servers: list[uvicorn.Server] = []
    waiting: list[socket.socket] = []
    with _serving(base, sock, uvloop.run, servers) as port, \
            socket.create_connection(("127.0.0.1", port), timeout=10) as first:
        first.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")   # the loop is held for 0.5 s...
        time.sleep(0.1)
        for _ in range(100):   # ...while these queue up, each with a request
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            waiting.append(conn)
        servers[0].should_exit = True
        started = time.monotonic()
    took = time.monotonic() - started   # the with's exit waits (10 s at most) for the server to stop
    for conn in waiting:
        conn.close()
    assert took < 5, f"the server took {took:.1f} s to stop"


def test_an_answered_request_is_freed_without_the_garbage_collector(server: tuple[int, list[bytes]]) -> None:
    """The held head refers to its cycle weakly: a strong reference made each request's cycle (its
    scope, headers and body) a reference cycle that only the garbage collector freed."""
    import gc

    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    port, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            conn.request("GET", "/")
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"hello")
        alive = sum(type(o) is RequestResponseCycle for o in gc.get_objects())
    finally:
        gc.enable()
        conn.close()
    assert alive <= 2, f"{alive} request cycles still alive after 20 answered requests"
