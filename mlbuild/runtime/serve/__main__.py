"""``python -m mlbuild.runtime.serve --package PKG [--host H] [--port P]``: serve a model package.

A package's ``bin/serve`` calls ``main(argv, package=PKG)``: its usage has no ``--package``.

Only maps arguments to ``server.serve``; errors are printed as ``Error: ...`` with exit status 2
(bad package or arguments) or 1 (the model failed to load).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

# Before torch loads OpenMP: idle intra-op threads sleep instead of spinning. Spinning threads
# take the cores the event loop needs between forward passes (and collapse under contention).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Set by platforms for multi-process Python servers (gunicorn's workers), often for every service:
# prometheus_client, when imported, keeps every sample in files under PROMETHEUS_MULTIPROC_DIR
# (one that is missing or read-only stopped the server: "Error: [Errno 2] No such file or
# directory: '.../gauge_all_PID.db'"). This server is one process with one registry of its own.
# (WEB_CONCURRENCY, which uvicorn reads as its worker count: server.py passes workers=1.)
for _name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
    os.environ.pop(_name, None)

# Only the light modules here: the server's (torch, ~1 s) are imported in main(), once a SIGTERM
# can stop the process (see _stop_at_once).
from .package import MAX_THREADS, SETTING_LIMITS, ServeError  # noqa: E402

__all__ = ["main", "build_parser"]


def _number(kind: type, lo: float, hi: float | None = None) -> Any:
    """An argparse type: ``kind`` (int or float) within ``lo..hi``; the error names the value."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value != value or value < lo or (hi is not None and value > hi):
            bounds = f"in {lo:g}..{hi:g}" if hi is not None else f">= {lo:g}"
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'} {bounds}")
        return value
    return parse


def _proxies(text: str) -> str:
    """An argparse type: ``--forwarded-allow-ips``, ``*`` or comma-separated IP addresses and networks,
    written as uvicorn matches them. It took a network with host bits (``10.1.0.5/16``) for a name
    and ``*`` beside an address for a literal ``*``, neither matching any proxy; and with ``--host
    ::`` an IPv4 proxy's address is IPv4-mapped (``::ffff:10.0.0.5``), which ``10.0.0.5`` did not
    match: the proxy's X-Forwarded-For was ignored without a word. Each IPv4 entry comes with its
    mapped twin."""
    import ipaddress

    items = [item.strip() for item in text.split(",")]
    trusted: list[str] = []
    for item in items:
        if not item:   # `--forwarded-allow-ips 10.0.0.5, 10.0.0.6` unquoted: the shell split it at the space
            raise argparse.ArgumentTypeError(
                f"{text!r} has an empty entry (a comma at its end, or two in a row); a list with spaces after its "
                "commas is split by the shell: quote it ('10.0.0.5, 10.0.0.6') or drop the spaces")
        try:
            if item == "*":
                trusted.append(item)
                continue
            bare = item[1:-1] if item.startswith("[") and item.endswith("]") else item   # [::1]
            if "/" in bare:
                net = ipaddress.ip_network(bare, strict=False)
                trusted.append(str(net))
                if net.version == 4:
                    trusted.append(f"::ffff:{net.network_address}/{96 + net.prefixlen}")
            else:
                ip = ipaddress.ip_address(bare)
                trusted.append(str(ip))
                if ip.version == 4:
                    trusted.append(f"::ffff:{ip}")
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not an IP address or network (of {text!r}); pass the proxies' addresses, comma-separated "
                "(10.0.0.5,10.1.0.0/16), or * to trust any") from None
    return "*" if "*" in trusted else ",".join(trusted)


def _setting(key: str) -> Any:
    kind, lo, hi = SETTING_LIMITS[key]
    return _number(kind, lo, hi)


def build_parser(package: str | None = None) -> argparse.ArgumentParser:
    """The server's options; ``package`` given (a package's bin/serve) is the package served."""
    prog = "serve" if sys.argv[0].endswith("/bin/serve") else "python -m mlbuild.runtime.serve"
    p = argparse.ArgumentParser(prog=prog, description="Serve a model package over the Open Inference Protocol v2.")
    if package is None:
        p.add_argument("--package", required=True, help="the package folder (manifest.json, model/, code/)")
    else:
        p.set_defaults(package=package)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=_number(int, 0, 65535), default=8080,
                   help="port to bind; 0 picks a free one (default: 8080)")
    p.add_argument("--port-file", help="write the bound port to this file once listening")
    p.add_argument("--threads", type=_number(int, 1, MAX_THREADS),
                   help="torch intra-op threads (default: $MLBUILD_SERVE_THREADS, else the CPUs this process may "
                        "use, at most its cgroup CPU quota)")
    p.add_argument("--max-batch-size", type=_setting("max_batch_size"), help="override serve.json max_batch_size")
    p.add_argument("--max-wait-ms", type=_setting("max_wait_ms"), help="override serve.json max_wait_ms")
    p.add_argument("--max-body-bytes", type=_setting("max_body_bytes"), help="override serve.json max_body_bytes")
    p.add_argument("--graceful-timeout", type=_number(int, 0), default=30,
                   help="seconds to let requests finish after SIGTERM (default: 30)")
    p.add_argument("--request-timeout", type=_number(float, 0.1, 86400), default=30.0,
                   help="seconds a request may go without sending its next bytes (line, headers or body), "
                        "and its line and headers may take in all, before it gets a 408 (default: 30)")
    p.add_argument("--keep-alive-timeout", type=_number(int, 1, 86400), default=75,
                   help="seconds an idle keep-alive connection stays open between requests; above a load "
                        "balancer's or proxy's own idle timeout for its connections here (default: 75)")
    p.add_argument("--forwarded-allow-ips", type=_proxies, metavar="IPS",
                   help="take the client's address from X-Forwarded-For (and the scheme from X-Forwarded-Proto) "
                        "of requests from these proxies: IPs or networks, comma-separated, or * (default: none; the "
                        "access log names the proxy)")
    p.add_argument("--no-verify", action="store_true", help="skip the weights' sha256 check against the manifest")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request (slower)")
    return p


def _leave(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _stop_at_once(signum: int, frame: FrameType | None) -> None:
    """SIGTERM or SIGINT before the server runs: nothing is bound or in flight, so exit now (0, as
    a stop while the model loads does). Without a handler of its own the process did not stop at
    all as a container's PID 1, which the kernel sends no signal whose action is the default one:
    `podman stop` in the first second (importing torch) waited 10 s and killed it (exit 137)."""
    _leave(0)


def _reap_orphans(signum: int = signal.SIGCHLD, frame: FrameType | None = None) -> None:
    """Collect the exited orphans among this process's children. As a container's PID 1 the server
    is the parent of each process orphaned in it (a `podman exec` or `kubectl exec` command's child
    that outlives it), and the kernel keeps an exited one as a zombie until its parent reaps it:
    they piled up for the container's life. Only those of another session are taken (an exec runs
    in a session of its own): a process the server's own code started stays in its session, for its
    own wait to collect with its exit status."""
    me, session = os.getpid(), os.getsid(0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()   # state, ppid, pgrp, session, ...
            if fields[0] == "Z" and int(fields[1]) == me and int(fields[3]) != session:
                os.waitpid(int(entry), os.WNOHANG)
        except (OSError, IndexError, ValueError):   # gone already, or not ours to wait for
            continue


def main(argv: list[str] | None = None, package: str | None = None) -> int:
    if os.getpid() == 1:
        signal.signal(signal.SIGCHLD, _reap_orphans)
        # SA_RESTART: a system call the handler interrupts restarts, as under SIGCHLD's default; C code
        # of a model's libraries that does not retry on EINTR would otherwise see it fail
        signal.siginterrupt(signal.SIGCHLD, False)
    early = {sig: signal.signal(sig, _stop_at_once) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _main(argv, package)
    finally:
        for sig, handler in early.items():
            signal.signal(sig, handler)


def _main(argv: list[str] | None, package: str | None) -> int:
    args = build_parser(package).parse_args(argv)
    from .app import LOAD_THREAD
    from .model import env_threads
    from .server import serve

    overrides: dict[str, Any] = {k: v for k, v in (("max_batch_size", args.max_batch_size),
                                                   ("max_wait_ms", args.max_wait_ms),
                                                   ("max_body_bytes", args.max_body_bytes)) if v is not None}
    try:
        if args.threads is None:
            env_threads()   # a bad MLBUILD_SERVE_THREADS: said now, as a bad option is, not after the port is bound
        code = serve(args.package, args.host, args.port, threads=args.threads, settings=overrides,
                     verify=not args.no_verify, log_level=args.log_level, access_log=args.access_log,
                     graceful_timeout=args.graceful_timeout, port_file=args.port_file,
                     request_timeout=args.request_timeout, keep_alive_timeout=args.keep_alive_timeout,
                     forwarded_allow_ips=args.forwarded_allow_ips)
    except (ServeError, OSError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    if any(t.name == LOAD_THREAD and t.is_alive() for t in threading.enumerate()):
        # Stopped before the model finished loading. Its thread may be inside torch, whose thread
        # pools the interpreter's exit tears down under it: the process died of SIGABRT
        # ("terminate called without an active exception"). Nothing of the load is kept: exit now.
        _leave(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
