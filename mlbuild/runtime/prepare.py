"""Builder of a derived dataset: run the project's ``prepare(inputs, out, params)``.

The script (and the files listed in ``code``) come from the project; ``inputs`` maps dataset
names to their store paths; ``out`` is an empty folder to fill. Seeds are fixed first, so a
random split is the same on every build.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from pathlib import Path
from types import ModuleType

from .spec import load_spec

__all__ = ["main", "load_module"]


def load_module(code: str, script: str) -> ModuleType:
    """Import ``code/script`` (a path relative to the project) with ``code`` on sys.path."""
    sys.path.insert(0, code)
    path = Path(code) / script
    name = script[:-3].replace("/", ".") if script.endswith(".py") else script
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"mlbuild: cannot import {script} from the project code")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    spec = load_spec()
    seed = int(spec.get("seed", 0))
    random.seed(seed)
    try:
        import numpy

        numpy.random.seed(seed)
    except ImportError:
        pass
    module = load_module(spec["code"], spec["script"])
    fn = getattr(module, "prepare", None)
    if fn is None:
        raise SystemExit(f"mlbuild: {spec['script']} defines no prepare(inputs, out, params) function")
    out = Path(os.environ["out"])
    out.mkdir()
    fn({k: Path(v) for k, v in spec["inputs"].items()}, out, dict(spec["params"]))


if __name__ == "__main__":
    main()
