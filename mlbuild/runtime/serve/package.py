"""Reading a model package folder: manifest, model config, serving settings, tensor signatures.

A package is the unit that Nix builds, validates and deploys::

    PKG/manifest.json            {"name", "hashes": {"model", "data", "code", "toolchain"}, "version"}
    PKG/model/model.safetensors  the state_dict
    PKG/model/config.json        {"module", "params", "task", "labels", "inputs", "outputs"}
    PKG/code/                    the user's sources (``config.module`` is imported from here)
    PKG/serve.json               {"max_batch_size", "max_wait_ms", "max_body_bytes"} (optional)

Everything here is cheap and touches no weights: the server validates a package before it binds
its port, then loads the weights (see ``model.py``) in the background.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ServeError",
    "PackageError",
    "TensorSpec",
    "ServeSettings",
    "Package",
    "load_package",
    "DATATYPES",
    "MODEL_VERSION",
]

#: Open Inference Protocol datatypes the server accepts, mapped to numpy dtype names
#: (little-endian, the byte order of Triton's binary tensor extension).
DATATYPES: dict[str, str] = {
    "BOOL": "|b1",
    "UINT8": "|u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "|i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}

#: A package holds exactly one version of one model; OIP clients may still name it.
MODEL_VERSION = "1"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_SETTINGS_DEFAULTS: dict[str, float] = {"max_batch_size": 32, "max_wait_ms": 2.0, "max_body_bytes": 8 << 20}
# Each setting's kind and bounds (None: unbounded), shared with the server's command line.
# The most torch intra-op threads a server takes (--threads, $MLBUILD_SERVE_THREADS): 99999 passed,
# and under a container's nproc limit (podman's 16384) the first forward pass segfaulted.
MAX_THREADS = 1024
SETTING_LIMITS: dict[str, tuple[type, float, float | None]] = {
    "max_batch_size": (int, 1, 65536), "max_wait_ms": (float, 0, 10_000), "max_body_bytes": (int, 1024, None)}


def setting_problem(key: str, value: Any) -> str | None:
    """Why ``value`` is not a valid ``key`` setting (None if it is)."""
    kind, lo, hi = SETTING_LIMITS[key]
    ok_type = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    if ok_type and not isinstance(value, bool) and lo <= value and (hi is None or value <= hi):
        return None
    bounds = f"in {lo:g}..{hi:g}" if hi is not None else f">= {lo:g}"
    return f"{key} must be {'an int' if kind is int else 'a number'} {bounds}, got {value!r}"


class ServeError(Exception):
    """Root of the serving runtime's errors (the runtime cannot import the driver's hierarchy)."""


class PackageError(ServeError):
    """The package folder is incomplete or one of its JSON files is wrong; names the file."""

    def __init__(self, path: Path | str, problem: str,
                 fix: str = "rebuild the package (`nix build .#MODEL`) or fix the file") -> None:
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}. To fix it: {fix}.")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the model: OIP name, datatype and shape (-1 = any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> str:
        """The numpy dtype string of this tensor (little-endian)."""
        return DATATYPES[self.datatype]

    def metadata(self) -> dict[str, Any]:
        """The OIP model-metadata form of this tensor."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ServeSettings:
    """Micro-batching and request limits (``serve.json``, itself from mlbuild.toml)."""

    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    max_body_bytes: int = 8 << 20


@dataclass(frozen=True)
class Package:
    """A validated package folder; no weights are read until ``model.load_model``."""

    root: Path
    name: str
    hashes: dict[str, str]
    module: str
    params: dict[str, Any]
    task: str
    labels: tuple[str, ...] | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    settings: ServeSettings = field(default_factory=ServeSettings)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path:
        return self.root / "model" / "model.safetensors"

    @property
    def code_dir(self) -> Path:
        return self.root / "code"

    @property
    def input(self) -> TensorSpec:
        """The model's single input (the server batches along its first dimension)."""
        return self.inputs[0]

    def output(self, name: str) -> TensorSpec | None:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        return None


def _read_json(path: Path, required: bool = True) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise PackageError(path, "missing")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise PackageError(path, f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise PackageError(path, f"expected a JSON object, got {type(data).__name__}")
    return data


def _tensor_specs(path: Path, key: str, raw: Any) -> tuple[TensorSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise PackageError(path, f"{key!r} must be a non-empty list of {{name, datatype, shape}}")
    specs: list[TensorSpec] = []
    for i, item in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise PackageError(path, f"{where} must be an object")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if not isinstance(name, str) or not name:
            raise PackageError(path, f"{where}.name must be a non-empty string, got {name!r}")
        if datatype not in DATATYPES:
            raise PackageError(path, f"{where}.datatype is {datatype!r}; supported: {', '.join(DATATYPES)}")
        if (not isinstance(shape, list) or not shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and (d == -1 or d > 0) for d in shape)):
            raise PackageError(path, f"{where}.shape must be a list of positive ints or -1, got {shape!r}")
        if shape[0] != -1:
            raise PackageError(path, f"{where}.shape is {shape}; the first (batch) dimension must be -1")
        if any(s.name == name for s in specs):
            raise PackageError(path, f"{where}.name {name!r} is used twice")
        specs.append(TensorSpec(name, str(datatype), tuple(shape)))
    return tuple(specs)


def _settings(path: Path, raw: dict[str, Any]) -> ServeSettings:
    unknown = sorted(set(raw) - set(_SETTINGS_DEFAULTS))
    if unknown:
        raise PackageError(path, f"unknown setting(s) {unknown}; known: {sorted(_SETTINGS_DEFAULTS)}")
    merged = {**_SETTINGS_DEFAULTS, **raw}
    for key in SETTING_LIMITS:
        if (problem := setting_problem(key, merged[key])) is not None:
            raise PackageError(path, problem)
    mbs, wait, body = merged["max_batch_size"], merged["max_wait_ms"], merged["max_body_bytes"]
    return ServeSettings(max_batch_size=mbs, max_wait_ms=float(wait), max_body_bytes=body)


def load_package(root: Path | str, overrides: dict[str, Any] | None = None) -> Package:
    """Validate the package at ``root`` (JSON files and layout, not the weights).

    ``overrides`` replaces keys of ``serve.json`` (the CLI's ``--max-batch-size`` and friends).
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise PackageError(root, "not a directory (expected a model package: manifest.json, model/, code/)")
    manifest_path = root / "manifest.json"
    manifest = _read_json(manifest_path)
    name = manifest.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise PackageError(manifest_path, f"name must match {_NAME.pattern}, got {name!r}")
    hashes = manifest.get("hashes", {})
    if not isinstance(hashes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in hashes.items()):
        raise PackageError(manifest_path, "hashes must be an object of strings")

    config_path = root / "model" / "config.json"
    config = _read_json(config_path)
    module = config.get("module")
    if not isinstance(module, str) or not _MODULE.match(module):
        raise PackageError(config_path, f"module must be a Python module name, got {module!r}")
    params = config.get("params", {})
    if not isinstance(params, dict):
        raise PackageError(config_path, f"params must be an object, got {params!r}")
    task = config.get("task", "classification")
    if not isinstance(task, str):
        raise PackageError(config_path, f"task must be a string, got {task!r}")
    labels = config.get("labels")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        raise PackageError(config_path, f"labels must be a list of strings, got {labels!r}")
    inputs = _tensor_specs(config_path, "inputs", config.get("inputs"))
    if len(inputs) != 1:
        raise PackageError(config_path, f"the server batches models with exactly one input, got {len(inputs)}")
    outputs = _tensor_specs(config_path, "outputs", config.get("outputs"))

    settings_path = root / "serve.json"
    raw_settings = {**_read_json(settings_path, required=False), **(overrides or {})}
    settings = _settings(settings_path, raw_settings)

    if not (root / "model" / "model.safetensors").is_file():
        raise PackageError(root / "model" / "model.safetensors", "missing")
    if not (root / "code").is_dir():
        raise PackageError(root / "code", "missing (the user's sources, holding the model module)")
    return Package(root=root, name=name, hashes=dict(hashes), module=module, params=params, task=task,
                   labels=tuple(labels) if labels is not None else None, inputs=inputs, outputs=outputs,
                   settings=settings, manifest=manifest)
