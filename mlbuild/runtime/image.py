"""Builder of a model image (nix/image.nix): ``$out`` is one archive that podman, docker and
skopeo load (a docker-archive that is also an OCI image layout, see :mod:`.oci.archive`).

Two backends, one layout (see :mod:`.oci.graph` for the layer conventions):

- ``builtin``: the layers are written here from the closure's reference graph (Nix's
  ``exportReferencesGraph`` files named in the spec), deterministically.
- ``repack``: nixpkgs' ``dockerTools.streamLayeredImage`` laid the layers out. Its stream (a
  docker-archive: ``<sha256>/layer.tar`` for each layer, ``<sha256>.json``, then
  ``manifest.json``) has a config fixed at evaluation time, before the model is trained, so it
  cannot carry the weights' hash: it is read once, layers go straight into the archive as blobs
  (checked against ``rootfs.diff_ids``; only uncompressed layers, which streamLayeredImage
  writes), and the config gets mlbuild's labels, the indexes and the tag, as the built-in
  builder writes them.

The tag is the spec's, or the image's own store hash (as in dockerTools): the same inputs
always give the same tag, and another image never does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import IO, Any

from .oci.archive import MEDIA_LAYER, ArchiveWriter, Descriptor, write_indexes
from .oci.config import CREATED, Runtime, image_config, labels_for
from .oci.graph import ETC, merge, parse_registration, plan_layers
from .oci.layer import etc_entries, write_layer
from .stagespec import load_spec

__all__ = ["main", "build_layers", "repack", "ARCHITECTURES"]

# Nix system -> OCI architecture (Go's GOARCH names).
ARCHITECTURES = {"x86_64-linux": "amd64", "aarch64-linux": "arm64", "i686-linux": "386",
                 "armv7l-linux": "arm", "powerpc64le-linux": "ppc64le", "riscv64-linux": "riscv64"}


def _runtime(spec: dict[str, Any]) -> Runtime:
    return Runtime(entrypoint=list(spec["entrypoint"]), cmd=list(spec["cmd"]),
                   user=f"{int(spec['uid'])}:{int(spec['gid'])}", port=int(spec["port"]),
                   env=list(spec.get("env", [])), workdir=spec.get("workdir", "/tmp"))


def _mib(n: int) -> str:
    return f"{n / 2**20:9.1f} MiB"


def build_layers(spec: dict[str, Any], archive: ArchiveWriter, labels: dict[str, str], tag: str) -> Descriptor:
    """The built-in backend: plan the layers of the closure and write them, then the indexes."""
    graph = merge(parse_registration(Path(g).read_text(), g) for g in spec["graphs"])
    model = [spec["training"]] if spec.get("training") else []
    plan = plan_layers(graph, first=[spec["toolchain"]], model=model, max_layers=int(spec["max_layers"]))
    etc = etc_entries(spec["user"], int(spec["uid"]), int(spec["gid"]))
    layers: list[Descriptor] = []
    for i, layer in enumerate(plan, 1):
        if layer.kind == ETC:
            desc = archive.blob(MEDIA_LAYER, lambda out: write_layer(out, extras=etc))
        else:
            desc = archive.blob(MEDIA_LAYER, lambda out, l=layer: write_layer(out, l.paths, dedup=l.dedup))  # type: ignore[misc]
        layers.append(desc)
        print(f"mlbuild image: layer {i:>3}/{len(plan)} {layer.kind:<5} {_mib(desc.size)} {desc.digest[7:19]} "
              f"{layer.describe()}", file=sys.stderr)
    config = image_config(_runtime(spec), labels=labels, diff_ids=[l.digest for l in layers],
                          history=[l.describe() for l in plan],
                          architecture=ARCHITECTURES.get(spec.get("system", "x86_64-linux"), "amd64"))
    return write_indexes(archive, config=config, layers=layers, annotations=labels, name=spec["name"], tag=tag)


_SMALL = 16 << 20


def repack(stream: IO[bytes], archive: ArchiveWriter, *, name: str, tag: str,
           labels: dict[str, str]) -> Descriptor:
    """Copy the docker-archive read from ``stream`` into ``archive`` with ``labels`` added to
    its config and the tag ``name:tag``; returns the OCI manifest's descriptor."""
    blobs: dict[str, Descriptor] = {}
    small: dict[str, bytes] = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            f = tar.extractfile(member)
            assert f is not None
            if member.name.endswith(".tar"):
                blobs[member.name] = archive.blob(
                    MEDIA_LAYER, lambda out, f=f: shutil.copyfileobj(f, out, 1 << 20))  # type: ignore[misc]
            elif member.size <= _SMALL:
                small[member.name] = f.read()
    if "manifest.json" not in small:
        raise ValueError("the image stream has no manifest.json: it is not a docker-archive")
    entries = json.loads(small["manifest.json"])
    if not isinstance(entries, list) or len(entries) != 1:
        raise ValueError(f"the image stream's manifest.json lists {len(entries)} images; expected one")
    entry = entries[0]
    if entry["Config"] not in small:
        raise ValueError(f"the image stream has no config {entry['Config']}")
    config: dict[str, Any] = json.loads(small[entry["Config"]])
    missing = [p for p in entry["Layers"] if p not in blobs]
    if missing:
        raise ValueError(f"the image stream's manifest.json names layers it does not hold: {missing}")
    layers = [blobs[p] for p in entry["Layers"]]
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    if diff_ids != [l.digest for l in layers]:
        raise ValueError("the image stream's layers do not match its rootfs.diff_ids "
                         "(compressed layers are not supported: use streamLayeredImage's plain tar)")
    inner = config.setdefault("config", {})
    inner["Labels"] = {**(inner.get("Labels") or {}), **labels}
    for h in config.get("history", []):
        h["created"] = CREATED
    config["created"] = CREATED
    return write_indexes(archive, config=config, layers=layers, annotations=labels, name=name, tag=tag)


def _repack(spec: dict[str, Any], archive: ArchiveWriter, labels: dict[str, str], tag: str) -> Descriptor:
    proc = subprocess.Popen([spec["stream"]], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        manifest = repack(proc.stdout, archive, name=spec["name"], tag=tag, labels=labels)
    finally:
        proc.stdout.close()
        code = proc.wait()
    if code != 0:
        raise SystemExit(f"mlbuild image: {spec['stream']} (streamLayeredImage) exited with {code}")
    return manifest


def main() -> None:
    spec = load_spec()
    out = Path(os.environ["out"])
    tag = spec.get("tag") or out.name.split("-", 1)[0]
    try:
        labels = labels_for(spec["name"], package=spec["package"], validation=spec.get("validation"),
                            training=spec.get("training"), extra=spec.get("labels") or {})
        with open(out, "wb") as f:
            archive = ArchiveWriter(f)
            if spec["backend"] == "builtin":
                manifest = build_layers(spec, archive, labels, tag)
            elif spec["backend"] == "repack":
                manifest = _repack(spec, archive, labels, tag)
            else:
                raise ValueError(f"unknown image backend {spec['backend']!r}; expected builtin or repack")
            archive.close()
    except ValueError as e:
        raise SystemExit(f"mlbuild image: {e}") from None
    print(f"mlbuild image: {spec['name']}:{tag} manifest {manifest.digest} ({_mib(out.stat().st_size).strip()})",
          file=sys.stderr)


if __name__ == "__main__":
    main()
