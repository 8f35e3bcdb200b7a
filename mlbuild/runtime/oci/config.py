"""The image configuration and its labels, from the build's spec and the package's manifest.

The labels (also the OCI manifest's annotations) say what the image holds, so a running
container can be traced to the exact data, code, weights and toolchain::

    org.opencontainers.image.title / description / version / created
    mlbuild.model.sha256 / mlbuild.data.sha256 / mlbuild.code.sha256   (the package manifest)
    mlbuild.toolchain / mlbuild.package / mlbuild.training             (store paths)
    mlbuild.validation                     the passing validation gate (a store path in the image)
    mlbuild.validation.<metric>            each gated metric's value, e.g. accuracy
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CREATED", "Runtime", "labels_for", "image_config"]

# The creation time of every image: fixed, as in nixpkgs' dockerTools (bit-reproducible).
CREATED = "1970-01-01T00:00:01Z"


@dataclass(frozen=True)
class Runtime:
    """How a container of the image runs."""

    entrypoint: list[str]
    cmd: list[str]
    user: str
    port: int
    env: list[str] = field(default_factory=list)
    workdir: str = "/tmp"


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{what} {path} cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} is not a JSON object")
    return data


# The OCI labels mlbuild sets from the package, which the user's labels may not replace (nor mlbuild.*).
OWN_OCI_LABELS = ("org.opencontainers.image.title", "org.opencontainers.image.version",
                  "org.opencontainers.image.created")


def labels_for(name: str, *, package: str, validation: str | None = None, training: str | None = None,
               extra: dict[str, str] | None = None) -> dict[str, str]:
    """The image's labels, read from ``package/manifest.json`` and ``validation/metrics.json``."""
    manifest = _read_json(Path(package) / "manifest.json", "the package manifest")
    hashes = manifest.get("hashes", {})
    missing = [k for k in ("model", "data", "code") if not hashes.get(k)]
    if missing:
        raise ValueError(f"{package}/manifest.json has no {', '.join(missing)} hash; rebuild the package")
    labels = {
        "org.opencontainers.image.title": name,
        "org.opencontainers.image.description": f"mlbuild model package {manifest.get('name', name)}: "
                                                 "Open Inference Protocol v2 server",
        "org.opencontainers.image.version": str(hashes["model"])[:12],
        "org.opencontainers.image.created": CREATED,
        "mlbuild.model.sha256": str(hashes["model"]),
        "mlbuild.data.sha256": str(hashes["data"]),
        "mlbuild.code.sha256": str(hashes["code"]),
        "mlbuild.toolchain": str(hashes.get("toolchain", "")),
        "mlbuild.package": package,
    }
    if training or manifest.get("training"):
        labels["mlbuild.training"] = str(training or manifest["training"])
    if validation:
        report = _read_json(Path(validation) / "metrics.json", "the validation report")
        gate = report.get("gate", {})
        if not gate.get("passed"):
            raise ValueError(f"{validation}/metrics.json does not record a passing gate; "
                             "an image is only made of a validated package")
        labels["mlbuild.validation"] = validation
        for check in gate.get("checks", []):
            labels[f"mlbuild.validation.{check['metric']}"] = f"{float(check['value']):.6g}"
    for k, v in (extra or {}).items():
        if str(k).startswith("mlbuild.") or str(k) in OWN_OCI_LABELS:   # nix/image.nix refuses them first
            raise ValueError(f"label {k!r} is mlbuild's own (it records the model's provenance); name yours otherwise")
        labels[str(k)] = str(v)
    return dict(sorted(labels.items()))


def image_config(rt: Runtime, *, labels: dict[str, str], diff_ids: list[str],
                 history: list[str], architecture: str = "amd64") -> dict[str, Any]:
    """The OCI/docker image configuration (``application/vnd.oci.image.config.v1+json``)."""
    if len(history) != len(diff_ids):
        raise ValueError(f"{len(history)} history entries for {len(diff_ids)} layers")
    return {
        "architecture": architecture,
        "os": "linux",
        "created": CREATED,
        "author": "mlbuild",
        "config": {
            "User": rt.user,
            "Entrypoint": rt.entrypoint,
            "Cmd": rt.cmd,
            "Env": rt.env,
            "WorkingDir": rt.workdir,
            "ExposedPorts": {f"{rt.port}/tcp": {}},
            "Labels": labels,
            "StopSignal": "SIGTERM",
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": "mlbuild", "comment": h} for h in history],
    }
