"""The model server that runs inside the toolchain: OIP v2 over uvicorn/starlette, micro-batching.

Modules, one concern each: ``package`` (reading a package folder), ``model`` (loading weights and
the user's handler), ``protocol`` (OIP JSON/binary encoding and validation), ``batching``
(adaptive micro-batching), ``metrics`` (Prometheus), ``app`` (routes and lifecycle), ``server``
(uvicorn, signals), ``__main__`` (the CLI). Imports only the toolchain's wheels.
"""

from __future__ import annotations

from .app import ServerState, create_app
from .batching import MicroBatcher
from .metrics import ServerMetrics
from .model import LoadedModel, ModelError, load_model
from .package import Package, PackageError, ServeError, ServeSettings, TensorSpec, load_package
from .protocol import ProtocolError
from .server import serve

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
