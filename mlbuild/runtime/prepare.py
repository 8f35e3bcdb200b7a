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
import traceback
from pathlib import Path
from types import ModuleType

from .stagespec import load_spec

__all__ = ["main", "load_module", "missing_module_hint"]

#: Import names whose PyPI distribution is named otherwise.
_DISTRIBUTIONS = {"sklearn": "scikit-learn", "PIL": "pillow", "cv2": "opencv-python-headless", "yaml": "pyyaml",
                  "skimage": "scikit-image", "bs4": "beautifulsoup4", "google.protobuf": "protobuf"}


def missing_module_hint(exc: BaseException, code: str = "this stage's `code = [...]`") -> str | None:
    """What to do about ``exc`` when it is a module the build lacks (not a submodule of one it has);
    ``code``: where the project's own files are listed."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.partition(".")[0]
    if top != exc.name:
        try:
            if importlib.util.find_spec(top) is not None:
                return None   # a submodule the installed version lacks: its traceback says more
        except (ImportError, ValueError):
            pass
    dist = _DISTRIBUTIONS.get(top, top)
    return (f"mlbuild: no module named {top!r} in this build, which sees only the toolchain (the distributions "
            f"mlbuild.lock pins) and the stage's own code files. If it comes from PyPI, add {dist!r} to "
            "[python].requirements in mlbuild.toml, then run `mlbuild lock` and `mlbuild prefetch`; if it is the "
            f"project's own ({top}.py or {top}/), list it in {code} in mlbuild.toml")


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
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as e:   # its traceback, then what to do about it
        hint = missing_module_hint(e)
        if hint is None:
            raise
        raise SystemExit(traceback.format_exc() + hint) from None
    return module


def _holds_nothing(out: Path) -> bool:
    """No out, or a folder with no file or link anywhere under it (empty folders alone are no
    data, as `data add` has it; a link to an input's file is)."""
    if not os.path.lexists(out):
        return True
    return out.is_dir() and not out.is_symlink() and all(p.is_dir() and not p.is_symlink() for p in out.rglob("*"))


def _unstorable(out: Path) -> str | None:
    """What under ``out`` a dataset cannot hold, as `data add` refuses it: a pipe, socket or device
    (Nix fails on it, naming no script), or a link to a path outside ``out`` and the Nix store
    (/etc/hostname, ../../x), which would point at this machine's files, in no store path, or at
    nothing on another machine. A link to an input's file (a store path) is data."""
    store = os.environ.get("NIX_STORE", "/nix/store").rstrip("/") + "/"
    for dirpath, dirs, files in os.walk(out):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                target = os.readlink(path)
                resolved = os.path.normpath(os.path.join(dirpath, target))
                if not (resolved.startswith(store) or resolved == str(out) or resolved.startswith(str(out) + "/")):
                    return (f"{os.path.relpath(path, out)}, a symlink to {target}, outside out and the Nix store; "
                            "copy the file into out (shutil.copy), or link to a file of an input")
            elif not (os.path.isfile(path) or os.path.isdir(path)):
                return (f"{os.path.relpath(path, out)}, not a file, folder or symlink (a pipe, socket or device); "
                        "write a file instead, or delete it before prepare() returns")
    return None


class _Inputs(dict[str, Path]):
    """``inputs``: a dataset the table does not list was a bare KeyError: 'images'."""

    dataset = ""

    def __missing__(self, key: str) -> Path:
        raise KeyError(f"{key!r} is not an input of dataset {self.dataset!r}, which has "
                       f"{', '.join(map(repr, self)) or 'none'}: add it to [datasets.{self.dataset}].inputs in mlbuild.toml")


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
    inputs = _Inputs({k: Path(v) for k, v in spec["inputs"].items()})
    inputs.dataset = str(spec.get("dataset", ""))
    fn(inputs, out, dict(spec["params"]))
    if _holds_nothing(out):   # `data add` refuses no data too
        raise SystemExit(f"mlbuild: prepare() in {spec['script']} wrote nothing into out, so dataset "
                         f"{spec.get('dataset', '')!r} would hold no data; write its files into the folder `out` "
                         "(out / \"train.csv\", say)")
    bad = _unstorable(out)
    if bad is not None:   # `data add` refuses it too
        raise SystemExit(f"mlbuild: dataset {spec.get('dataset', '')!r}: prepare() in {spec['script']} wrote {bad}")


if __name__ == "__main__":
    main()
