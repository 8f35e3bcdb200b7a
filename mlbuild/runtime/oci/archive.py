"""The image archive: one tar that ``podman load``, ``docker load`` and skopeo all read.

Layout (one copy of each blob, named by its digest, shared by both indexes)::

    oci-layout                 {"imageLayoutVersion": "1.0.0"}       OCI image layout
    blobs/sha256/<hex>         layer tars (uncompressed), the config, the OCI manifest
    index.json                 OCI index -> the manifest, with the image's name and tag
    manifest.json              docker-archive index -> config and layers (Docker >= 25 style)

A blob's digest is known only once it is written, so its tar header is written as a
placeholder and rewritten in place (the header is always 512 bytes: ``blobs/sha256/`` + 64 hex
digits fits a ustar name). Layers are therefore written once, straight into the archive.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from .layer import MTIME, DigestWriter

__all__ = ["Descriptor", "ArchiveWriter", "canonical", "MEDIA_CONFIG", "MEDIA_MANIFEST", "MEDIA_INDEX",
           "MEDIA_LAYER", "write_indexes"]

BLOCK = 512
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: media type, ``sha256:...`` digest, size in bytes."""

    media_type: str
    digest: str
    size: int

    @property
    def path(self) -> str:
        """Where the blob lies in the archive."""
        return "blobs/sha256/" + self.digest.split(":", 1)[1]

    def json(self, annotations: dict[str, str] | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if annotations:
            d["annotations"] = dict(sorted(annotations.items()))
        return d


def canonical(obj: Any) -> bytes:
    """JSON with sorted keys and no spaces: the same object always gives the same digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _header(name: str, size: int, kind: bytes = tarfile.REGTYPE, mode: int = 0o444) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.mode, ti.mtime = kind, size, mode, MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    buf = ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
    assert len(buf) == BLOCK, name
    return buf


class ArchiveWriter:
    """Writes the outer tar to a seekable binary file; ``close()`` ends it."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.written: dict[str, Descriptor] = {}
        self.file("oci-layout", canonical({"imageLayoutVersion": "1.0.0"}))
        for d in ("blobs", "blobs/sha256"):
            self.out.write(_header(d + "/", 0, tarfile.DIRTYPE, 0o755))

    def _pad(self, size: int) -> None:
        self.out.write(b"\0" * (-size % BLOCK))

    def file(self, name: str, data: bytes) -> None:
        """A small regular file (an index) at ``name``."""
        self.out.write(_header(name, len(data)))
        self.out.write(data)
        self._pad(len(data))

    def blob(self, media_type: str, write: Callable[[DigestWriter], object]) -> Descriptor:
        """A blob whose bytes ``write(stream)`` produces; returns its descriptor."""
        start = self.out.tell()
        self.out.write(b"\0" * BLOCK)
        stream = DigestWriter(self.out)
        write(stream)
        desc = Descriptor(media_type, stream.digest, stream.size)
        self._pad(stream.size)
        end = self.out.tell()
        if desc.digest in self.written:  # the same bytes again: keep one copy
            self.out.seek(start)
            self.out.truncate()
            return desc
        self.out.seek(start)
        self.out.write(_header(desc.path, desc.size))
        self.out.seek(end)
        self.written[desc.digest] = desc
        return desc

    def bytes_blob(self, media_type: str, data: bytes) -> Descriptor:
        desc = Descriptor(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
        if desc.digest not in self.written:
            self.file(desc.path, data)
            self.written[desc.digest] = desc
        return desc

    def close(self) -> None:
        self.out.write(b"\0" * (2 * BLOCK))
        self.out.flush()


def write_indexes(archive: ArchiveWriter, *, config: dict[str, Any], layers: list[Descriptor],
                  annotations: dict[str, str], name: str, tag: str) -> Descriptor:
    """Write the config blob, the OCI manifest, ``index.json`` and the docker ``manifest.json``;
    returns the manifest's descriptor (its digest is the image's digest in a registry)."""
    diff_ids = config.get("rootfs", {}).get("diff_ids")
    if diff_ids != [l.digest for l in layers]:
        raise ValueError(f"the config's rootfs.diff_ids {diff_ids} do not match the layers written")
    cfg = archive.bytes_blob(MEDIA_CONFIG, canonical(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": cfg.json(),
        "layers": [l.json() for l in layers],
        "annotations": dict(sorted(annotations.items())),
    }
    man = archive.bytes_blob(MEDIA_MANIFEST, canonical(manifest))
    ref = f"{name}:{tag}"
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [man.json({"org.opencontainers.image.ref.name": tag,
                                "io.containerd.image.name": f"docker.io/library/{ref}"})],
    }
    archive.file("index.json", canonical(index))
    docker = [{"Config": cfg.path, "RepoTags": [ref], "Layers": [l.path for l in layers]}]
    archive.file("manifest.json", canonical(docker))
    return man
