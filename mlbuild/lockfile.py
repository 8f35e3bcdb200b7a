"""mlbuild.lock: the content hashes the driver pinned (JSON, sorted, one file per project).

Layout (version 1)::

    {"version": 1,
     "requirements": [...],                   # [python].requirements it was made from
     "interpreter": {"version", "abi", "bin", "loader", "system", "executable", "prefixes",
                     "snapshot": {"name", "sha256"}},     # sha256 of the snapshot's NAR
     "wheels": [{"name", "version", "filename", "sha256"}],   # sha256 of the wheel file
     "tools": [...same shape...]}             # wheels the toolchain build itself uses

Later sections (datasets) are kept as they are when the lock is rewritten.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from . import atomic
from .errors import LockConflictError, LockError, NewerLockError
from .git import half_merged

__all__ = ["LOCK_VERSION", "read_lock", "write_lock", "wheel_entry", "unique_keys", "KeyGivenTwice"]

LOCK_VERSION = 1
_WHEEL_KEYS = ("name", "version", "filename", "sha256")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_WHEEL_FILE = re.compile(r"[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]*\.whl")   # also a valid store path name
# prefetch hands pip `name==version`: a project name (PEP 508) and a version (PEP 440's characters),
# nothing pip could read as an option (`-e ...`) or a direct reference (`x @ file:///dir#`, which
# pip builds, running the folder's setup.py at prefetch time)
_PROJECT_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+!_-]*")


def wheel_entry(entry: Any, where: str) -> dict[str, str]:
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in _WHEEL_KEYS):
        raise LockError(f"{where}: a wheel entry needs string fields {', '.join(_WHEEL_KEYS)}; got {entry!r}; "
                        f"run `mlbuild lock`")
    if not _SHA256.fullmatch(entry["sha256"]):   # else prefetch blamed the package source for the bytes
        raise LockError(f"{where}: {entry['filename']} has sha256 {entry['sha256']!r}, not 64 lowercase hex digits; "
                        f"restore the lock from git or run `mlbuild lock`")
    for key, pattern in (("name", _PROJECT_NAME), ("version", _VERSION)):
        if not pattern.fullmatch(entry[key]):
            raise LockError(f"{where}: {entry['filename']} has {key} {entry[key]!r}, which is not a project "
                            f"{key} (pip would not read it as one); restore the lock from git or run `mlbuild lock`")
    if not _WHEEL_FILE.fullmatch(entry["filename"]):   # it names a store path: a KeyError traceback in prefetch
        raise LockError(f"{where}: {entry['filename']!r} is not a wheel's file name; restore the lock from git or "
                        f"run `mlbuild lock`")
    return {k: entry[k] for k in _WHEEL_KEYS}


class KeyGivenTwice(ValueError):
    """A JSON object gave ``key`` twice (its two values as JSON text)."""

    def __init__(self, key: str, first: Any, second: Any) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, json.dumps(first), json.dumps(second)


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each given once (json.loads keeps the last of a repeated key
    without a word)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise KeyGivenTwice(k, out[k], v)
        out[k] = v
    return out


def read_lock(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LockError(f"{path} does not exist; run `mlbuild lock` in {path.parent} (a deleted one: "
                        f"`git checkout -- {path.name}` restores it with its dataset pins, which a new lock "
                        f"lacks until `mlbuild data add` pins each dataset again)")
    try:
        text = path.read_bytes().decode("utf-8-sig")   # a byte order mark, as Nix's fromJSON skips it
        data = json.loads(text, object_pairs_hook=unique_keys)
    except KeyGivenTwice as e:   # a hand-merged lock keeping both sides' lines: Nix and Python took the last
        raise LockConflictError(f"{path}: {e.key!r} is given twice in one table ({e.first!s:.80} and {e.second!s:.80}), as a "
                        f"merge that kept both sides' lines leaves it; keep the one you want, or take one side "
                        f"(`git checkout --ours -- {path.name}`) and `mlbuild data add` the other's datasets") from None
    except UnicodeDecodeError as e:
        raise LockError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); restore it from git "
                        f"(`git checkout -- {path.name}`)") from None
    except json.JSONDecodeError as e:
        merge = half_merged(path, text)
        if merge is not None:   # `git checkout -- FILE` fails on an unmerged file, and would drop both sides
            raise LockConflictError(
                f"{merge}; take one side (`git checkout --ours -- {path.name}`, or `--theirs`), then pin the other side's "
                f"datasets with `mlbuild data add NAME PATH` (`mlbuild data status` lists them), run `mlbuild lock` "
                f"if the sides' [python] settings differ, and `git add {path.name}`") from None
        raise LockError(f"{path}: not valid JSON ({e}); restore it from git (`git checkout -- {path.name}`)") from None
    version = data.get("version") if isinstance(data, dict) else None
    if type(version) is int and version > LOCK_VERSION:   # `mlbuild lock` here would write it back older
        raise NewerLockError(f"{path}: lock version {version}, written by a newer mlbuild than this one (it reads "
                             f"version {LOCK_VERSION}); use that mlbuild, or update this one (the flake's mlbuild input "
                             f"too: `nix flake lock --update-input mlbuild`)")
    if not isinstance(data, dict) or data.get("version") != LOCK_VERSION:
        raise LockError(f"{path}: lock version {data.get('version') if isinstance(data, dict) else None!r}, "
                        f"expected {LOCK_VERSION}; run `mlbuild lock`")
    for key in ("wheels", "tools"):
        entries = data.get(key, [])
        if not isinstance(entries, list):   # a hand edit or a merge: a TypeError traceback in every command
            raise LockError(f"{path}: {key} is {json.dumps(entries)[:80]}, not a list of wheels as `mlbuild lock` "
                            f"writes it (a hand edit or a merge); restore it from git (`git checkout -- {path.name}`) "
                            f"or run `mlbuild lock`")
        data[key] = [wheel_entry(w, f"{path} {key}") for w in entries]
    interpreter = data.get("interpreter")
    if not isinstance(interpreter, dict) or not isinstance(interpreter.get("snapshot"), dict):
        # "interpreter": "snapshot" passed as having one, then was an AttributeError traceback of every build
        raise LockError(f"{path}: no interpreter entry (an object with its snapshot, as `mlbuild lock` writes it); "
                        f"run `mlbuild lock`")
    pins = data.get("datasets", {})   # a hand edit or a merge: every reader's .get() was a traceback
    bad = [n for n, e in pins.items() if not isinstance(e, dict)] if isinstance(pins, dict) else None
    if bad is None or bad:
        what = f"its datasets are {json.dumps(pins)[:80]}" if bad is None else \
            f"dataset {bad[0]!r} is pinned as {json.dumps(pins[bad[0]])[:80]}"
        raise LockError(f"{path}: {what}, not {{\"sha256\": ...}} as `mlbuild data add` writes it (a hand edit or a "
                        f"merge); restore it from git (`git checkout -- {path.name}`), or delete that entry and run "
                        "`mlbuild data add NAME PATH` again")
    return data


def write_lock(path: Path, data: dict[str, Any]) -> None:
    """Write atomically (temp file + rename): a crash never leaves half a lock."""
    data = {"version": LOCK_VERSION, **{k: v for k, v in data.items() if k != "version"}}
    atomic.write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
