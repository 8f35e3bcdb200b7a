"""The spec of a build step made by ``pythonStage`` (nix/stage.nix), its floats read back exactly.

nix/lib.nix's ``specJSON`` writes a float as ``{"mlbuild-float": [m, e]}`` (the value m * 2**e), or
``{"mlbuild-float": "nan"}`` (``"inf"``, ``"-inf"``, ``"-0"``; a table whose one key is mlbuild-float is wrapped in
another, ``{"mlbuild-float": {"mlbuild-float": ...}}``): Nix 2.8's ``builtins.toJSON`` prints a float
with 6 significant digits (lr = 0.1234567891 trained with 0.123457) and later versions print it
exactly (``2.0`` where 2.8 wrote ``2``), so a plain JSON number was another value, and another store
path, under each Nix version. The toolchain and the interpreter snapshot (no floats, plain
``builtins.toJSON``) read theirs with ``spec.load_spec``, which this module leaves as it was: their
store paths, the biggest, do not change with it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from . import spec as _plain

__all__ = ["load_spec", "read_spec", "exact_floats"]


def exact_floats(value: Any) -> Any:
    """``value`` (parsed JSON) with every ``{"mlbuild-float": ...}`` turned into its float."""
    if isinstance(value, dict):
        if len(value) == 1 and "mlbuild-float" in value:
            parts = value["mlbuild-float"]
            if isinstance(parts, dict):   # a table of the project's whose one key is mlbuild-float, wrapped
                return {"mlbuild-float": exact_floats(parts["mlbuild-float"])}
            return math.ldexp(parts[0], parts[1]) if isinstance(parts, list) else float(parts)
        return {k: exact_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [exact_floats(v) for v in value]
    return value


def load_spec() -> dict[str, Any]:
    """This build step's spec ($specPath), version-checked, its floats exact."""
    spec: dict[str, Any] = exact_floats(_plain.load_spec())
    return spec


def read_spec(text: str) -> dict[str, Any]:
    """A spec's JSON text, its floats exact."""
    spec: dict[str, Any] = exact_floats(json.loads(text))
    return spec
