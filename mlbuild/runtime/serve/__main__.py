"""``python -m mlbuild.runtime.serve --package PKG [--host H] [--port P]``: serve a model package.

Only maps arguments to ``server.serve``; errors are printed as ``Error: ...`` with exit status 2
(bad package or arguments) or 1 (the model failed to load).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

# Before torch loads OpenMP: idle intra-op threads sleep instead of spinning. Spinning threads
# take the cores the event loop needs between forward passes (and collapse under contention).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .package import ServeError  # noqa: E402
from .server import serve  # noqa: E402

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlbuild.runtime.serve",
                                description="Serve a model package over the Open Inference Protocol v2.")
    p.add_argument("--package", required=True, help="the package folder (manifest.json, model/, code/)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to bind; 0 picks a free one (default: 8080)")
    p.add_argument("--port-file", help="write the bound port to this file once listening")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: $MLBUILD_SERVE_THREADS or CPUs)")
    p.add_argument("--max-batch-size", type=int, help="override serve.json max_batch_size")
    p.add_argument("--max-wait-ms", type=float, help="override serve.json max_wait_ms")
    p.add_argument("--max-body-bytes", type=int, help="override serve.json max_body_bytes")
    p.add_argument("--graceful-timeout", type=int, default=30,
                   help="seconds to let requests finish after SIGTERM (default: 30)")
    p.add_argument("--no-verify", action="store_true", help="skip the weights' sha256 check against the manifest")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request (slower)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in (("max_batch_size", args.max_batch_size),
                                                   ("max_wait_ms", args.max_wait_ms),
                                                   ("max_body_bytes", args.max_body_bytes)) if v is not None}
    if args.threads is not None and args.threads < 1:
        print(f"Error: --threads {args.threads} must be >= 1", file=sys.stderr)
        return 2
    try:
        return serve(args.package, args.host, args.port, threads=args.threads, settings=overrides,
                     verify=not args.no_verify, log_level=args.log_level, access_log=args.access_log,
                     graceful_timeout=args.graceful_timeout, port_file=args.port_file)
    except (ServeError, OSError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
