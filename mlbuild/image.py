"""Model images on the host: build ``<model>.image``, load it into podman or docker, push it.

The image is one archive in the Nix store (nix/image.nix): a docker-archive that is also an OCI
image layout. ``podman load`` and ``docker load`` read it as a docker-archive; skopeo pushes it as
``oci-archive:`` so the OCI manifest keeps its annotations (model, data and code hashes).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _nix
from .build import Progress, build_targets, check_model
from .config import Project
from .errors import MlbuildError

__all__ = [
    "ImageError", "EngineNotFoundError", "SkopeoNotFoundError", "ArchiveInfo", "Loaded", "ENGINES",
    "read_archive", "build_image", "find_engine", "load_image", "push_image", "parse_loaded",
    "destination", "load_model_image", "push_model_image",
]

ENGINES = ("podman", "docker")
TRANSPORTS = ("docker://", "oci:", "oci-archive:", "dir:", "docker-archive:", "docker-daemon:",
              "containers-storage:")


_PATH_TRANSPORTS = ("oci:", "oci-archive:", "dir:", "docker-archive:")   # the destination is a path here


class ImageError(MlbuildError):
    """An image cannot be built, read, loaded or pushed."""


class EngineNotFoundError(ImageError):
    """Neither podman nor docker is there and working."""


class SkopeoNotFoundError(ImageError):
    """skopeo (needed to push) is not installed."""


@dataclass(frozen=True)
class ArchiveInfo:
    """What an image archive holds: its reference (name:tag), config and layers."""

    path: Path
    reference: str
    manifest_digest: str
    config: dict[str, Any]
    layers: list[tuple[str, int]]  # (digest, size), bottom first
    config_size: int
    manifest_size: int
    config_digest: str = ""   # sha256:<hex> of the config: the image's ID in podman

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.config.get("config", {}).get("Labels") or {})


@dataclass(frozen=True)
class Loaded:
    engine: str
    reference: str
    archive: Path
    fresh: bool = True   # False: the engine held this very image under its name, so nothing was loaded

    @property
    def note(self) -> str:
        """What `mlbuild image load` says it did (it said "loaded" of an image it did not load)."""
        if self.fresh:
            return f"loaded {self.archive} into {self.engine}"
        return (f"{self.engine} holds the image of {self.archive} already (the same image ID, under its name): "
                "not loaded again")


def read_archive(path: Path) -> ArchiveInfo:
    """Read the indexes of an image archive (headers only: the layers are not read)."""
    try:
        with tarfile.open(path) as tar:
            def read(name: str) -> bytes:
                f = tar.extractfile(name)
                if f is None:
                    raise KeyError(name)
                return f.read()
            entry = json.loads(read("manifest.json"))[0]
            index = json.loads(read("index.json"))
            desc = index["manifests"][0]
            manifest_bytes = read("blobs/sha256/" + desc["digest"].split(":", 1)[1])
            config_bytes = read(entry["Config"])
            sizes = {m.name: m.size for m in tar.getmembers()}
    except (OSError, KeyError, ValueError, IndexError, tarfile.TarError) as e:
        raise ImageError(f"{path} is not an mlbuild image archive ({e}); build one with "
                         "`mlbuild build MODEL.image`") from None
    layers = [("sha256:" + p.rsplit("/", 1)[-1], sizes[p]) for p in entry["Layers"]]
    return ArchiveInfo(path=Path(path), reference=entry["RepoTags"][0], manifest_digest=desc["digest"],
                       config=json.loads(config_bytes), layers=layers, config_size=len(config_bytes),
                       manifest_size=len(manifest_bytes), config_digest="sha256:" + hashlib.sha256(config_bytes).hexdigest())


def build_image(project: Project, model: str, *, allow_dirty: bool = False,
                on_progress: Callable[[Progress], None] | None = None) -> Path:
    """Build (or fetch) ``<model>.image``; returns the archive's store path (an undeclared
    model is refused by build_targets' target check)."""
    summary = build_targets(project, [f"{model}.image"], allow_dirty=allow_dirty, on_progress=on_progress)
    return Path(_nix.real_path(summary.outputs[0].path))   # a chroot store's: where its files lie


def _works(engine: str) -> bool:
    probe = [engine, "version"] if engine == "podman" else [engine, "info", "--format", "{{.ServerVersion}}"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_engine(preferred: str | None = None) -> str:
    """``preferred`` (or $MLBUILD_ENGINE), else the first of podman, docker that is installed
    and answers."""
    wanted = preferred or os.environ.get("MLBUILD_ENGINE") or None
    chosen_by = "--engine" if preferred else "MLBUILD_ENGINE"
    if wanted is not None and wanted not in ENGINES:
        raise ImageError(f"container engine {wanted!r} ({chosen_by}) is not supported; use one of {', '.join(ENGINES)}")
    tried = []
    installed = False
    for engine in ([wanted] if wanted else list(ENGINES)):
        path = shutil.which(engine)
        if path is None:
            tried.append(f"{engine}: not installed")
        elif not _works(engine):
            installed = True
            tried.append(f"{engine}: installed but not working (is its engine running?)")
        else:
            return engine
    if wanted:
        fix = (f"Start {wanted}'s engine" if installed else f"Install {wanted}") + (
            ", or leave out --engine" if preferred else ", or unset MLBUILD_ENGINE") + " to use whichever works"
    else:
        fix = "Install podman (`apt-get install podman`, or run `bash .ci/setup`) or start the docker engine"
    raise EngineNotFoundError("no container engine to load the image into (" + "; ".join(tried) + "). " + fix)


def parse_loaded(output: str) -> str | None:
    """The reference in ``podman load`` / ``docker load`` output ("Loaded image: REF")."""
    for line in output.splitlines():
        for prefix in ("Loaded image(s):", "Loaded image:"):
            if line.startswith(prefix):
                return line[len(prefix):].strip().split(",")[0].strip()
    return None


def load_image(archive: Path, engine: str | None = None) -> Loaded:
    """Load the archive into podman or docker; returns the reference it was loaded as."""
    return _load(archive, find_engine(engine))


def _present(engine: str, info: ArchiveInfo) -> str | None:
    """The reference podman names the archive's image by when it holds that very image under the
    archive's name already (its ID is the digest of the archive's config, which names every layer
    by its digest), else None. `podman load` of it read and stored every layer again (~6 s for
    digits) to tag the same image. Docker always loads: its containerd image store names an image
    by its manifest's digest, not its config's."""
    if engine != "podman" or not info.config_digest:
        return None
    try:
        proc = subprocess.run([engine, "image", "inspect", "--format", "{{.Id}}{{range .RepoTags}} {{.}}{{end}}",
                               info.reference], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = proc.stdout.split() if proc.returncode == 0 else []
    if not words or "sha256:" + words[0].removeprefix("sha256:") != info.config_digest:
        return None   # not there, or the name tags another image now
    tags = words[1:]
    # as `podman load` prints it: the archive's name in full (digits:t -> docker.io/library/digits:t)
    return next((t for t in tags if t == info.reference or t.endswith("/" + info.reference)), None)


def _load(archive: Path, engine: str) -> Loaded:
    """``load_image`` into ``engine``, which find_engine chose."""
    info = read_archive(archive)
    present = _present(engine, info)
    if present is not None:
        return Loaded(engine, present, Path(archive), fresh=False)
    proc = subprocess.run([engine, "load", "-i", str(archive)], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
        raise ImageError(f"`{engine} load -i {archive}` failed (exit {proc.returncode}):\n{tail}")
    return Loaded(engine, parse_loaded(proc.stdout + "\n" + proc.stderr) or info.reference, Path(archive))


_TRANSPORT_NAMES = {t.rstrip(":/"): t for t in TRANSPORTS}   # "oci" -> "oci:", "docker" -> "docker://"
# A registry reference as Docker parses one: [domain[:port]/]name[/name...][:tag][@digest]. The first
# part is the registry only when it has a dot or a port, or is "localhost"; names are lowercase.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?")
_NAME = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"\w[\w.-]{0,127}"
_DIGEST = r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,}"
_REPOSITORY = re.compile(rf"{_NAME}(?:/{_NAME})*(?::{_TAG})?(?:@{_DIGEST})?")


def _is_registry_reference(ref: str) -> bool:
    first, slash, rest = ref.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return bool(_DOMAIN.fullmatch(first)) and bool(_REPOSITORY.fullmatch(rest))
    return bool(_REPOSITORY.fullmatch(ref))


def _lowercased(ref: str) -> str | None:
    """REF with its repository name lower-cased, when that alone makes it a registry reference
    (``Digits:v1`` -> ``digits:v1``; the registry's host name and the tag keep their case)."""
    first, slash, _ = ref.partition("/")
    domain = first + slash if slash and ("." in first or ":" in first or first == "localhost") else ""
    rest = ref[len(domain):]
    cut = min((i for i in (rest.find(":"), rest.find("@")) if i >= 0), default=len(rest))   # the tag or digest
    candidate = domain + rest[:cut].lower() + rest[cut:]
    return candidate if candidate != ref and _is_registry_reference(candidate) else None


def _not_a_reference(ref: str) -> str:
    """Why REF is not a registry reference, with the lower-cased name where that is the fix."""
    lower = _lowercased(ref)
    return (f"{ref!r} is neither a registry reference ([registry[:port]/]name[:tag], lowercase names, e.g. "
            f"registry.example.com/team/digits:v1 or localhost:5000/digits:v1) nor a skopeo destination"
            + (f" (image names are lowercase: {lower})" if lower else ""))


def _check_registry_ref(transport: str, ref: str) -> None:
    """``docker://REF``, ``docker-daemon:REF`` and a bare REF (``transport`` ""): a registry
    reference, not both tagged and pinned by digest (docker-daemon: with a tag), refused here rather
    than by skopeo once the image is built."""
    rest = ref[len(transport):]
    if not _is_registry_reference(rest):
        lower = _lowercased(rest)
        raise ImageError(f"{ref!r}: {rest!r} is not a registry reference ([registry[:port]/]name[:tag], lowercase "
                         f"names, e.g. {transport}registry.example.com/team/digits:v1)"
                         + (f"; image names are lowercase: {transport}{lower}" if lower else ""))
    last = rest.rsplit("/", 1)[-1]
    name_tag, at, _ = last.partition("@")
    if at and ":" in name_tag:
        raise ImageError(f"{ref!r} names both a tag and a digest, which skopeo cannot push to; write "
                         f"{ref[:len(ref) - len(last)]}{name_tag} (the digest it gets is printed)")
    if transport == "docker-daemon:" and (at or ":" not in name_tag):
        raise ImageError(f"{ref!r} names no tag, which docker-daemon: needs{' (not a digest)' if at else ''}; "
                         f"write e.g. {ref[:len(ref) - len(last)]}{name_tag}:v1")


def _with_transport(transport: str, rest: str) -> str:
    return transport + (rest.lstrip("/") if transport == "docker://" else rest)


def _guess(ref: str) -> str | None:
    """What a mistyped destination probably meant: ``oci/tmp/x`` -> ``oci:/tmp/x``, ``OCI:x`` ->
    ``oci:x``, ``ocii:x`` -> ``oci:x``, ``docker:digits:v1`` -> ``docker://digits:v1``."""
    first = ref.split("/", 1)[0]
    if first.lower() in _TRANSPORT_NAMES:
        return _with_transport(_TRANSPORT_NAMES[first.lower()], ref[len(first):])
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+._-]*):", ref)
    if scheme is None:
        return None
    close = difflib.get_close_matches(scheme[1].lower(), _TRANSPORT_NAMES, n=1, cutoff=0.75)
    return _with_transport(_TRANSPORT_NAMES[close[0]], ref[len(scheme[0]):]) if close else None


def destination(ref: str) -> str:
    """A skopeo destination: REF as is when it starts with a transport skopeo knows, ``docker://REF``
    for a registry reference (``registry.example.com/team/digits:v1``, ``localhost:5000/digits:v1``);
    ImageError for anything else, such as a mistyped transport or a file path, which skopeo would
    otherwise send to a registry (Docker Hub for ``oci/tmp/x``)."""
    if not ref or ref.startswith("-"):
        raise ImageError(f"{ref!r} is not an image reference; use e.g. registry.example.com/team/digits:v1")
    if ref.startswith(TRANSPORTS):
        transport = next(t for t in TRANSPORTS if ref.startswith(t))
        path = ref[len(transport):].split(":", 1)[0]
        if transport in ("docker://", "docker-daemon:"):
            _check_registry_ref(transport, ref)
        if transport in _PATH_TRANSPORTS and not path.strip():
            raise ImageError(f"{ref!r} names no path; write {transport}/path/to/folder (e.g. {transport}/tmp/digits"
                             f"{':v1' if transport != 'dir:' else ''})")
        if transport in _PATH_TRANSPORTS and path.startswith("~"):
            # No shell expands ~ after oci:, and skopeo took it as a folder named ~ here (lstat .../~)
            expanded = os.path.expanduser(path)
            ref, path = transport + expanded + ref[len(transport) + len(path):], expanded
        # skopeo makes the folder or file it writes, not the folders above it ("lstat ...: no such file")
        parent = Path(path).absolute().parent
        if transport in _PATH_TRANSPORTS and not parent.is_dir():
            raise ImageError(f"{ref!r}: the folder {parent} does not exist, and skopeo creates only the last part "
                             f"of the path; create it (`mkdir -p {parent}`) or push to a path in a folder that exists")
        return ref
    transports = ", ".join(TRANSPORTS)
    guess = _guess(ref)
    # oci/tmp/x and ocii:x are valid Docker Hub references, but far likelier mistyped transports.
    typo = ref.split("/", 1)[0].lower() in _TRANSPORT_NAMES if "/" in ref else guess is not None
    if _is_registry_reference(ref) and not typo:
        if not os.path.exists(ref):
            _check_registry_ref("", ref)
            return "docker://" + ref
        raise ImageError(f"{ref!r} is a file or folder here, not an image reference: write oci:{ref} (an OCI "
                         f"layout) or dir:{ref} to push to it, or docker://{ref} for a registry")
    if ref.startswith(("/", "./", "../", "~")):
        why = f"{ref!r} is a file path, not an image reference: write oci:{ref} (an OCI layout) or dir:{ref}"
    elif re.match(r"https?://", ref):
        why = (f"{ref!r}: a registry is named without a scheme (registry.example.com/team/digits:v1, "
               f"or docker://registry.example.com/team/digits:v1)")
    elif guess is not None:
        why = f"{ref!r} looks like a mistyped transport (did you mean {guess}?)" + (
            f"; to push to a registry by that name, write docker://{ref}" if _is_registry_reference(ref) else "")
    else:
        why = _not_a_reference(ref)
    raise ImageError(f"{why}. Skopeo destinations start with one of {transports}")


def _skopeo() -> str:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise SkopeoNotFoundError(
            "pushing needs skopeo, which is not installed: `apt-get install skopeo` (Debian, Ubuntu), "
            "`dnf install skopeo` (Fedora), or run `bash .ci/setup`; or `mlbuild image load` the image "
            "and push it with podman or docker")
    return skopeo


def push_image(archive: Path, ref: str, *, extra: Sequence[str] = (), tls_verify: bool = True) -> tuple[str, str]:
    """Copy the archive to ``ref`` (a registry by default) with skopeo; returns the destination and
    the digest of the manifest written there (what ``REF@sha256:...`` pulls; skopeo's --digestfile).
    ``tls_verify=False``: a registry that speaks plain HTTP (a local ``registry:2`` on
    localhost:5000), which skopeo, unlike docker, does not assume for localhost."""
    skopeo = _skopeo()
    read_archive(archive)
    dest = destination(ref)
    policy = [] if any(p.is_file() for p in (Path("/etc/containers/policy.json"),
                                             Path.home() / ".config/containers/policy.json")) \
        else ["--insecure-policy"]
    options = list(extra)
    if not tls_verify and dest.startswith("docker://"):
        options.append("--dest-tls-verify=false")
    if dest.startswith("docker-daemon:") and os.environ.get("DOCKER_HOST"):
        options += ["--dest-daemon-host", os.environ["DOCKER_HOST"]]   # skopeo itself ignores DOCKER_HOST
    with tempfile.TemporaryDirectory(prefix="mlbuild-push-") as tmp:
        digest_file = Path(tmp) / "digest"
        cmd = [skopeo, *policy, "copy", "--digestfile", str(digest_file), *options, f"oci-archive:{archive}", dest]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
            raise ImageError(f"`skopeo copy oci-archive:{archive} {dest}` failed (exit {proc.returncode}):\n{tail}"
                             + _daemon_hint(dest, proc.stderr + proc.stdout)
                             + _tls_hint(dest, proc.stderr + proc.stdout))
        digest = digest_file.read_text().strip() if digest_file.is_file() else ""
    return dest, digest


def _tls_hint(dest: str, output: str) -> str:
    if "first record does not look like a TLS handshake" not in output and "server gave HTTP response" not in output:
        return ""
    return (f"\nLikely cause: the registry speaks plain HTTP (a local registry:2); push with --no-tls-verify, "
            f"or mark it insecure in /etc/containers/registries.conf ([[registry]] location = "
            f"\"{dest[len('docker://'):].split('/', 1)[0]}\", insecure = true)")


def _daemon_hint(dest: str, output: str) -> str:
    """skopeo says only "read/write on closed pipe" when docker-daemon: finds no Docker engine."""
    if not dest.startswith("docker-daemon:") or not any(
            s in output for s in ("closed pipe", "docker.sock", "Cannot connect to the Docker daemon")):
        return ""
    host = os.environ.get("DOCKER_HOST")
    where = (f"{host} (DOCKER_HOST, passed to skopeo as --dest-daemon-host)" if host else
             "unix:///var/run/docker.sock (the default; set DOCKER_HOST for another engine)")
    return (f"\nLikely cause: no Docker engine answers at {where}, which docker-daemon: writes "
            f"into. Start it (`systemctl start docker`), or push to docker-archive:/path/digits.tar and "
            f"`docker load -i` that file where an engine runs")


def load_model_image(project: Project, model: str, *, engine: str | None = None, allow_dirty: bool = False,
                     on_progress: Callable[[Progress], None] | None = None) -> Loaded:
    """``mlbuild image load MODEL``: build the image, then load it."""
    check_model(project, model)
    engine = find_engine(engine)  # fail before a long build when no engine can take the image
    return _load(build_image(project, model, allow_dirty=allow_dirty, on_progress=on_progress), engine)


def push_model_image(project: Project, model: str, ref: str, *, allow_dirty: bool = False,
                     extra: Sequence[str] = (), tls_verify: bool = True,
                     on_progress: Callable[[Progress], None] | None = None) -> tuple[str, str]:
    """``mlbuild image push MODEL REF``: build the image, then push it with skopeo (destination,
    manifest digest)."""
    check_model(project, model)
    destination(ref)
    _skopeo()  # fail before a long build when nothing can push
    return push_image(build_image(project, model, allow_dirty=allow_dirty, on_progress=on_progress), ref,
                      extra=extra, tls_verify=tls_verify)
