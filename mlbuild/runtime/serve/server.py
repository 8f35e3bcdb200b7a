"""Running the app under uvicorn: binding, readiness on SIGTERM, graceful drain, exit status.

``serve()`` validates the package, binds the socket itself (so ``port=0`` works and the real port
can be written to ``port_file`` for callers that need it without races), then runs uvicorn. The
weights load in the background after the bind (see ``app.py``).

On SIGTERM or SIGINT: readiness turns false, the listening socket closes (new connections are
refused), the requests in flight complete (up to ``graceful_timeout`` seconds), the batcher
stops, and ``serve`` returns 0. It returns 1 if the model failed to load.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import disable_created_metrics

from .app import ServerState, create_app
from .metrics import ServerMetrics
from .onewrite import protocol_class
from .package import ServeError, load_package

__all__ = ["serve", "bind"]

log = logging.getLogger("mlbuild.serve")


class _Server(uvicorn.Server):
    """uvicorn's server, turning readiness false as soon as a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.state.begin_drain()
        super().handle_exit(sig, frame)


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (``port=0``: a free port); ServeError naming
    the address and the fix when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP (not 0): asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it every keep-alive response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if e.errno == errno.EADDRINUSE:
            fix = f"port {port} is taken: stop what listens there or pass another --port (0 picks a free one)"
        elif e.errno == errno.EACCES:
            fix = f"port {port} needs privileges: pass --port 1024 or above"
        else:
            fix = "pass --host an address of this machine (127.0.0.1, 0.0.0.0, ::)"
        raise ServeError(f"cannot listen on {shown} ({e.strerror or e}); {fix}") from None
    sock.set_inheritable(True)
    return sock


class _UvicornName(logging.Filter):
    """Names uvicorn's general logger ``uvicorn``, not ``uvicorn.error``: "INFO uvicorn.error:
    Started server process" read as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.name = "uvicorn"
        return True


def _configure_logging(log_level: str, access_log: bool) -> None:
    """One format for every line, on stderr: the server's, uvicorn's and its access log's. With
    uvicorn's own logging configuration its lines had no timestamp nor logger ("INFO:     Started
    server process [1]"), and its access log went to stdout while the rest went to stderr."""
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    general = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _UvicornName) for f in general.filters):
        general.addFilter(_UvicornName())
    # uvicorn turns the access log off (propagate False) when not asked for; on when it is
    logging.getLogger("uvicorn.access").propagate = access_log


def _write_port_file(path: Path, port: int) -> None:
    """Write ``port`` to ``path`` atomically; ServeError naming ``--port-file`` when it cannot be,
    with no temporary file left (one named for a folder was left beside it: ``/tmp.tmp.PID``)."""
    if not path.name:   # "", ".", "/": a ValueError traceback from with_name
        raise ServeError(f"cannot write the port to --port-file {str(path)!r} (a folder, not a file); pass the path "
                         "of a file in a folder that exists and is writable")
    tmp = path.with_name(path.name + f".tmp.{os.getpid()}")
    try:
        tmp.write_text(f"{port}\n")
        tmp.replace(path)  # readers never see a partial file
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ServeError(f"cannot write the port to --port-file {path} ({e.strerror or e}); pass the path of a "
                         "file in a folder that exists and is writable") from None


def serve(package: Path | str, host: str = "127.0.0.1", port: int = 8080, *, threads: int | None = None,
          settings: dict[str, Any] | None = None, verify: bool = True, log_level: str = "info",
          access_log: bool = False, graceful_timeout: int = 30, port_file: Path | str | None = None,
          request_timeout: float = 30.0, keep_alive_timeout: int = 75,
          forwarded_allow_ips: str | None = None) -> int:
    """Serve the package at ``package`` until SIGTERM/SIGINT; the process exit status to use.

    ``settings`` overrides ``serve.json`` (``max_batch_size``, ``max_wait_ms``, ``max_body_bytes``).
    ``keep_alive_timeout``: the seconds an idle keep-alive connection stays open. Above the idle
    timeout of a load balancer's pooled connections (nginx's upstream keepalive_timeout, 60 s; an AWS
    ALB's, 60 s), or the server closes a connection as the balancer sends it a request, which the
    balancer answers with a 502 (a POST is not retried). It was 30 s, fixed. ``forwarded_allow_ips``:
    the proxies (comma-separated IPs, networks, or ``*``) whose X-Forwarded-For names the client (in
    the access log); None: those headers are ignored.
    Raises ``PackageError`` (before binding) if the package folder is invalid.
    """
    _configure_logging(log_level, access_log)
    pkg = load_package(package, settings)
    sock = bind(host, port)
    actual_port = sock.getsockname()[1]

    disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: this process serves one registry of its own
    metrics = ServerMetrics()
    server: _Server | None = None

    def on_load_failure(exc: BaseException) -> None:
        if server is not None:
            server.should_exit = True

    state = ServerState(pkg, metrics, threads=threads, verify=verify, on_load_failure=on_load_failure)
    # http: one socket write per response, and a connection surge accepted at once (onewrite.py). proxy_headers
    # off unless --forwarded-allow-ips names the proxies: nothing here reads the client's address but the
    # optional access log, and uvicorn's X-Forwarded-For middleware is one more ASGI layer on every request.
    config = uvicorn.Config(create_app(state), lifespan="on", log_level=log_level, access_log=access_log,
                            log_config=None,   # its loggers go through the root's handler (_configure_logging)
                            timeout_graceful_shutdown=max(1, graceful_timeout), server_header=False,
                            timeout_keep_alive=keep_alive_timeout, proxy_headers=forwarded_allow_ips is not None,
                            forwarded_allow_ips=forwarded_allow_ips or "",   # not $FORWARDED_ALLOW_IPS
                            # one process: uvicorn took WEB_CONCURRENCY (a platform's, for gunicorn)
                            # with int() when not given, and 'auto' was a ValueError traceback
                            workers=1,
                            http=protocol_class(request_timeout, refused=metrics.refused, listener=sock))
    if access_log:   # asked for by name: its INFO lines were dropped at --log-level warning, without a word
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    server = _Server(config, state)
    if port_file is not None:
        try:
            _write_port_file(Path(port_file), actual_port)
        except ServeError:
            sock.close()
            raise
    shown = f"[{host}]" if ":" in host else host
    # the hashes the image's labels (mlbuild.*.sha256) and /metrics' mlbuild_model_info carry: a log
    # alone says which model a replica served
    hashes = "".join(f"; {k} sha256 {pkg.hashes[k]}" for k in ("model", "data", "code") if k in pkg.hashes)
    log.info("serving %s (%s%s) on http://%s:%d", pkg.name, pkg.root, hashes, shown, actual_port)

    # uvicorn re-raises the signal that stopped it once it has drained, with the handler that was
    # in place before it started; a no-op one makes a graceful SIGTERM an exit with status 0.
    previous = {sig: signal.signal(sig, lambda s, f: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if state.load_error is not None:
        print(f"Error: {state.load_error}", file=sys.stderr)
        return 1
    return 0
