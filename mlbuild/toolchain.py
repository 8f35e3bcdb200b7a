"""`mlbuild lock` and `mlbuild prefetch`: pin the toolchain's inputs, then put them in the store.

lock: pip resolves ``[python].requirements`` (and the bootstrap tools) to wheels with hashes; the
interpreter is probed and snapshotted, the snapshot added to the store and its NAR hash pinned.
prefetch: every pinned wheel and the snapshot become fixed-output store paths. Store paths are
predicted in Python (storepath.py), so when everything is present it costs one ``nix-store`` call.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _nix
from .config import LOCK_NAME, Project, project_lock, state_dir
from .errors import HashMismatchError, InterpreterError, LockConflictError, LockError, NewerLockError
from .interpreter import Identity, loader_name, make_snapshot, probe
from .lockfile import read_lock, write_lock
from .resolve import BOOTSTRAP_TOOLS, pip_download, resolve
from .runtime.hashing import sha256_file
from .storepath import fixed_output_path

__all__ = ["lock_project", "prefetch", "PrefetchResult", "check_fresh", "snapshot_into_store"]


def snapshot_into_store(ident: Identity, libraries: tuple[str, ...]) -> tuple[str, str, str]:
    """Snapshot the interpreter and add it to the store: (store path, NAR sha256, loader name)."""
    with tempfile.TemporaryDirectory(prefix="mlbuild-snapshot-") as tmp:
        try:
            folder, sha = make_snapshot(ident, Path(tmp), libraries)
        except OSError as e:   # a full /tmp: a traceback from inside shutil
            raise InterpreterError(
                f"cannot write the snapshot of {ident.executable} in {tmp}: {e.strerror} ({e.filename2 or e.filename}); "
                f"it needs room for the interpreter, its standard library and libraries (tens of MB): free space "
                f"in {tempfile.gettempdir()} or point TMPDIR at a folder with room, then run `mlbuild lock` again"
            ) from None
        loader = loader_name(folder)
        expected = fixed_output_path(sha, ident.snapshot_name, recursive=True)
        if not _nix.invalid_paths([expected]):   # in the store already (every `lock` of an unchanged Python):
            return expected, sha, loader          # the hash names it; adding it again took ~1 s
        path = _nix.add_fixed(folder, recursive=True)
    if path != expected:
        raise InterpreterError(f"Nix stored the snapshot at {path}, expected {expected}: NAR hashing disagrees")
    return path, sha, loader


def lock_project(project: Project) -> dict[str, Any]:
    """Resolve and snapshot; write mlbuild.lock (other sections kept). Returns the lock."""
    _kept_sections(project)   # a lock it will not write over is refused before resolving
    state_dir(project.root, writable=True)   # and a read-only checkout: project_lock needs it below
    ident = probe(project.python.interpreter)
    wheels = resolve(ident.executable, project.python.requirements)
    # pip was checked by the first (unless no requirements: then this one checks it)
    tools = resolve(ident.executable, BOOTSTRAP_TOOLS, tools=True, pip_checked=bool(project.python.requirements))
    _path, sha, loader = snapshot_into_store(ident, project.python.libraries)
    interpreter = {
        "implementation": ident.implementation, "version": ident.version, "abi": ident.abi,
        "bin": ident.bin, "loader": loader, "system": ident.system, "libc": ident.libc,
        "executable": ident.executable, "prefixes": sorted({ident.prefix, ident.exec_prefix}),
        "libraries": list(project.python.libraries),
        "command": _command(project),   # [python].interpreter as written: a change needs a new lock
        "snapshot": {"name": ident.snapshot_name, "sha256": sha},
    }
    # The lock again, under the project's lock: a `data add` that pinned a dataset while this one
    # resolved keeps its pin.
    with project_lock(project.root):
        lock = {**_kept_sections(project), "requirements": list(project.python.requirements),
                "interpreter": interpreter, "wheels": wheels, "tools": tools}
        write_lock(project.lock_path, lock)
    return lock


def _kept_sections(project: Project) -> dict[str, Any]:
    """What of mlbuild.lock `mlbuild lock` keeps: every section (the dataset pins) of a lock it
    can read, the dataset pins of one of another version or without an interpreter."""
    old: dict[str, Any] = {}
    if project.lock_path.is_file():
        try:
            old = read_lock(project.lock_path)
        except (LockConflictError, NewerLockError):
            raise   # its fix is resolving the merge, or a newer mlbuild: not a lock in an older format
        except LockError as e:
            # A lock of another version, or without an interpreter, still has its dataset pins (which
            # may exist nowhere else): keep them. One that is not even JSON is not written over.
            try:
                raw = json.loads(project.lock_path.read_text())
            except (ValueError, UnicodeDecodeError):
                raw = None
            if not isinstance(raw, dict) or not isinstance(raw.get("datasets", {}), dict):
                why = str(e).split("; restore it from git", 1)[0]   # the fix is said once, below
                raise LockError(f"{why}. mlbuild lock keeps the lock's dataset pins (from `data add`), so it will not "
                                f"write over a lock it cannot read: restore it from git (`git checkout -- {LOCK_NAME}`), "
                                "or delete it to lock afresh and run `mlbuild data add` for each dataset again") from None
            old = {"datasets": raw["datasets"]} if "datasets" in raw else {}
    return old


def _command(project: Project) -> str:
    """[python].interpreter as mlbuild.toml writes it (Nix compares the text, unexpanded); load_project
    has checked that it is a string."""
    return str(project.raw.get("python", {}).get("interpreter", "python3"))


def check_fresh(project: Project, lock: dict[str, Any]) -> None:
    """Refuse a lock made for other [python] settings than mlbuild.toml's (nix/project.nix too)."""
    locked = lock.get("interpreter", {})
    stale = [(key, old, new) for key, old, new in (
        ("requirements", lock.get("requirements"), list(project.python.requirements)),
        ("libraries", locked.get("libraries", []), list(project.python.libraries)),
        # locks from before mlbuild recorded it have no "command"
        ("interpreter", locked.get("command", _command(project)), _command(project)),
    ) if old != new]
    if stale:
        key, old, new = stale[0]
        if key == "requirements" and isinstance(old, list) and isinstance(new, list):
            added, removed = [r for r in new if r not in old], [r for r in old if r not in new]
            change = ("the same, in another order" if not added and not removed else
                      "; ".join(([f"added {json.dumps(added)}"] if added else [])
                                + ([f"removed {json.dumps(removed)}"] if removed else [])))
            raise LockError(f"{project.lock_path} was made for other [python].requirements than mlbuild.toml has "
                            f"({change}); run `mlbuild lock`")
        raise LockError(
            f"{project.lock_path} was made for [python].{key} {json.dumps(old)}, but mlbuild.toml has "
            f"{json.dumps(new)}; run `mlbuild lock`"
        )


@dataclass
class PrefetchResult:
    present: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)   # from the shared store


def _from_shared_store(project: Project, paths: list[str]) -> list[str]:
    """Those of ``paths`` fetched from the shared store (signatures checked, as `store pull`
    does), where one is set up and holds them: a CI runner's prefetch pip-downloaded every wheel
    (torch: hundreds of MB) that main's push had put there, and refused another machine's
    interpreter snapshot that the store held. A store that cannot be used is a warning."""
    from .errors import MlbuildError, StoreCorruptError, StoreMissingError
    from .store.config import load_store_config
    from .store.layout import Layout
    from .store.pull import pull

    cfg = load_store_config(project.root)   # a wrong [store] table is an error, as for builds
    layout = Layout(cfg.root)
    there: list[str] = []
    try:
        if not layout.is_initialised():
            return []
        there = [p for p in paths if layout.narinfo(p).is_file()]
        if there:
            pull(cfg, there)
    except (MlbuildError, OSError) as e:
        # One entry with its NAR missing or cut short stopped the whole pull, and pip fetched all 66
        # wheels, torch too: the others are fetched one by one (only after such damage; a problem of
        # the whole store, an untrusted key, would fail 66 times).
        damaged = isinstance(e, (StoreCorruptError, StoreMissingError))
        unfetched = set(_nix.invalid_paths(there)) if damaged and len(there) > 1 else set()   # one nix-store call
        left = [p for p in there if p in unfetched]
        for p in left:
            try:
                pull(cfg, [p])
            except (StoreCorruptError, StoreMissingError):   # the first is said below; pip fetches these
                pass
            except (MlbuildError, OSError):
                break
        invalid = set(_nix.invalid_paths(paths))   # once: in the comprehension it was a nix-store call a path
        got = [p for p in paths if p not in invalid]
        failed = len([p for p in there if p not in got])
        print(f"mlbuild: warning: could not fetch {f'{failed} of {len(there)} paths ' if failed else ''}from the shared "
              f"store {cfg.root}: {str(e).replace(', so nothing was fetched', '')}", file=sys.stderr)
        return got
    return there


def _add_interpreter(project: Project, lock: dict[str, Any], path: str) -> None:
    """Snapshot the host interpreter into the store as the locked snapshot ``path`` (not there yet)."""
    locked = lock["interpreter"]
    snap = locked["snapshot"]
    ident = probe(project.python.interpreter)
    differs = [f"{k} {locked.get(k)!r} -> {getattr(ident, k)!r}" for k in ("version", "executable", "libc")
               if locked.get(k) != getattr(ident, k)]
    if differs:   # another machine: the shared store may have the snapshot; a re-lock rebuilds everything
        raise InterpreterError(
            f"the interpreter {project.python.interpreter!r} differs from mlbuild.lock ({'; '.join(differs)}) "
            f"and the locked snapshot {path} is not in the Nix store; where the shared store has it, fetch it "
            f"(`mlbuild store pull {path}`; `nix build` substitutes it too) and keep the lock, else run "
            f"`mlbuild lock` to re-lock for this interpreter (a new snapshot: what was built with the old one "
            f"builds again)"
        )
    got, sha, _ = snapshot_into_store(ident, tuple(locked.get("libraries", ())))
    if got != path:
        raise InterpreterError(
            f"the snapshot of {ident.executable} hashes to sha256 {sha}, but mlbuild.lock pins "
            f"{snap['sha256']}: the interpreter or its libraries changed since the lock was made; "
            f"run `mlbuild lock` to re-lock"
        )


def prefetch(project: Project) -> PrefetchResult:
    lock = read_lock(project.lock_path)
    check_fresh(project, lock)
    result = PrefetchResult()
    snap = lock["interpreter"]["snapshot"]
    snap_path = fixed_output_path(snap["sha256"], snap["name"], recursive=True)
    wheels = {fixed_output_path(w["sha256"], w["filename"], recursive=False): w
              for w in [*lock["wheels"], *lock["tools"]]}
    missing = set(_nix.invalid_paths([snap_path, *wheels]))   # one nix-store call when all are there
    fetched = set(_from_shared_store(project, sorted(missing))) if missing else set()
    missing -= fetched
    result.fetched = [snap["name"] if p == snap_path else wheels[p]["filename"] for p in sorted(fetched)]
    if snap_path in missing:
        _add_interpreter(project, lock, snap_path)
        result.added.append(snap["name"])
    elif snap_path not in fetched:
        result.present.append(snap["name"])
    result.present += [wheels[p]["filename"] for p in wheels if p not in missing and p not in fetched]
    if missing - {snap_path}:
        _fetch_wheels(project, [wheels[p] for p in sorted(missing - {snap_path})], result)
    roots = {"interpreter-snapshot": snap_path}
    roots.update({f"wheel-{w['filename']}": p for p, w in wheels.items()})
    _nix.add_roots(roots, state_dir(project.root) / "gcroots")
    return result


def _fetch_wheels(project: Project, todo: list[dict[str, str]], result: PrefetchResult) -> None:
    python = probe(project.python.interpreter).executable
    with tempfile.TemporaryDirectory(prefix="mlbuild-wheels-") as tmp:
        pip_download(python, todo, Path(tmp))
        for w in todo:
            file = Path(tmp) / w["filename"]
            if not file.exists():
                got = sorted(p.name for p in Path(tmp).iterdir())
                raise LockError(f"pip fetched {got} for {w['name']}=={w['version']}, not the locked "
                                f"{w['filename']}; run `mlbuild lock` to re-pin")
            actual = sha256_file(file)
            if actual != w["sha256"]:
                raise HashMismatchError(f"wheel {w['filename']}", w["sha256"], actual,
                                        "The package source serves different bytes than were locked; "
                                        "check the source, then run `mlbuild lock` to re-pin.")
            _nix.add_fixed(file, recursive=False)
            result.added.append(w["filename"])
