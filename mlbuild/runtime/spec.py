"""Reading the versioned JSON spec Nix hands each builder (``passAsFile = [ "spec" ]``)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

__all__ = ["load_spec", "SPEC_VERSION"]

SPEC_VERSION = 1


def load_spec() -> dict[str, Any]:
    path = os.environ.get("specPath") or (sys.argv[1] if len(sys.argv) > 1 else "")
    if not path:
        raise SystemExit("mlbuild builder: no spec (expected $specPath or an argument)")
    with open(path) as f:
        spec: dict[str, Any] = json.load(f)
    if spec.get("version") != SPEC_VERSION:
        raise SystemExit(f"mlbuild builder: spec version {spec.get('version')!r}, expected {SPEC_VERSION}; "
                         "the Nix library and the runtime are from different mlbuild versions")
    return spec
