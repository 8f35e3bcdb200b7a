"""What gc keeps: release tags, the last pushes of each name, and what a lock references.

Roots live in the store folder (``mlbuild/roots/``), so every machine sharing the store sees them:

- ``tags/<NAME>``: a release tag, the store paths it names (``mlbuild store tag NAME PATH...``).
- ``pushes/<NAME>/<time>.<host>.<pid>.<rand>``: one file per push, naming the whole closure of its
  targets, written before the upload starts (a concurrent gc then already sees it) and removed again if the push fails. gc keeps the
  newest ``keep_last`` of each NAME, and the newest ``keep_last`` whole ones (a push killed with
  SIGKILL keeps its record of paths it never published); NAME defaults to the target's store path name without its
  hash (e.g. ``digits-model``). A push of the same paths again, once it succeeded, replaces the
  older record of them.
- ``.lock``: held (``flock``) by whatever reads roots and acts on them: ``store tag`` while it reads
  the tag it extends and writes it back (two at once each wrote back what it had read, and the
  other's paths lost the tag's protection without a word), ``store untag`` as it removes one; gc from reading the roots to removing
  entries; a push while it writes its records.
- a lock (``gc --lock mlbuild.lock``): the interpreter snapshot, the wheels and the local datasets
  it pins, as the fixed-output store paths Nix gives them, plus any store path written in it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterator, Sequence

from .. import atomic
from ..errors import StoreCorruptError, StoreError
from ..git import half_merged
from ..lockfile import LOCK_VERSION, KeyGivenTwice, unique_keys
from ..storepath import fixed_output_path
from .layout import FILE_MODE, Layout, make_dir, publish_bytes, read_store_file, store_command, temp_name

__all__ = ["Roots", "check_name", "read_root_file", "roots_lock", "write_tag", "remove_tag", "record_push", "replace_older_records", "read_roots", "lock_paths",
           "default_name"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_STORE_PATH = re.compile(r"/nix/store/[0-9a-z]{32}-[A-Za-z0-9+._?=-]+")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise StoreError(f"{what} {name!r} must match {_NAME.pattern} (letters, digits, . _ + -)")
    return name


def default_name(store_path: str) -> str:
    """``/nix/store/<hash>-digits-model`` -> ``digits-model``."""
    return store_path.rsplit("/", 1)[-1][33:]


def _paths_text(paths: list[str]) -> bytes:
    return ("".join(f"{p}\n" for p in sorted(set(paths)))).encode()


def _read_paths(path: Path) -> list[str]:
    try:
        return sorted(_paths_in(read_root_file(path)))
    except FileNotFoundError:
        return []


def read_root_file(path: Path) -> str:
    """The text of a tag (``roots/tags/NAME``) or push record (``roots/pushes/NAME/RECORD``).
    StoreCorruptError, naming it and the fix, for one that is not text, or has a line that is no
    store path (garbled on the store's disk): gc, tag and untag stopped with a UnicodeDecodeError
    traceback, for good; a file of NUL bytes (what a crash can leave of a file on ext4) or cut in the
    middle of a path was read as keeping none, or some, of its paths, and gc removed the rest."""
    try:
        text = read_store_file(path)
    except UnicodeDecodeError:
        raise _garbled(path, "is not text") from None
    bad = next((line.strip() for line in text.splitlines() if line.strip() and not _STORE_PATH.fullmatch(line.strip())),
               None)
    if bad is not None:
        raise _garbled(path, f"has a line that is no store path ({bad[:80]!r})")
    return text


def _garbled(path: Path, what_is_wrong: str) -> StoreCorruptError:
    if path.parent.name == "tags":
        what, fix = (f"tag {path.name}", f"`{store_command(path.parents[3], 'untag ' + path.name)}` removes it; "
                                         f"tag the release again (`mlbuild store tag {path.name} PATH...`)")
    else:
        what, fix = (f"push record of {path.parent.name}",
                     f"remove it (`rm {shlex.quote(str(path))}`) and push again what it named, if it matters")
    return StoreCorruptError(f"{path} {what_is_wrong} (garbled on the store's disk), so mlbuild cannot tell which "
                             f"paths the {what} keeps from gc, and gc removes nothing; {fix}")


@contextlib.contextmanager
def roots_lock(layout: Layout) -> Iterator[None]:
    """Hold the store's roots lock (``mlbuild/roots/.lock``), waiting for another holder on any host
    (Linux's NFS client takes a ``flock`` on the server)."""
    make_dir(layout.roots_dir)
    path = layout.roots_dir / ".lock"
    try:
        with atomic.exclusive(path, mode=FILE_MODE, waiting=f"waiting for the store's roots lock ({path}): a gc, "
                                                            f"push or tag of {layout.root} holds it"):
            yield
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.EINVAL) or e.filename != str(path):
            raise
        raise StoreCorruptError(f"{path} is {'a symbolic link' if e.errno == errno.ELOOP else 'not a file'}, not the "
                                f"store's lock file; mlbuild does not open it: remove it "
                                f"(`rm {shlex.quote(str(path))}`)") from None


def write_tag(layout: Layout, name: str, paths: list[str]) -> Path:
    """Create or replace the release tag NAME (atomically)."""
    dest = layout.roots_dir / "tags" / check_name(name, "tag")
    make_dir(dest.parent)
    publish_bytes(dest, _paths_text(paths))
    return dest


def remove_tag(layout: Layout, name: str) -> bool:
    dest = layout.roots_dir / "tags" / check_name(name, "tag")
    try:
        dest.unlink()
        return True
    except FileNotFoundError:
        return False


def record_push(layout: Layout, name: str, paths: list[str], *, replace_older: bool = True) -> Path:
    """Record a push of ``paths`` under NAME (newest last when names are sorted).

    Older records of NAME with the same paths go once the new one is written (``replace_older``;
    else :func:`replace_older_records`, once the push has succeeded): pushing the same model again
    (a CI rerun, a push where everything was there) moves it to the newest slot instead of taking
    a second one of the ``keep_last`` gc keeps.
    """
    folder = layout.roots_dir / "pushes" / check_name(name, "push name")
    make_dir(folder)
    # one reading of the clock: the seconds and their fraction read apart (and the fraction rounded
    # up to "1.000000") named a record at a second's turn before ones written earlier in that second
    now = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9)) + f".{now // 1000 % 10**6:06d}"
    dest = folder / (stamp + temp_name()[len(".tmp"):])
    publish_bytes(dest, _paths_text(paths))
    if replace_older:
        replace_older_records(dest)
    return dest


def _paths_in(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if line.strip().startswith("/")}


def replace_older_records(record: Path) -> None:
    """Remove the records older than ``record`` in its folder that name no path it does not name:
    the same paths, or some of them, as a record from before pushes named their whole closure (the
    targets alone, which an mlbuild from before then pushed: it took a second keep-last slot of the
    same model after the upgrade, for good, and pushed a distinct older model out)."""
    try:
        paths = _paths_in(read_store_file(record))
    except (OSError, StoreCorruptError, UnicodeDecodeError):
        return
    for old in record.parent.iterdir():
        if old != record and not old.name.startswith(".") and old.name < record.name:
            try:   # not through a link, nor from a FIFO a writer of the store left there (it hung the push)
                if _paths_in(read_store_file(old)) <= paths:
                    old.unlink()
            except (OSError, StoreCorruptError, UnicodeDecodeError):   # gone already (a concurrent push or
                pass                                                    # gc), unreadable, not a file: keep going


@dataclass
class Roots:
    """Every root, by where it came from; ``paths`` is their union."""

    tags: dict[str, list[str]]
    pushes: dict[str, list[list[str]]]    # name -> the kept pushes, newest first
    dropped_pushes: list[Path]            # push records older than the newest keep_last
    locks: dict[str, list[str]]

    @property
    def paths(self) -> set[str]:
        out: set[str] = set()
        for ps in self.tags.values():
            out.update(ps)
        for pushes in self.pushes.values():
            for ps in pushes:
                out.update(ps)
        for ps in self.locks.values():
            out.update(ps)
        return out


def read_roots(layout: Layout, keep_last: int, locks: Sequence[Path] = (),
               present: Collection[str] | None = None) -> Roots:
    """The roots; of each push name, the newest ``keep_last`` records, and with them the newest
    ``keep_last`` records whose paths all have an entry in the store (``present``, the store paths
    it has entries for; None: every record counts as whole). A push killed (SIGKILL, an OOM kill, a
    lost CI runner) or still running has a record of paths it has not all published: counted among
    the newest, it pushed a whole older release out of keep-last, and with keep-last 1 gc left the
    name nothing a reader could fetch."""
    # every root that cannot be read is named at once (a tag and a record garbled: one gc each)
    unread: list[StoreCorruptError] = []

    def read(f: Path) -> list[str] | None:
        try:
            return _read_paths(f)
        except StoreCorruptError as e:
            unread.append(e)
            return None

    tags: dict[str, list[str]] = {}
    tag_dir = layout.roots_dir / "tags"
    if tag_dir.is_dir():
        for f in sorted(tag_dir.iterdir()):
            if not f.name.startswith("."):
                tags[f.name] = read(f) or []
    pushes: dict[str, list[list[str]]] = {}
    dropped: list[Path] = []
    push_dir = layout.roots_dir / "pushes"
    if push_dir.is_dir():
        for folder in sorted(push_dir.iterdir()):
            if not folder.is_dir():
                continue
            records = sorted((f for f in folder.iterdir() if not f.name.startswith(".")),
                             key=lambda f: f.name, reverse=True)
            kept: list[list[str]] = []
            whole = 0
            for i, f in enumerate(records):
                if i >= keep_last and whole >= keep_last:   # not read: an old record garbled goes, as it did
                    dropped.append(f)
                    continue
                got = read(f)
                paths = got or []
                is_whole = got is not None and (present is None or all(p in present for p in paths))
                if i < keep_last or (is_whole and whole < keep_last):
                    kept.append(paths)
                else:
                    dropped.append(f)
                whole += is_whole
            pushes[folder.name] = kept
    if len(unread) == 1:
        raise unread[0]
    if unread:
        raise StoreCorruptError(f"{len(unread)} roots of the store cannot be read:\n" + "\n".join(map(str, unread)))
    return Roots(tags, pushes, dropped, {str(p): lock_paths(p) for p in locks})


def _read_lock(lock: Path) -> dict[str, Any]:
    """The JSON of an mlbuild.lock; StoreError for a file that cannot be one."""
    fix = "pass the project's mlbuild.lock to --lock"
    try:
        data: Any = json.loads(lock.read_bytes(), object_pairs_hook=unique_keys)
    except OSError as e:
        raise StoreError(f"cannot read the lock {lock} ({e.strerror or e}); {fix}") from None
    except KeyGivenTwice as e:   # json.loads kept the last: gc would have collected what the other pins
        raise StoreError(f"{lock}: {e.key!r} is given twice in one table ({e.first!s:.80} and {e.second!s:.80}), as a "
                         f"merge that kept both sides' lines leaves it, so gc cannot tell what it pins; keep the one "
                         f"you want (every mlbuild command refuses the lock until then)") from None
    except ValueError:   # not UTF-8 text, or not JSON
        merge = half_merged(lock, lock.read_bytes().decode("utf-8", "replace"))
        if merge is not None:   # the project's lock, half-merged: its fix is the merge, not another file
            raise StoreError(f"{merge}, so gc cannot tell what it pins; resolve the merge (every mlbuild command "
                             f"refuses the lock until then)") from None
        raise StoreError(f"{lock} is not an mlbuild.lock (not JSON text); {fix}") from None
    if isinstance(data, dict) and {"nodes", "root"} <= data.keys() and "interpreter" not in data:
        # Nix's lock, beside mlbuild.lock in every project: its "version": 7 read as a newer mlbuild's
        raise StoreError(f"{lock} is Nix's flake.lock (its \"nodes\" and \"root\"), not an mlbuild.lock; {fix}")
    version = data.get("version") if isinstance(data, dict) else None
    if type(version) is int and version > LOCK_VERSION:   # the project's lock, which a newer mlbuild wrote
        raise StoreError(f"{lock}: lock version {version}, written by a newer mlbuild than this one (it reads version "
                         f"{LOCK_VERSION}), so gc cannot tell what it pins; run gc with that mlbuild, or update this one")
    snap = data.get("interpreter") if isinstance(data, dict) else None
    snap = snap.get("snapshot") if isinstance(snap, dict) else None
    if not isinstance(data, dict) or data.get("version") != LOCK_VERSION or not isinstance(snap, dict):
        raise StoreError(f"{lock} is not an mlbuild.lock (no \"version\": {LOCK_VERSION} and interpreter "
                         f"snapshot, as `mlbuild lock` writes); {fix}")
    return data


def _pin(lock: Path, where: str, entry: Any, name_key: str | None) -> tuple[str, str]:
    """(sha256, name) of a lock entry; StoreError when it is not one (gc cannot tell what it pins)."""
    sha = entry.get("sha256") if isinstance(entry, dict) else None
    name = entry.get(name_key) if isinstance(entry, dict) and name_key else None
    if not isinstance(sha, str) or not _SHA256.match(sha) or (name_key and not isinstance(name, str)):
        need = f"sha256 (64 hex digits){f' and {name_key}' if name_key else ''}"
        raise StoreError(f"{lock}: {where} needs {need}, got {entry!r}, so gc cannot tell what it pins; "
                         f"fix the lock (`mlbuild lock`, `mlbuild data add`) or restore it from git")
    return sha, name if isinstance(name, str) else ""


def lock_paths(lock: Path) -> list[str]:
    """Store paths a mlbuild.lock pins: the interpreter snapshot, wheels and tools, the local
    datasets (``datasets.NAME``: recursive sha256, as `mlbuild data add` imports them) and any
    store path written in it. StoreError for a file that is not an mlbuild.lock."""
    data = _read_lock(lock)
    out: set[str] = set(_STORE_PATH.findall(json.dumps(data)))
    sha, name = _pin(lock, "interpreter.snapshot", data["interpreter"]["snapshot"], "name")
    out.add(fixed_output_path(sha, name, recursive=True))
    for key in ("wheels", "tools"):
        entries = data.get(key) or []
        for i, w in enumerate(entries if isinstance(entries, list) else [entries]):
            sha, name = _pin(lock, f"{key}[{i}]", w, "filename")
            out.add(fixed_output_path(sha, name, recursive=False))
    datasets = data.get("datasets") or {}
    if not isinstance(datasets, dict):
        raise StoreError(f"{lock}: datasets must be an object of NAME: {{sha256: ...}}, got {datasets!r}; "
                         f"restore the lock from git")
    for name, entry in datasets.items():
        sha, _ = _pin(lock, f"datasets.{name}", entry, None)
        out.add(fixed_output_path(sha, name, recursive=True))
    return sorted(out)
