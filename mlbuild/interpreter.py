"""Host interpreter snapshots: a Python, its standard library and every shared library it loads.

Without nixpkgs there is no Python in the store, so mlbuild copies the host's interpreter into a
folder that does not depend on where it lies (a *snapshot*), and pins it by the sha256 of its
NAR. Nix then runs the snapshot through its own copy of the dynamic loader and patches it into a
self-contained interpreter (nix/toolchain.nix, mlbuild/runtime/interpreter.py).

What goes in: ``bin/pythonX.Y``, ``lib/`` with libpython, the loader, and the ``ldd`` closure of
the binary, of every stdlib extension module and of the libraries manylinux wheels may assume
(``MANYLINUX_LIBS``) plus ``[python].libraries``; ``lib/pythonX.Y`` without site-packages, tests,
tkinter/idle, the static-library ``config-X.Y`` folder and bytecode. The copy is deterministic, so the same host gives the same hash.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import InterpreterError
from .nar import nar_sha256

__all__ = ["Identity", "probe", "make_snapshot", "MANYLINUX_LIBS", "find_interpreter"]

# Libraries a manylinux wheel may take from the system (PEP 600 policy, minus graphics stacks).
MANYLINUX_LIBS = (
    "libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libutil.so.1",
    "libresolv.so.2", "libgcc_s.so.1", "libstdc++.so.6", "libz.so.1", "libexpat.so.1",
)
_SKIP_TOP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "tkinter", "turtledemo",
             "ensurepip", "__pycache__", "lib2to3"}
_SKIP_MODULE = re.compile(r"^_tkinter|^_test|^xxlimited|^_ctypes_test")

# Run with -E -s, not -I, which Python 2 refuses ("Unknown option: -I", shown as if it did not run);
# the script drops the current folder from sys.path as -I would (a project's json.py is not imported).
# The oldest Python the build stages run on (vermin: asyncio.to_thread; str.removeprefix). Tested here
# with 3.11 (Debian 12) and 3.13 (Debian 13).
MIN_VERSION = (3, 9)

_PROBE = r"""
import sys
sys.path[:] = [p for p in sys.path if p not in ("", ".")]
if sys.version_info[0] < 3:
  print('{"python2": "%s"}' % sys.version.split()[0])
  sys.exit(0)
import json, os, platform, sysconfig
print(json.dumps({
  "executable": os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
  "version": platform.python_version(),
  "implementation": sys.implementation.name,
  "abi": "cp%d%d" % sys.version_info[:2],
  "prefix": sys.base_prefix,
  "exec_prefix": sys.base_exec_prefix,
  "stdlib": sysconfig.get_path("stdlib"),
  "platstdlib": sysconfig.get_path("platstdlib"),
  "machine": platform.machine(),
  "libc": "-".join(platform.libc_ver()),
}))
"""


@dataclass(frozen=True)
class Identity:
    """What the lock records about an interpreter (everything but its snapshot hash)."""

    implementation: str
    version: str
    abi: str
    executable: str
    prefix: str
    exec_prefix: str
    stdlib: str
    platstdlib: str
    machine: str
    libc: str

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])

    @property
    def bin(self) -> str:
        return f"python{self.minor}"

    @property
    def system(self) -> str:
        return f"{self.machine}-linux"

    @property
    def snapshot_name(self) -> str:
        return f"python-{self.version}-snapshot"


def executable(spec: str) -> str | None:
    """``spec``, a command name on PATH or a path, as the executable file it names; None if none."""
    if os.sep not in spec:
        return shutil.which(spec)
    return spec if os.path.isfile(spec) and os.access(spec, os.X_OK) else None


def not_found(spec: str) -> str:
    """What ``spec`` is not, when ``executable`` finds nothing."""
    return "an executable on PATH" if os.sep not in spec else "an executable file"


def find_interpreter(spec: str) -> str:
    """A command name on PATH or a path, as ``[python].interpreter`` gives it."""
    found = executable(spec)
    if not found:
        where = not_found(spec)
        raise InterpreterError(
            f"[python].interpreter {spec!r} is not {where}; install it or set "
            f"[python].interpreter in mlbuild.toml to a Python that exists, then run `mlbuild lock`"
        )
    return found


def probe(spec: str) -> Identity:
    """Ask the interpreter about itself."""
    exe = find_interpreter(spec)
    try:
        proc = subprocess.run([exe, "-E", "-s", "-c", _PROBE], capture_output=True, text=True)
    except OSError as e:
        raise InterpreterError(f"[python].interpreter {spec!r} ({exe}) does not run: {e.strerror}") from None
    if proc.returncode != 0:   # what it said (a pyenv shim names the versions that have it), not the probe
        said = "\n  ".join(line[:300] for line in proc.stderr.strip().splitlines()[-8:]) \
            or f"exit status {proc.returncode}"
        raise InterpreterError(f"[python].interpreter {spec!r} ({exe}) does not run:\n  {said}\n"
                               "set [python].interpreter to a Python that runs here (e.g. python3.11, or a path)")
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        data = None
    if isinstance(data, dict) and "python2" in data:
        raise InterpreterError(f"[python].interpreter {spec!r} ({exe}) is Python {data['python2']}; mlbuild needs "
                               "Python 3: set [python].interpreter to one (e.g. python3.11, or a path)")
    if not isinstance(data, dict) or set(data) != {f.name for f in fields(Identity)}:
        said = repr(proc.stdout.strip()[:200]) if proc.stdout.strip() else "nothing"
        raise InterpreterError(f"[python].interpreter {spec!r} ({exe}) is not a Python: asked for its version and "
                               f"paths, it printed {said}; set [python].interpreter to a Python 3 "
                               "(e.g. python3.11, or a path)")
    if data["implementation"] != "cpython":
        raise InterpreterError(f"{exe} is {data['implementation']}; mlbuild snapshots CPython only")
    version = tuple(int(p) for p in re.findall(r"\d+", data["version"])[:2])
    if version < MIN_VERSION:   # the build stages (mlbuild/runtime) use str.removeprefix, asyncio.to_thread
        raise InterpreterError(f"[python].interpreter {spec!r} ({exe}) is Python {data['version']}; mlbuild's build "
                               f"stages need Python {'.'.join(map(str, MIN_VERSION))} or newer: set "
                               "[python].interpreter to one (e.g. python3.11, or a path)")
    return Identity(**data)


_LDD_LINE = re.compile(r"^\s*(\S+)\s+=>\s+(\S+)\s+\(0x[0-9a-f]+\)|^\s*(/\S+)\s+\(0x[0-9a-f]+\)")


def _ldd(path: str) -> tuple[dict[str, str], str | None, list[str]]:
    """(soname -> host file, loader path, missing sonames) for one ELF file."""
    proc = subprocess.run(["ldd", path], capture_output=True, text=True)
    libs: dict[str, str] = {}
    loader = None
    missing = []
    for line in proc.stdout.splitlines():
        if "=> not found" in line:
            missing.append(line.split()[0])
            continue
        m = _LDD_LINE.match(line)
        if not m:
            continue
        if m.group(1):
            libs[m.group(1)] = m.group(2)
        else:
            loader = m.group(3)
    return libs, loader, missing


def _ldconfig() -> dict[str, str]:
    """The loader cache (``ldconfig -p``): soname -> 64-bit library path. ldconfig lives in /sbin,
    which a user's PATH often lacks: without it the snapshot silently missed libstdc++ and the
    other manylinux libraries (another lock, and a toolchain that does not build)."""
    found_at = [p for p in (shutil.which("ldconfig"), "/sbin/ldconfig", "/usr/sbin/ldconfig")
                if p and os.access(p, os.X_OK)]
    if not found_at:
        raise InterpreterError("ldconfig (the loader cache's reader, in /sbin) is not on this machine, and mlbuild "
                               "needs it to find the interpreter's libraries; install it (apt-get install libc-bin)")
    proc = subprocess.run([found_at[0], "-p"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InterpreterError(f"`{found_at[0]} -p` failed: {proc.stderr.strip()[:300]}")
    out = proc.stdout
    found: dict[str, str] = {}
    for line in out.splitlines():
        m = re.match(r"^\s*(\S+) \(([^)]*)\) => (\S+)$", line)
        if m and "64" in m.group(2):  # the 64-bit entry, not a 32-bit multilib copy
            found.setdefault(m.group(1), m.group(3))
    return found


def _copy_stdlib(src: Path, dst: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        dirnames[:] = sorted(
            d for d in dirnames
            if d != "__pycache__" and not (rel == Path(".") and (d in _SKIP_TOP or d.startswith("config-")))
        )
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in sorted(filenames):
            if name.endswith((".pyc", ".a")) or (rel.name == "lib-dynload" and _SKIP_MODULE.match(name)):
                continue
            s = Path(dirpath) / name
            if not s.exists():  # a dangling symlink
                continue
            shutil.copy2(s, dst / rel / name, follow_symlinks=True)


def make_snapshot(ident: Identity, workdir: Path, libraries: tuple[str, ...] = ()) -> tuple[Path, str]:
    """Build the snapshot folder under ``workdir``; returns (folder, NAR sha256 hex)."""
    out = workdir / ident.snapshot_name
    (out / "bin").mkdir(parents=True)
    lib = out / "lib"
    lib.mkdir()
    shutil.copy2(ident.executable, out / "bin" / ident.bin)
    _copy_stdlib(Path(ident.stdlib), lib / ident.bin)
    if ident.platstdlib != ident.stdlib and Path(ident.platstdlib).is_dir():
        _copy_stdlib(Path(ident.platstdlib), lib / ident.bin)

    roots = [str(out / "bin" / ident.bin)]
    dynload = lib / ident.bin / "lib-dynload"
    if dynload.is_dir():
        roots += [str(p) for p in sorted(dynload.iterdir()) if p.suffix == ".so"]
    system = _ldconfig()
    for name in (*MANYLINUX_LIBS, *libraries):
        host = name if os.sep in name else system.get(name)
        if host is None:
            if name in libraries:
                raise InterpreterError(
                    f"[python].libraries names {name!r}, which `ldconfig -p` does not know on this "
                    f"machine; install it or remove it from mlbuild.toml"
                )
            continue
        roots.append(host)
        shutil.copy2(host, lib / os.path.basename(name), follow_symlinks=True)

    loader = None
    for root in roots:
        libs, ld, missing = _ldd(root)
        loader = loader or ld
        if missing and root.startswith(str(dynload)):
            os.unlink(root)  # a stdlib module whose library is absent on the host: not usable
            continue
        for soname, host in libs.items():
            if not (lib / soname).exists():
                shutil.copy2(host, lib / soname, follow_symlinks=True)
    if loader is None:
        raise InterpreterError(f"{ident.executable}: ldd names no dynamic loader; is it a static binary?")
    shutil.copy2(loader, lib / os.path.basename(loader), follow_symlinks=True)
    for p in out.rglob("*"):
        if p.is_file() and not p.is_symlink():
            mode = p.stat().st_mode
            p.chmod(0o755 if mode & 0o111 else 0o644)
    return out, nar_sha256(str(out))


def loader_name(snapshot: Path) -> str:
    names = sorted(p.name for p in (snapshot / "lib").glob("ld-linux*"))
    if not names:
        raise InterpreterError(f"{snapshot}: no ld-linux loader in lib/")
    return names[0]
