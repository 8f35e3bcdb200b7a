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
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

__all__ = ["protocol_class"]

_JOIN_LIMIT = 64 * 1024


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


def protocol_class() -> type[asyncio.Protocol] | str:
    """The one-write protocol class, or ``"auto"`` (uvicorn's choice) where httptools or the
    internals it relies on are missing."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
    except ImportError:  # no httptools: uvicorn's h11 protocol, as it is
        return "auto"
    if not hasattr(HttpToolsProtocol, "_start_asgi_task") or not hasattr(RequestResponseCycle, "send"):
        return "auto"

    class OneWriteProtocol(HttpToolsProtocol):
        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            if hasattr(cycle, "transport") and hasattr(cycle, "on_response"):
                _wrap(cycle)
            super()._start_asgi_task(cycle, app)

    return OneWriteProtocol
