"""`[datasets.NAME]` in mlbuild.toml, and `mlbuild data add|status|diff`.

Three kinds of source:

- ``path = "data/x"``: a local file or folder; ``mlbuild data add NAME PATH`` imports it and
  pins its NAR sha256 in ``mlbuild.lock`` (``datasets.NAME``).
- ``url = "https://..."`` with ``sha256 = "<hex>"``: a fixed-output fetch by Nix (flat hash).
- ``prepare = "prepare.py"`` with ``inputs = [...]``: a derived dataset, built by Nix in the
  toolchain (see mlbuild/runtime/prepare.py); cached and traced like any derivation.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .. import _nix, atomic, git
from ..config import STATE_NAME, Project, config_text, project_lock, state_dir
from ..errors import ConfigError, DataError
from ..lockfile import read_lock, write_lock
from ..runtime.hashing import sha256_file
from ..storepath import fixed_output_path
from . import statcache
from .importer import Imported, check_links, import_path, not_storable

__all__ = ["Dataset", "DataError", "datasets", "add", "Added", "toml_with_path", "toml_string", "shown_name", "status", "diff",
           "Status", "FileDiff"]

_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Dataset:
    name: str
    kind: str                      # "path" | "url" | "prepare"
    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    prepare: str | None = None
    inputs: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")   # nix/project.nix's checkNames
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$")   # nix/dataset.nix's


def _one(name: str, table: Any) -> Dataset:
    where = f"[datasets.{name}]"
    if not _NAME.match(name):   # as the Nix library refuses it (project.nix): status told to build `datasets..x`
        raise ConfigError(f"[datasets.{json.dumps(name)}]: {json.dumps(name)} is not a valid name; use letters, "
                          f"digits, - and _ (it becomes the target datasets.NAME and a store path's name)")
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    kinds = [k for k in ("path", "url", "prepare") if k in table]
    if len(kinds) != 1:
        raise ConfigError(f"{where} needs exactly one of path, url or prepare; it has {kinds or 'none'}")
    kind = kinds[0]
    if kind == "url":
        sha = table.get("sha256")
        # in either case, as Nix reads it (PowerShell's Get-FileHash prints upper case): said as 64
        # hex digits, refused, an upper-case one was no help
        if not isinstance(sha, str) or not _HEX.match(sha.lower()):
            raise ConfigError(f"{where}: url datasets need sha256 = \"<64 hex digits>\" (the file's sha256), "
                              f"got {sha!r}")
        url = table["url"]
        if not isinstance(url, str) or not _URL.match(url):   # as nix/dataset.nix refuses it
            raise ConfigError(f"{where}.url is {json.dumps(url)}, not a URL (scheme://...: https://, http://, file:///); "
                              f"a file of this machine is a local dataset: path = \"...\" instead of url and sha256, "
                              f"pinned by `mlbuild data add {name} PATH`")
        return Dataset(name, kind, url=url, sha256=sha.lower())
    if kind == "prepare":
        inputs = table.get("inputs", [])
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise ConfigError(f"{where}: inputs must be a list of dataset names, got {inputs!r}")
        return Dataset(name, kind, prepare=str(table["prepare"]), inputs=tuple(inputs),
                       params=dict(table.get("params", {})))
    return Dataset(name, kind, path=str(table["path"]))


def datasets(project: Project) -> dict[str, Dataset]:
    tables = project.raw.get("datasets", {})
    if not isinstance(tables, dict):
        raise ConfigError("[datasets] must be a table of [datasets.NAME] tables")
    found = {name: _one(name, t) for name, t in tables.items()}
    for ds in found.values():
        for i in ds.inputs:
            if i not in found:
                raise ConfigError(f"[datasets.{ds.name}] inputs names {i!r}, which is not a dataset; "
                                  f"declared: {', '.join(sorted(found))}")
    return found


def _get(project: Project, name: str) -> Dataset:
    found = datasets(project)
    if name not in found:
        raise DataError(f"no dataset {name!r} in {project.config_path}; declared: {', '.join(sorted(found)) or 'none'}")
    return found[name]


def shown_name(path: str) -> str:
    """A file name as one line: quoted, with escapes, when it holds a control character (a file
    named "new\\nline.txt" printed as two lines, the first naming a file "new"), a quote or a
    backslash (else read as a quoted name), as git quotes it: data diff's names and symlink targets.
    Bytes that are not UTF-8 (held as surrogates) are shown as git shows them, \\ooo octal escapes."""
    if not any(ord(c) < 32 or ord(c) == 127 or c in '"\\' or 0xDC80 <= ord(c) <= 0xDCFF for c in path):
        return path
    return "".join(f"\\{ord(c) - 0xDC00:03o}" if 0xDC80 <= ord(c) <= 0xDCFF else json.dumps(c, ensure_ascii=False)[1:-1]
                   for c in path).join('""')


def toml_string(s: str) -> str:
    """``s`` as a TOML basic string."""
    escaped = (f"\\{c}" if c in '"\\' else f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c
               for c in s)
    return '"' + "".join(escaped) + '"'


def _key(key: str) -> str:
    """A regex for the TOML key ``key``, bare or quoted."""
    k = re.escape(key)
    return f"(?:{k}|\"{k}\"|'{k}')"


def toml_with_path(text: str, name: str, path: str, config: Path) -> str:
    """mlbuild.toml's ``text`` declaring ``[datasets.NAME] path = PATH``: the table appended when
    it is missing, else its ``path = ...`` line rewritten, every other byte kept (a text edit:
    comments survive). DataError naming the line to edit where that cannot be done safely (an
    inline table, a dotted key, a multi-line string)."""
    try:
        path.encode()
    except UnicodeEncodeError:
        raise DataError(f"{path!r} is not valid UTF-8, so mlbuild.toml cannot name it; rename it, "
                        "then run data add again") from None
    value = toml_string(path)
    old = tomllib.loads(text)
    tables = old.get("datasets", {})
    expected = {**old, "datasets": {**tables, name: {**tables.get(name, {}), "path": path}}}
    lines = text.splitlines(keepends=True)
    candidates = []   # texts that may declare it; the first that parses as expected is taken
    at: int | None = None      # the line declaring the dataset, named when the edit is refused
    if name not in tables:
        nl = "\r\n" if "\r\n" in text else "\n"   # a file a Windows editor saved keeps its line ends
        sep = "" if not text or text.endswith("\n") else nl
        candidates.append(f"{text}{sep}{nl}[datasets.{name}]{nl}path = {value}{nl}")
    else:
        header = re.compile(rf"\s*\[\s*{_key('datasets')}\s*\.\s*{_key(name)}\s*\]\s*(#.*)?")
        at = next((i for i, line in enumerate(lines) if header.fullmatch(line.rstrip("\r\n"))), None)
        if at is None:   # not a [datasets.NAME] table: find the line that declares it otherwise
            key = re.compile(rf"\s*\[?\s*({_key('datasets')}\s*\.\s*)?{_key(name)}\s*[.=\]]")
            at = next((i for i, line in enumerate(lines) if key.match(line)), None)
        else:
            path_line = re.compile(rf"\s*{_key('path')}\s*=\s*(?P<value>\"(?:[^\"\\]|\\.)*\"|'[^']*')\s*(#.*)?")
            for i in range(at + 1, len(lines)):
                body = lines[i].rstrip("\r\n")
                if body.lstrip().startswith("["):   # the next table
                    break
                m = path_line.fullmatch(body)
                if m:
                    edited = body[:m.start("value")] + value + lines[i][m.end("value"):]
                    candidates.append("".join(lines[:i] + [edited] + lines[i + 1:]))
    for new in candidates:
        try:
            if tomllib.loads(new) == expected:
                return new
        except tomllib.TOMLDecodeError:
            pass
    where = f"{config}:{at + 1} (`{lines[at].strip()}`)" if at is not None else str(config)
    raise DataError(f"{where}: data add cannot rewrite the declaration of dataset {name!r} safely; "
                    f"write path = {value} there yourself, then run data add again")


@contextlib.contextmanager
def _reading(name: str, data: Path) -> Iterator[None]:
    """An OSError reading a file of dataset ``name`` (under ``data``) as a DataError naming the file
    and the fix: a file or folder this user may not read (mode 000, an NFS mount squashing root),
    one deleted or written while it was read."""
    from ..nar import ChangedWhileReadError

    try:
        yield
    except ChangedWhileReadError as e:   # a job still writing its output
        raise DataError(f"{e}: something is writing to it; run the command again once nothing does "
                        f"(reading dataset {name!r})") from None
    except OSError as e:
        where = os.path.abspath(os.fsdecode(e.filename)) if e.filename is not None else ""
        tops = {os.path.abspath(data), str(data.resolve())}   # as given (a symlink) and as followed
        if not any(where == t or where.startswith(t.rstrip(os.sep) + os.sep) for t in tops):
            raise   # not one of the data's files (the store, .mlbuild): not this message's business
        if e.errno in (errno.EACCES, errno.EPERM):
            fix = (f"let this user read it (`chmod -R u+rX {data}`, or a group it is in), or run as a user who "
                   "may, then run the command again")
        elif e.errno == errno.ENOENT:
            fix = "it went away while it was read: run the command again once nothing changes the files"
        else:
            fix = "check the disk or mount it is on, then run the command again"
        raise DataError(f"{where}: {e.strerror} (reading dataset {name!r}); {fix}") from None


def local_sha256(root: Path, name: str, local: Path) -> str:
    """The NAR sha256 of dataset ``name``'s files at ``local`` as they are now: the stat cache's
    when their stat facts match, else hashed and remembered, so a changed or freshly copied dataset
    is read once, then known by a walk of lstat calls. NotStorableError for a pipe, socket or
    device; OSError when it cannot be read."""
    from ..nar import nar_sha256

    local = local.resolve()   # a declared symlink: its content is the data, as `data add` hashed it
    sha, facts = statcache.lookup(root / STATE_NAME, name, local)
    if sha is None:
        sha = nar_sha256(str(local))
        try:
            statcache.remember(state_dir(root), name, local, facts, sha)
        except (ConfigError, OSError):   # a cache: a read-only checkout hashes each time, as without one
            pass
    return sha


@dataclass(frozen=True)
class Added:
    imported: Imported | None    # None: unchanged, nothing imported
    sha256: str
    path: str                    # as declared: relative to the project, or absolute outside it
    moved_from: str | None       # the path declared before, when this add changed it
    pinned_before: str | None = None   # the lock's sha256 before this add


# The files that make a project (what git must hold for `nix build`) and mlbuild's and git's own folders
_PROJECT_FILES = ("mlbuild.toml", "mlbuild.lock", "flake.nix", "flake.lock")
_OWN_FOLDERS = (".git", STATE_NAME)


def _not_the_project_s_own(project: Project, source: Path) -> None:
    """DataError where ``source`` (resolved) is one of the project's own files or in git's or
    mlbuild's folders: `data add conf mlbuild.toml` before the first commit pinned it and wrote
    `/mlbuild.toml` into .gitignore, so the project's config never went into git (and every
    build, which reads the commit, failed)."""
    here = project.root.resolve()
    repo = git.repo_root(project.root)
    folders = [here / f for f in _OWN_FOLDERS] + ([repo.resolve() / ".git"] if repo is not None else [])
    inside = next((f for f in folders if source == f or f in source.parents), None)
    fix = "give the file or folder that holds the data (data/, say)"
    if inside is not None:
        owner = "git" if inside.name == ".git" else "mlbuild"
        where = f"{owner}'s own folder" if source == inside else f"in {owner}'s own folder ({inside})"
        raise DataError(f"{source} is {where}, not data; {fix}")
    if source.parent == here and source.name in _PROJECT_FILES:
        raise DataError(f"{source} is the project's own {source.name}, not data: data add would write it into "
                        f".gitignore, keeping it out of git, where builds read the project; {fix}")


def add(project: Project, name: str, path: Path) -> Added:
    """Import ``path`` as dataset ``name``, declare and pin it. Every check that can fail (the
    import included) runs before anything is written into the project."""
    if not re.match(r"^[A-Za-z][A-Za-z0-9_-]*$", name):
        raise DataError(f"dataset name {name!r} must start with a letter and hold only letters, digits, - and _")
    path = path if path.is_absolute() else (Path.cwd() / path)
    if not path.exists():
        raise DataError(f"{path} does not exist; give the file or folder holding dataset {name!r}")
    here = project.root.resolve()
    if path.resolve() == here or path.resolve() in here.parents:   # `data add all .`: git's advice untracked it all
        raise DataError(f"{path} holds the project itself ({project.config_path}), its code and git repository; "
                        f"a dataset is the data alone: give the folder or file that holds it (data/, say)")
    _not_the_project_s_own(project, path.resolve())
    with _reading(name, path):
        empty = _empty(path)
    if empty:
        what = "an empty file" if path.is_file() else "a folder without a single file in it"
        raise DataError(f"{path} is {what}: dataset {name!r} would hold no data. Put the data there first "
                        f"(or give the file or folder that holds it), then run `mlbuild data add {name} PATH` again")
    if git.is_tracked(path):
        owner, ours = git.repo_root(path.resolve()), git.repo_root(project.root)
        if owner is not None and (ours is None or owner.resolve() != ours.resolve()):   # a clone, a submodule
            raise DataError(f"{path} is tracked by the git repository at {owner}, not the project's (a clone or a "
                            "submodule); data never goes into git, and `git rm --cached` cannot untrack it from the "
                            "project. Copy the files (not its .git) to a folder no git repository tracks, and run "
                            "data add on that")
        raise DataError(f"{path} is tracked by git; data never goes into git. Untrack it first: "
                        f"`git rm -r --cached {path}` (the files stay on disk), then run data add again")
    table = project.raw.get("datasets", {}).get(name)
    existing = _one(name, table) if table is not None else None
    if existing is not None and existing.kind != "path":
        raise DataError(f"dataset {name!r} is a {existing.kind} dataset; `data add` is for local files and folders")
    root = project.root.resolve()
    source = path.resolve()   # a symlinked file or folder: its content is the data
    if table is None:   # a new name for data another dataset declares: most likely a typo
        for other, t in (project.raw.get("datasets") or {}).items():
            declared_path = t.get("path") if isinstance(t, dict) else None
            if isinstance(declared_path, str) and (root / declared_path).resolve() == source:
                raise DataError(f"{path} is dataset {other!r} already, and mlbuild.toml declares no {name!r}: "
                                f"to pin its new version, run `mlbuild data add {other} {declared_path}`. A second "
                                f"dataset over the same data is declared by hand: [datasets.{name}] "
                                f"path = \"{declared_path}\" in mlbuild.toml, then `mlbuild data add {name} "
                                f"{declared_path}`")
    rel = source.relative_to(root).as_posix() if source.is_relative_to(root) else str(source)
    declared = existing.path if existing is not None else None
    config = None     # mlbuild.toml's new text, when the declaration changes
    if declared is not None and (root / declared).resolve() == source:
        rel = declared   # the same file or folder, however it is written: the declaration stays
    else:
        config = toml_with_path(config_text(project.config_path), name, rel, project.config_path)
    ignore = git.ignore_entry(root, path)
    # a link in the project to the data (data/raw -> /mnt/raw): git sees the link, untracked, and
    # builds refused the tree as dirty
    link = path.is_symlink() and git.ignore_entry(root, path, follow=False) is not None
    cache = root / STATE_NAME
    read_lock(project.lock_path)   # one it cannot read is refused before the import
    state_dir(root, writable=True)   # so is a read-only checkout: the pin could not be written after it
    with _reading(name, source):
        sha, facts = statcache.lookup(cache, name, source)
    result = None
    if sha is None or _nix.invalid_paths([fixed_output_path(sha, name, recursive=True)]):
        with _reading(name, source):   # DataError for what cannot go in: nothing is written then
            result = import_path(source, name)
        sha = result.sha256
    # Only writes from here on, under the project's lock: another `data add` (or `mlbuild lock`)
    # may have written mlbuild.toml, mlbuild.lock or .gitignore since they were read above, so
    # each is read again there and changed, not written back as it was read (its pin was lost).
    with project_lock(root):
        _nix.add_roots({f"dataset-{name}": fixed_output_path(sha, name, recursive=True)}, state_dir(root) / "gcroots")
        if result is not None:
            statcache.remember(cache, name, source, facts, sha)
        if config is not None:
            # a byte order mark (a Windows editor's), which config_text reads past, is kept as the line ends are
            bom = "\ufeff" if project.config_path.read_bytes().startswith(b"\xef\xbb\xbf") else ""
            atomic.write_text(project.config_path, bom + toml_with_path(config_text(project.config_path), name, rel,
                                                                        project.config_path))
        lock = read_lock(project.lock_path)
        entry: dict[str, Any] = {"sha256": sha, "kind": "path"}
        before = lock.get("datasets", {}).get(name, {})
        if result is not None:
            entry.update(files=result.files, size=result.size)
        elif before.get("sha256") == sha:
            entry.update({k: v for k, v in before.items() if k in ("files", "size")})
        else:   # back to a version the store holds (an edit undone): its own counts, not the last pin's
            files, size = _tree_stats(Path(fixed_output_path(sha, name, recursive=True)))
            entry.update(files=files, size=size)
        lock.setdefault("datasets", {})[name] = entry
        write_lock(project.lock_path, lock)
        if ignore is not None:   # asked again: another add may have written the same line since
            git.ignore(root, path)
        if link:
            git.ignore(root, path, follow=False)
    return Added(result, sha, rel, declared if config is not None else None, before.get("sha256"))


def _empty(path: Path) -> bool:
    """An empty file, or a folder without a regular file under it (empty folders, symlinks: the
    links a dataset may hold point at its own files); stops at the first file, so a big folder
    costs one directory read."""
    if not path.is_dir():
        return path.is_file() and path.stat().st_size == 0
    def unreadable(e: OSError) -> None:   # os.walk skips a folder it cannot list: it held no file, it said
        raise e

    for folder, _dirs, names in os.walk(path, onerror=unreadable):
        if any(os.path.isfile(p) and not os.path.islink(p) for p in (os.path.join(folder, n) for n in names)):
            return False
    return True


def _tree_stats(root: Path) -> tuple[int, int]:
    """Regular files under ``root`` and their total size, as an import counts them."""
    if not root.is_dir():
        return 1, root.stat().st_size
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            if stat.S_ISREG(st.st_mode):
                files, size = files + 1, size + st.st_size
    return files, size


@dataclass(frozen=True)
class Status:
    name: str
    kind: str
    state: str        # "present" | "shared" | "missing" | "changed" | "unlocked" | "derived" | "unstorable"
                      # | "unreadable"
    sha256: str | None
    detail: str = ""


def status(project: Project, shared: "set[str] | None" = None) -> list[Status]:
    """Each dataset: present locally, in the shared store, missing, changed on disk, or holding
    what no store can (unstorable: a pipe, socket or device)."""
    lock = read_lock(project.lock_path)
    out = []
    declared = sorted(datasets(project).items())
    pins = {name: ds.sha256 if ds.kind == "url" else lock.get("datasets", {}).get(name, {}).get("sha256")
            for name, ds in declared if ds.kind != "prepare"}
    paths = {name: fixed_output_path(sha, name, recursive=ds.kind == "path")
             for name, ds in declared if (sha := pins.get(name)) is not None}
    absent = set(_nix.invalid_paths(list(paths.values())))   # one nix-store call for every dataset
    for name, ds in declared:
        if ds.kind == "prepare":
            out.append(Status(name, ds.kind, "derived", None, f"prepare {ds.prepare} over {', '.join(ds.inputs)}"))
            continue
        sha = pins[name]
        if sha is None:
            out.append(Status(name, ds.kind, "unlocked", None, f"run `mlbuild data add {name} {ds.path}`"))
            continue
        path = paths[name]
        other = ""   # the files on disk are not the pinned version, which the store lacks
        if ds.kind == "path" and ds.path is not None:
            local = project.root / ds.path
            if local.exists():
                from ..nar import NotStorableError
                try:
                    with _reading(name, local):
                        cached = local_sha256(project.root, name, local)
                except NotStorableError as e:   # a pipe, socket or device: `data add` refuses it too
                    out.append(Status(name, ds.kind, "unstorable", sha, f"{e}; move it out of {ds.path}"))
                    continue
                except DataError as e:   # builds skip it, so this is where it is said
                    out.append(Status(name, ds.kind, "unreadable", sha, str(e)))
                    continue
                if cached != sha:
                    try:   # a link `data add` refuses: "changed, `data add` pins it" sent the user into that
                        check_links(local)
                    except DataError as e:
                        out.append(Status(name, ds.kind, "unstorable", sha, str(e)))
                        continue
                    if path not in absent:
                        out.append(Status(name, ds.kind, "changed", sha,
                                          f"{ds.path} differs from the lock; `mlbuild data add {name} {ds.path}` "
                                          f"pins the new version"))
                        continue
                    # A pin from another branch or a teammate, over older files here: `data add` would
                    # pin those back over it, and builds need the pinned version, which is missing.
                    other = (f"; {ds.path} holds other files than the pinned version (`mlbuild data add {name} "
                             f"{ds.path}` pins them instead)")
        if path not in absent:
            out.append(Status(name, ds.kind, "present", sha, path))
        elif shared is not None and path.split("/")[-1][:32] in shared:
            out.append(Status(name, ds.kind, "shared", sha, f"run `mlbuild data pull {name}`{other}"))
        elif ds.kind == "url":   # `data add` refuses a url dataset; a build fetches it
            out.append(Status(name, ds.kind, "missing", sha, f"run `mlbuild build datasets.{name}` (it fetches "
                                                              f"{ds.url}), or `mlbuild data pull {name}`"))
        elif shared is not None:   # not here, and the shared store was asked: pulling cannot help
            out.append(Status(name, ds.kind, "missing", sha, f"neither here nor in the shared store: run "
                                                              f"`mlbuild data add {name} PATH` with its files, or "
                                                              f"`mlbuild data push {name}` where it is present{other}"))
        else:
            out.append(Status(name, ds.kind, "missing", sha, f"not here, and no shared store is set up to pull "
                                                              f"it from: run `mlbuild data add {name} PATH` with its "
                                                              "files, or set up the shared store (MLBUILD_STORE) and "
                                                              f"`mlbuild data pull {name}`{other}"))
    return out


@dataclass(frozen=True)
class FileDiff:
    path: str
    change: str          # "added" | "removed" | "changed"
    old_size: int | None
    new_size: int | None
    kinds: str = ""      # what the entry is, when not a plain file: "symlink to x.csv", "file -> executable file"


_Entry = tuple[int | None, str, str, str]   # size, link target, kind, where it is


def _entry(p: Path, st: os.stat_result) -> _Entry:
    """(size, target, kind, path) of one entry, as the NAR hash sees it: a file's size and
    executable bit (its bytes are compared only where both sides have it at the same size: see
    ``_same``), a link's target, an empty folder."""
    if stat.S_ISREG(st.st_mode):
        return st.st_size, "", "executable file" if st.st_mode & 0o100 else "file", str(p)
    if stat.S_ISLNK(st.st_mode):
        return None, os.readlink(p), "symlink", str(p)
    raise not_storable(p)   # a pipe would block the read for ever


def _same(a: _Entry, b: _Entry) -> bool:
    """Whether two entries hash alike: a file's bytes are read only when all else matches (the
    other files of a dataset, added, removed or resized, are known changed by their stat)."""
    if a[:3] != b[:3]:
        return False
    return a[2] not in ("file", "executable file") or sha256_file(a[3]) == sha256_file(b[3])


def _files(root: Path, file_name: str) -> dict[str, _Entry]:
    """Each entry under ``root`` the NAR hash covers (``_entry``), by relative path; a single-file
    dataset's one file is named ``file_name`` (in the store it is named after the dataset)."""
    top = root.lstat()
    if not stat.S_ISDIR(top.st_mode):
        return {file_name: _entry(root, top)}
    out: dict[str, _Entry] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            entries = list(it)
        if not entries and folder != root:
            out[folder.relative_to(root).as_posix() + "/"] = (None, "", "empty folder", str(folder))
        for e in entries:
            st = e.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                stack.append(Path(e.path))
            else:
                out[Path(e.path).relative_to(root).as_posix()] = _entry(Path(e.path), st)
    return out


def _renamed_from(project: Project, rev: str, ds: Dataset, pinned: set[str]) -> str | None:
    """The name of the dataset that ``rev``'s mlbuild.toml declares at ``ds``'s path and its lock
    pins (``ds`` renamed since, as `data add NEW PATH` does it); None when not exactly one."""
    try:
        then = tomllib.loads(git.show(project.root, rev, "mlbuild.toml").removeprefix("\ufeff"))
    except (git.GitError, tomllib.TOMLDecodeError):
        return None
    tables = then.get("datasets")
    found = [n for n, t in (tables.items() if isinstance(tables, dict) else ())
             if n in pinned and isinstance(t, dict) and t.get("path") == ds.path]
    return found[0] if len(found) == 1 else None


def _lock_log(project: Project) -> str:
    """The git command that lists the commits of the project's lock, run where mlbuild runs: from a
    folder below the project, `git log -- mlbuild.lock` named a lock there, which has no commits."""
    import shlex

    here = os.path.relpath(project.root, Path.cwd()) if Path.cwd().resolve() != project.root.resolve() else "."
    return "git " + (f"-C {shlex.quote(here)} " if here != "." else "") + "log --oneline -- mlbuild.lock"


def diff(project: Project, name: str, rev: str | None = None) -> list[FileDiff]:
    """Files added, removed and changed between the locked version and REV's lock (or the
    working copy when REV is not given)."""
    import json

    ds = _get(project, name)
    if ds.kind != "path":
        raise DataError(f"dataset {name!r} is a {ds.kind} dataset; diff compares local datasets")
    locked = read_lock(project.lock_path).get("datasets", {}).get(name, {}).get("sha256")
    if locked is None:
        raise DataError(f"dataset {name!r} is not locked yet; run `mlbuild data add {name} {ds.path}`")
    old_path = fixed_output_path(locked, name, recursive=True)
    if _nix.invalid_paths([old_path]):
        raise DataError(f"the locked version of {name!r} ({old_path}) is not in the store; run `mlbuild data pull {name}`")
    if rev is None:
        new_root = (project.root / (ds.path or "")).resolve()   # a declared symlink: its content is the data
        if new_root.exists() and statcache.lookup(project.root / STATE_NAME, name, new_root)[0] == locked:
            return []   # known unchanged by its stat facts (as status knows it): nothing read
        if not new_root.exists():
            raise DataError(f"{ds.path} (dataset {name!r}) does not exist here (moved, deleted, or a fresh "
                            f"clone): no working copy to compare. `mlbuild data add {name} PATH` pins the files "
                            f"where they are now; `mlbuild data diff {name} REV` compares the locked version with REV's")
    else:
        try:   # a byte order mark (a Windows editor's save), as read_lock and Nix's fromJSON skip it
            then = json.loads(git.show(project.root, rev, "mlbuild.lock").removeprefix("\ufeff"))
        except ValueError as e:
            raise DataError(f"mlbuild.lock at revision {rev!r} is not valid JSON ({e}); compare with a revision "
                            f"whose lock `mlbuild lock` or `mlbuild data add` wrote") from None
        datasets = then.get("datasets") if isinstance(then, dict) else None
        other = datasets.get(name) if isinstance(datasets, dict) else None
        then_name = name
        if other is None and isinstance(datasets, dict):   # renamed since: the one REV declared at its path
            then_name = _renamed_from(project, rev, ds, set(datasets)) or name
            other = datasets.get(then_name)
        if other is None:
            there = sorted(datasets) if isinstance(datasets, dict) else []
            raise DataError(f"dataset {name!r} is not in mlbuild.lock at revision {rev!r}"
                            + (f" (it pins {', '.join(map(repr, there))} there, none declared at {ds.path})" if there else "")
                            + f"; give a revision that pins it (`{_lock_log(project)}` lists the lock's "
                              f"commits), or leave REV out to compare with the working copy")
        then_sha = other.get("sha256") if isinstance(other, dict) else None
        if not isinstance(then_sha, str) or not re.fullmatch("[0-9a-f]{64}", then_sha):   # a hand edit
            raise DataError(f"mlbuild.lock at revision {rev!r} has no sha256 for dataset {name!r} ({json.dumps(other)}); "
                            f"compare with a revision whose lock `mlbuild lock` or `mlbuild data add` wrote")
        if then_sha == locked:
            return []
        new_path = fixed_output_path(then_sha, then_name, recursive=True)
        if _nix.invalid_paths([new_path]):
            raise DataError(f"{then_name!r} at {rev!r} ({new_path}) is not in the store; check out {rev} and "
                            f"run `mlbuild data pull {then_name}`")
        new_root = Path(_nix.real_path(new_path))   # a chroot store (NIX_CONFIG, NIX_REMOTE): its files
    file_name = Path(ds.path or name).name
    # on a runner whose store is its own (NIX_CONFIG="store = /tmp/machine-b") the pinned files are there, not in
    # /nix/store: a FileNotFoundError traceback
    a = _files(Path(_nix.real_path(old_path)), file_name)
    def what(e: _Entry) -> str:
        return f"symlink to {shown_name(e[1])}" if e[2] == "symlink" else e[2]

    def plain(e: _Entry) -> str:   # nothing to say of a plain file
        return "" if e[2] == "file" else what(e)

    with _reading(name, new_root):
        b = _files(new_root, file_name)
        changed = [p for p in sorted(a.keys() & b.keys()) if not _same(a[p], b[p])]   # in folder order
    changes = [FileDiff(p, "removed", a[p][0], None, plain(a[p])) for p in a.keys() - b.keys()]
    changes += [FileDiff(p, "added", None, b[p][0], plain(b[p])) for p in b.keys() - a.keys()]
    changes += [FileDiff(p, "changed", a[p][0], b[p][0],
                         "" if a[p][2] == b[p][2] == "file" else f"{what(a[p])} -> {what(b[p])}")
                for p in changed]
    return sorted(changes, key=lambda d: d.path)
