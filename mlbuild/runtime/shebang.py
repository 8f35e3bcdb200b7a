"""Pointing ``#!`` lines of Python scripts at the store interpreter (a patchShebangs).

``#!/usr/bin/env python3``, ``#!/usr/bin/python`` and the like become ``#!<store python>``; the
rest of the line (arguments) is kept. Lines naming other programs are reported, not guessed at.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["patch_shebangs", "compile_tree"]


def _python_target(line: bytes) -> tuple[bool, bytes]:
    """(is a Python shebang, its arguments)."""
    words = line[2:].strip().split()
    if not words:
        return False, b""
    prog, args = words[0], words[1:]
    if os.path.basename(prog) == b"env":
        args = [a for a in args if not a.startswith(b"-")]
        if not args:
            return False, b""
        prog, args = args[0], args[1:]
    return os.path.basename(prog).startswith(b"python"), b" ".join(args)


def patch_shebangs(root: Path, python: str) -> list[str]:
    """Rewrite Python shebangs of executables under ``root``; returns those with other shebangs."""
    foreign = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file() or not path.stat().st_mode & 0o111:
                continue  # a module's `#!` line is never run: leave its bytes (and hashes) alone
            with open(path, "rb") as f:
                if f.read(2) != b"#!":
                    continue
            data = path.read_bytes()
            first, _, rest = data.partition(b"\n")
            if first[2:].strip().startswith(b"/nix/store/"):
                continue
            is_python, args = _python_target(first)
            if is_python:
                new = b"#!" + python.encode() + (b" " + args if args else b"")
                mode = path.stat().st_mode
                path.chmod(mode | 0o200)
                path.write_bytes(new + b"\n" + rest)
                path.chmod(mode)
            else:
                foreign.append(str(path))
    return foreign


def compile_tree(root: Path) -> None:
    """Byte-compile deterministically: sources get mtime 1 (what Nix gives every store file),
    then timestamp-checked .pyc files; they name no content hash, so a scratch-path build
    (`nix-build --check` without a sandbox) gives the same bytes."""
    import compileall
    import py_compile

    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                os.utime(os.path.join(dirpath, name), (1, 1), follow_symlinks=False)
    compileall.compile_dir(str(root), quiet=2, workers=1,
                           invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
