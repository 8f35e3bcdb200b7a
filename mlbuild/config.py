"""Reading mlbuild.toml, the file that says what a project wants.

Nix reads the same file with ``builtins.fromTOML`` (nix/project.nix); both sides must agree on
its meaning, so every default lives in one place per side and is documented in the README.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import atomic
from .errors import ConfigError
from .git import half_merged, unmerged

__all__ = ["Project", "PythonConfig", "load_project", "find_project_root", "state_dir", "project_lock",
           "config_text", "find_date", "CONFIG_NAME", "LOCK_NAME"]

CONFIG_NAME = "mlbuild.toml"
LOCK_NAME = "mlbuild.lock"
STATE_NAME = ".mlbuild"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
# The keys of the tables the driver reads itself, as nix/project.nix's checkConfig takes them: a
# misspelled one (`requirement`, `[pyton]`) was ignored here, and `mlbuild lock` pinned a lock for
# settings the user had not written (no wheels, or the default python3) before Nix named the key.
_KEYS = {
    "mlbuild.toml": ("project", "python", "datasets", "models", "notebooks", "store"),
    "[project]": ("name",),
    "[python]": ("interpreter", "requirements", "libraries"),
}


@dataclass(frozen=True)
class PythonConfig:
    interpreter: str = "python3"
    requirements: tuple[str, ...] = ()
    libraries: tuple[str, ...] = ()


@dataclass(frozen=True)
class Project:
    root: Path
    name: str
    python: PythonConfig
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_NAME


def state_dir(root: Path, writable: bool = False) -> Path:
    """``root/.mlbuild``, mlbuild's own state (GC roots, stat caches, build records, reports),
    created with a ``.gitignore`` of ``*``: whichever command writes there first (prefetch, data
    add, build, exp, metrics), it never makes the worktree dirty or goes into a commit. ``writable``:
    refuse one that cannot be written (a read-only checkout) now, before the work that writes there."""
    state = root / STATE_NAME
    if state.exists() and not state.is_dir():   # mkdir's FileExistsError was a traceback in every command
        raise ConfigError(f"{state} is a file, not a folder: mlbuild keeps its state there (GC roots, stat caches, "
                          f"build and experiment records, reports); move the file away (`mv {state} {state}.old`) "
                          f"and run the command again")
    try:
        state.mkdir(exist_ok=True)
        ignore = state / ".gitignore"
        # Whole or not at all, and an empty one (left by a full disk before this was atomic) written
        # again: an empty .gitignore made every file of .mlbuild untracked, and each build refused
        # the "dirty" worktree, listing them, for good.
        if not ignore.exists() or (ignore.is_file() and ignore.stat().st_size == 0):
            atomic.write_text(ignore, "*\n")
        if writable and not os.access(state, os.W_OK):
            raise PermissionError(errno.EROFS if os.statvfs(state).f_flag & os.ST_RDONLY else errno.EACCES,
                                  "cannot be written")
    except OSError as e:
        fix = ("free space there" if e.errno in (errno.ENOSPC, errno.EDQUOT) else
               f"run it in a checkout it can write to, or make {state} writable")
        raise ConfigError(f"{state} cannot be written ({os.strerror(e.errno) if e.errno else e}): mlbuild keeps "
                          f"its state there (GC roots, stat caches, build and experiment records, reports); "
                          f"{fix}, then run the command again") from None
    return state


def project_lock(root: Path) -> contextlib.AbstractContextManager[None]:
    """Held while a command reads, changes and writes back mlbuild.toml, mlbuild.lock or
    .gitignore (``.mlbuild/lock``): see ``atomic.exclusive``."""
    return atomic.exclusive(state_dir(root, writable=True) / "lock")


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` holding mlbuild.toml."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / CONFIG_NAME).is_file():
            return d
    below = _projects_below(here)
    raise ConfigError(
        f"no {CONFIG_NAME} in {here} or any folder above it; "
        f"run mlbuild in a project folder or pass --project PATH"
        + (f" (projects below here: {', '.join(below)}; e.g. `mlbuild -C {shlex.quote(below[0])} ...`)" if below else "")
    )


def _projects_below(here: Path, most: int = 5) -> list[str]:
    """The project folders one or two levels below ``here`` (a monorepo's ``ml/``, run from its
    root), hidden folders left out: what ``--project`` could name."""
    found: list[str] = []
    for pattern in (f"*/{CONFIG_NAME}", f"*/*/{CONFIG_NAME}"):
        try:
            hits = sorted(here.glob(pattern))
        except OSError:   # a folder this user may not read: nothing to suggest from it
            continue
        found += [h.parent.relative_to(here).as_posix() for h in hits
                  if h.is_file() and not any(part.startswith(".") for part in h.relative_to(here).parts)]
    return found[:most]


def _strings(table: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}.{key} must be a list of strings, got {value!r}")
    return tuple(value)


def _check_keys(path: Path, where: str, table: dict[str, Any]) -> None:
    """nix/lib.nix's checkKeys: an unknown key is an error naming it and the keys the table takes."""
    unknown = [k for k in table if k not in _KEYS[where]]
    if unknown:
        names = ", ".join(json.dumps(k) for k in _KEYS[where])
        raise ConfigError(f"{path}: {where} has unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(json.dumps(k) for k in unknown)}; it takes {names} (see the README)")


def _render(keys: list[str | int]) -> str:
    out = ""
    for k in keys:
        out += f"[{k}]" if isinstance(k, int) else f"{'.' if out else ''}{k}"
    return out


def _toml_key(keys: list[str | int]) -> str:
    """``["models", "reg", "params", "when"]`` -> ``[models.reg.params].when`` (an array's index as ``[0]``)."""
    ints = [i for i, k in enumerate(keys) if isinstance(k, int)]
    last = ints[0] - 1 if ints else len(keys) - 1   # the key holding the array, or the value's own
    table, tail = _render(keys[:last]), _render(keys[last:])
    return f"[{table}].{tail}" if table else tail


def find_date(value: Any, keys: list[str | int]) -> tuple[list[str | int], Any] | None:
    """The first TOML date, time or date-time in ``value`` (a table, array or scalar) and its keys."""
    if isinstance(value, (datetime.date, datetime.time)):   # datetime.datetime is a date
        return keys, value
    items: list[tuple[str | int, Any]] = (list(value.items()) if isinstance(value, dict)
                                          else list(enumerate(value)) if isinstance(value, list) else [])
    for k, v in items:
        found = find_date(v, [*keys, k])
        if found is not None:
            return found
    return None


def _check_no_dates(path: Path, raw: dict[str, Any]) -> None:
    """Nix's ``builtins.fromTOML`` cannot read TOML dates and times ("Dates and times are not
    supported", naming no key, at the first build; Nix 2.8 and newer without an experimental
    feature), so a ``when = 1979-05-27`` in params passed lock and data add, then no build could run."""
    found = find_date(raw, [])
    if found is not None:
        keys, value = found
        raise ConfigError(f"{path}: {_toml_key(keys)} is a TOML date or time ({value.isoformat()}), which Nix's "
                          f'fromTOML cannot read; write it as a string: "{value.isoformat()}"')


def config_text(path: Path) -> str:
    """mlbuild.toml's text. A byte order mark (as Windows editors write) is not TOML's, but Nix's
    fromTOML skips it, and so does this; a file that is not UTF-8 is named."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start} is {data[e.start:e.start + 1]!r}); "
                          f"TOML is UTF-8: save it as UTF-8") from None


def load_project(root: Path | None = None) -> Project:
    """Load and check ``root/mlbuild.toml`` (root: the nearest project folder)."""
    root = find_project_root(root) if root is None or not (root / CONFIG_NAME).is_file() else root
    path = root / CONFIG_NAME
    text = config_text(path)
    merge = half_merged(path, text)
    half = ConfigError(f"{merge}; keep what each side needs, delete the marker lines, then `git add {CONFIG_NAME}`") \
        if merge is not None else None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        if half is not None:
            raise half from None
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    if half is not None and unmerged(path):   # markers inside a multi-line string parse: git knows the file is unmerged
        raise half
    _check_keys(path, "mlbuild.toml", raw)
    _check_no_dates(path, raw)
    proj = raw.get("project")
    if not isinstance(proj, dict) or "name" not in proj:
        other = sorted(proj) if isinstance(proj, dict) else []
        raise ConfigError(f'{path}: needs a [project] table with name = "..."'
                          + (f" ([project] has {', '.join(map(repr, other))}: misspelled?)" if other else ""))
    _check_keys(path, "[project]", proj)
    name = proj["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{path}: [project].name {name!r} must match {_NAME.pattern}")
    py = raw.get("python", {})
    if not isinstance(py, dict):
        raise ConfigError(f"{path}: [python] must be a table")
    _check_keys(path, "[python]", py)
    interpreter = py.get("interpreter", "python3")
    if not isinstance(interpreter, str) or not interpreter:
        raise ConfigError(f"{path}: [python].interpreter must be a command or path, got {interpreter!r}")
    python = PythonConfig(
        interpreter=os.path.expanduser(interpreter),
        requirements=_strings(py, "requirements", "[python]"),
        libraries=_strings(py, "libraries", "[python]"),
    )
    return Project(root=root.resolve(), name=name, python=python, raw=raw)
