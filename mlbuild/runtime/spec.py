"""Reading the versioned JSON spec Nix hands each builder (``passAsFile = [ "spec" ]``).

Its floats come as ``{"mlbuild-float": [m, e]}`` (the value m * 2**e) or ``"nan"``, ``"inf"``,
``"-inf"`` (nix/lib.nix's specJSON): Nix 2.8 writes a float with 6 significant digits, later
versions exactly, so a plain JSON number was another value, and another store path, per version.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

__all__ = ["load_spec", "read_spec", "SPEC_VERSION"]

SPEC_VERSION = 1


def load_spec() -> dict[str, Any]:
    path = os.environ.get("specPath") or (sys.argv[1] if len(sys.argv) > 1 else "")
    if not path:
        raise SystemExit("mlbuild builder: no spec (expected $specPath or an argument)")
    with open(path) as f:
        spec = read_spec(f.read())
    if spec.get("version") != SPEC_VERSION:
        raise SystemExit(f"mlbuild builder: spec version {spec.get('version')!r}, expected {SPEC_VERSION}; "
                         "the Nix library and the runtime are from different mlbuild versions")
    return spec


def _float(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "mlbuild-float" in obj:
        v = obj["mlbuild-float"]
        return math.ldexp(v[0], v[1]) if isinstance(v, list) else float(v)
    return obj


def read_spec(text: str) -> dict[str, Any]:
    """A spec's JSON text, its floats as floats."""
    spec: dict[str, Any] = json.loads(text, object_hook=_float)
    return spec
