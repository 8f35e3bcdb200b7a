"""The model server that runs inside the toolchain: OIP v2 over uvicorn/starlette, micro-batching.

Modules, one concern each: ``package`` (reading a package folder), ``model`` (loading weights and
the user's handler), ``protocol`` (OIP JSON/binary encoding and validation), ``batching``
(adaptive micro-batching), ``metrics`` (Prometheus), ``app`` (routes and lifecycle), ``server``
(uvicorn, signals), ``__main__`` (the CLI). Imports only the toolchain's wheels.

The names below are imported lazily, so that ``python -m mlbuild.runtime.serve`` can configure
the OpenMP runtime before torch is loaded (see ``__main__``).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "serve",
    "create_app",
    "ServerState",
    "ServerMetrics",
    "MicroBatcher",
    "load_package",
    "load_model",
    "LoadedModel",
    "Package",
    "ServeSettings",
    "TensorSpec",
    "ServeError",
    "PackageError",
    "ModelError",
    "ProtocolError",
]

_HOME = {
    "serve": "server", "create_app": "app", "ServerState": "app", "ServerMetrics": "metrics",
    "MicroBatcher": "batching", "load_package": "package", "load_model": "model", "LoadedModel": "model",
    "Package": "package", "ServeSettings": "package", "TensorSpec": "package", "ServeError": "package",
    "PackageError": "package", "ModelError": "model", "ProtocolError": "protocol",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
