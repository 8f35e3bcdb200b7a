"""Git queries the driver needs: tracked files, dirty trees, files at a revision, .gitignore."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from . import atomic
from .errors import MlbuildError

__all__ = ["GitError", "pin_environment", "repo_root", "is_tracked", "dirty_files", "show", "ignore", "ignore_entry",
           "add_ignore", "head", "sparse_excluded", "log_revisions", "is_shallow", "check_commit", "conflict_marker",
           "half_merged", "unmerged", "Dirty"]


# Folders tools write beside code that are never code (nix/code.nix's toolCaches): no code path
# holds them, so the worktree check does not count them.
TOOL_CACHES = frozenset({"__pycache__", ".ipynb_checkpoints", ".mypy_cache", ".pytest_cache", ".ruff_cache"})


# The lines git writes into a file it could not merge (merge, rebase, cherry-pick, stash pop);
# `|||||||` opens the base's side with merge.conflictStyle diff3 or zdiff3.
_CONFLICT = re.compile(r"^(?:<{7}|\|{7}|={7}|>{7})(?: |$)", re.MULTILINE)


class GitError(MlbuildError):
    """A git query failed."""


def _git(cwd: Path, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    try:   # paths as bytes where they are not UTF-8 (a folder named in Latin-1), as os.fsdecode gives them
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, errors="surrogateescape",
                              input=input)
    except FileNotFoundError:
        raise GitError("git is not installed; install it (apt-get install git)") from None
    if check and proc.returncode != 0:
        raise GitError(f"`git {' '.join(args)}` in {cwd} failed: {proc.stderr.strip()}")
    return proc


# Where the environment names a repository (a script's or hook's GIT_DIR=.git), relative paths are
# relative to the folder a command starts in.
_PATH_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY")


def pin_environment() -> None:
    """Make a repository the environment names (``GIT_DIR``, ``GIT_WORK_TREE``) mean, for every git
    mlbuild runs in the project's folder, what it means in the current one (the ``-C`` folder, as
    ``git -C`` has it): relative paths made absolute, and the work tree git gives such a
    ``GIT_DIR`` here (this folder, or its core.worktree) written out. Run from a folder under the
    project, a relative ``GIT_DIR`` named no repository there, which read as none."""
    if not os.environ.get("GIT_DIR") and not os.environ.get("GIT_WORK_TREE"):
        return
    for var in _PATH_VARS:
        value = os.environ.get(var)
        if value and not os.path.isabs(value):
            os.environ[var] = os.path.abspath(value)
    if os.environ.get("GIT_DIR") and not os.environ.get("GIT_WORK_TREE"):
        try:
            proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                                  errors="surrogateescape")
        except FileNotFoundError:
            return   # no git: the first query says so
        if proc.returncode == 0 and proc.stdout.strip():
            os.environ["GIT_WORK_TREE"] = proc.stdout.strip()


def repo_root(path: Path) -> Path | None:
    """The top of the git repository holding ``path``; None where there is none. GitError where
    there is one git refuses to read (another user owns it)."""
    cwd = path if path.is_dir() else path.parent
    proc = _git(cwd, "rev-parse", "--show-toplevel", check=False)
    if proc.returncode == 0:
        return Path(proc.stdout.strip())
    # git 2.35.2+ refuses a repository another user owns ("dubious ownership"), as if there were
    # none: its changes did not count (a dirty tree built as clean) and its data went unignored.
    # Asked again trusting every folder (a command line's safe.directory counts), it answers.
    if os.environ.get("GIT_DIR"):   # never "no repository": git would have read the one it names
        raise GitError(f"GIT_DIR={os.environ['GIT_DIR']} in the environment names no git repository git can read "
                       f"({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'none'}); unset GIT_DIR "
                       f"(git then finds the repository the project is in), or point it at that repository's .git")
    trusting = _git(cwd, "-c", "safe.directory=*", "rev-parse", "--show-toplevel", check=False)
    if trusting.returncode == 0:
        repo = trusting.stdout.strip()
        raise GitError(f"git refuses to read the repository {repo}: another user owns it (git's \"dubious "
                       f"ownership\" check), so mlbuild cannot tell its changes or keep data out of it; if you "
                       f"trust it, `git config --global --add safe.directory {shlex.quote(repo)}`, or run "
                       f"mlbuild as the user who owns it")
    return None


def is_tracked(path: Path) -> bool:
    path = path.resolve()   # a symlink in the repository to a file outside it: that file's repository, if any
    root = repo_root(path)
    if root is None:
        return False
    # a path, not a pattern: `ls-files -- a[1].csv` also lists a tracked a1.csv
    return bool(_git(root, "--literal-pathspecs", "ls-files", "--", str(path)).stdout.strip())


@dataclass(frozen=True)
class Dirty:
    modified: list[str]
    untracked: list[str]
    ignored: list[str] = field(default_factory=list)   # inputs git ignores: in the build, in no commit
    # inputs git checks out with other line ends than it commits (core.autocrlf, an eol attribute):
    # the folder's bytes, which the build reads, are in no commit
    converted: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.modified or self.untracked or self.ignored or self.converted)


def dirty_files(project: Path, inputs: Sequence[str] = ()) -> Dirty:
    """Uncommitted changes to tracked files and untracked, unignored files under ``project``; and
    the files under ``inputs`` (paths relative to it: the code a build reads) that git ignores,
    which a build from the folder would read though no commit holds them (and a flake lacks)."""
    root = repo_root(project)
    if root is None:
        return Dirty([], [])
    ignored: list[str] = []
    converted: list[str] = []
    if inputs:
        converted = _converted(root, [str(project.resolve() / p) for p in inputs])
        listed = _git(root, "--literal-pathspecs", "ls-files", "-z", "--others", "--ignored", "--exclude-standard",
                      "--",
                      *(str(project.resolve() / p) for p in inputs)).stdout
        # what nix/code.nix leaves out of every code path anyway
        ignored = sorted(p for p in listed.split("\0") if p and not TOOL_CACHES & set(p.split("/"))
                         and not p.endswith(".pyc"))
    # --no-optional-locks: status refreshed and wrote back the index (.git/index.lock): on a full disk
    # every build and `data add` stopped there ("index.lock write error. Out of diskspace"), and a git
    # command of the user's at that moment found the lock taken
    out = _git(root, "--no-optional-locks", "--literal-pathspecs", "status", "--porcelain=v1", "-z",
               "--untracked-files=all", "--", str(project.resolve())).stdout
    modified: list[str] = []
    untracked: list[str] = []
    entries = out.split("\0")
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if not entry:
            continue
        code, path = entry[:2], entry[3:]
        if code[0] in "RC":  # renames carry the old path as the next entry
            i += 1
        if code == "??" and (TOOL_CACHES & set(path.split("/")) or path.endswith(".pyc")):
            continue   # a byte-code cache or a notebook checkpoint no build reads, ignored or not
        (untracked if code == "??" else modified).append(path)
    return Dirty(sorted(modified), sorted(untracked), ignored, converted)


_TEXT = frozenset({"lf", "crlf", "mixed"})


def _converted(root: Path, paths: list[str]) -> list[str]:
    """Those of the tracked ``paths`` whose line ends in the work tree differ from the index's
    (``git ls-files --eol``: ``i/lf w/crlf``), as core.autocrlf or an eol attribute writes them.

    ``--eol`` reads every file whole, in the work tree and the index (1.3 s for a 200 MB file in
    `code`, at every build): it is asked only of the files whose size differs from their blob's
    (``cat-file --batch-check``, which reads no content), as other line ends make it differ."""
    staged = _git(root, "--literal-pathspecs", "ls-files", "-s", "-z", "--", *paths).stdout
    blobs: dict[str, str] = {}   # path -> blob
    for entry in staged.split("\0"):
        info, _, path = entry.partition("\t")
        mode_blob_stage = info.split()
        if path and len(mode_blob_stage) == 3 and mode_blob_stage[0].startswith("100") and mode_blob_stage[2] == "0":
            blobs[path] = mode_blob_stage[1]   # a file (not a link or a submodule), merged
    if not blobs:
        return []
    checked = _git(root, "cat-file", "--batch-check=%(objectname) %(objectsize)",
                   input="".join(f"{b}\n" for b in set(blobs.values()))).stdout
    sizes = dict(line.split(" ", 1) for line in checked.splitlines() if line.count(" ") == 1)
    candidates = []
    for path, blob in blobs.items():
        try:
            if os.lstat(root / path).st_size != int(sizes.get(blob, "-1")):
                candidates.append(path)
        except (OSError, ValueError):   # not in the work tree (a sparse checkout): nothing converted
            continue
    if not candidates:
        return []
    out = _git(root, "--literal-pathspecs", "ls-files", "-z", "--eol", "--", *candidates).stdout
    found = []
    for entry in out.split("\0"):
        info, _, path = entry.partition("\t")
        fields = dict(f.split("/", 1) for f in info.split() if "/" in f)
        index, tree = fields.get("i", ""), fields.get("w", "")
        if path and index in _TEXT and tree in _TEXT and index != tree:
            found.append(path)
    return sorted(found)


def conflict_marker(text: str) -> tuple[int, str] | None:
    """The first git conflict marker line in ``text`` (a file a merge left half-resolved): its
    line number (from 1) and the line; None when there is none."""
    m = _CONFLICT.search(text)
    if m is None:
        return None
    return text.count("\n", 0, m.start()) + 1, text[m.start():].split("\n", 1)[0].rstrip("\r")


def half_merged(path: Path, text: str) -> str | None:
    """``PATH: a git merge left it half-resolved (conflict marker '<<<<<<< HEAD' at line N)`` when
    ``text`` (``path``'s) holds a conflict marker line, for the caller to add its fix; else None."""
    conflict = conflict_marker(text)
    if conflict is None:
        return None
    return f"{path}: a git merge left it half-resolved (conflict marker {conflict[1]!r} at line {conflict[0]})"


def unmerged(path: Path) -> bool:
    """Whether git holds ``path`` as unmerged: a merge (rebase, cherry-pick, stash pop) conflicted
    in it, and it was not `git add`ed since."""
    root = repo_root(path)
    if root is None:
        return False
    proc = _git(root, "--literal-pathspecs", "ls-files", "--unmerged", "--", str(path.resolve()), check=False)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def head(path: Path) -> str | None:
    root = repo_root(path)
    if root is None:
        return None
    proc = _git(root, "rev-parse", "HEAD", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def sparse_excluded(path: Path) -> str | None:
    """``path``'s name in its repository where git tracks it but a sparse checkout leaves it out of
    the work tree (skip-worktree: ``git ls-files -t`` marks it ``S``); else None."""
    if os.path.lexists(path):
        return None
    root = repo_root(path.parent) if path.parent.is_dir() else None
    if root is None:
        return None
    out = _git(root, "--literal-pathspecs", "ls-files", "-t", "-z", "--", str(path.absolute()), check=False).stdout
    entries = [e for e in out.split("\0") if e]
    return entries[0][2:] if len(entries) == 1 and entries[0].startswith("S ") else None


def is_shallow(path: Path) -> bool:
    """True in a shallow clone (``git clone --depth N``, CI's default checkout): its log stops early."""
    root = repo_root(path)
    return root is not None and _git(root, "rev-parse", "--is-shallow-repository", check=False).stdout.strip() == "true"


def check_commit(root: Path, rev: str) -> None:
    """GitError unless ``rev`` names a commit of the repository at ``root``."""
    if _git(root, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}",
            check=False).returncode != 0:
        raise GitError(f"{rev!r} is not a commit of the git repository {root}; give a commit, branch or tag "
                       f"(`git log --oneline` lists them)")


def show(project: Path, rev: str, name: str) -> str:
    """The text of ``project/name`` at git revision ``rev``."""
    root = repo_root(project)
    if root is None:
        raise GitError(f"{project} is not in a git repository, so revision {rev!r} means nothing")
    check_commit(root, rev)   # a bad revision is said as such, not as the file missing there
    rel = (project.resolve() / name).relative_to(root.resolve())
    proc = _git(root, "show", f"{rev}:{rel}", check=False)
    if proc.returncode != 0:
        raise GitError(f"{rel} does not exist at revision {rev!r}: {proc.stderr.strip()}")
    return proc.stdout


def log_revisions(project: Path, names: list[str]) -> list[str]:
    """Commits (oldest first) that changed any of ``names`` under ``project``."""
    root = repo_root(project)
    if root is None or head(project) is None:   # no repository, or one with no commit yet
        return []
    paths = [str((project.resolve() / n).relative_to(root.resolve())) for n in names]
    # --topo-order: parents before children whatever the commit dates say (a branch's commit dated
    # before its fork point came first). --full-history: git's default simplification follows one
    # parent of a merge whose files equal that parent's, and drops the other side's commits (a
    # change and its revert on main, a fix cherry-picked to both sides): their metrics too. It also
    # lists a merge whose files equal one parent's (each `merge --no-ff` of a branch into a main
    # that did not touch them): that parent's files and metrics, listed already, are left out.
    out = _git(root, "--literal-pathspecs", "log", "--format=%H %P", "--topo-order", "--full-history", "--reverse",
               "--", *paths).stdout
    revs = []
    for line in out.splitlines():
        rev, *parents = line.split()
        if len(parents) > 1 and any(_git(root, "--literal-pathspecs", "diff", "--quiet", p, rev, "--", *paths,
                                         check=False).returncode == 0 for p in parents):
            continue
        revs.append(rev)
    return revs


def ignore_entry(project: Path, path: Path, follow: bool = True) -> tuple[Path, str] | None:
    """Where and what to add so that git ignores ``path``: ``(.gitignore, line)``, the project's
    .gitignore for a path inside the project, else the repository's top one. None when git ignores
    it already, or when it is outside the project's repository (or there is none): nothing to do.
    ``follow=False``: ``path`` itself where it is a symlink (git keeps a link as a file), not its target."""
    root = repo_root(project)
    if root is None:
        return None
    target = path.resolve() if follow else path.absolute().parent.resolve() / path.name
    project, root = project.resolve(), root.resolve()
    top = project if target.is_relative_to(project) else root
    if not target.is_relative_to(top):
        return None
    inner = repo_root(target)
    if inner is not None and inner.resolve() != root:   # a submodule, or a clone inside the repository
        # Nothing to add where the project ignores that repository's folder (a clone in init's
        # /data/: git does not look inside), or that repository ignores the data. The project's
        # own patterns do not reach inside it (a `*.csv` there left a submodule's a.csv untracked).
        if _ignored(root, inner.resolve()) or _ignored(inner, target):
            return None
        raise GitError(f"{target} is inside {inner}, a git repository of its own (a submodule?): mlbuild keeps a "
                       f"dataset out of git with a line in {top / '.gitignore'}, which git does not apply inside "
                       f"{inner.name}, so the project would stay dirty; move the data out of {inner} (or into "
                       f"a folder git ignores there)")
    if _ignored(root, target):
        return None
    folder = target.is_dir() and not target.is_symlink()   # `/link/` matches no symlink: git sees a file
    return top / ".gitignore", "/" + _literal(target.relative_to(top).as_posix()) + ("/" if folder else "")


def _ignored(repo: Path, path: Path) -> bool:
    """Whether the repository at ``repo`` ignores ``path``. --no-index: check-ignore takes its path
    for a pattern when asking whether git tracks it (a tracked a1.csv made a[1].csv count as
    tracked, so never ignored); a tracked path is refused before."""
    return _git(repo, "check-ignore", "-q", "--no-index", str(path), check=False).returncode == 0


def _literal(path: str) -> str:
    """``path`` as a .gitignore pattern that matches it alone: glob characters and a trailing space
    escaped (``a[1].csv`` is otherwise a pattern for ``a1.csv``), and a line break, which no line can
    hold, matched by ``?`` (a line of its own would ignore files of that name anywhere)."""
    escaped = "".join(f"\\{c}" if c in "\\*?[" else "?" if c in "\r\n" else c for c in path)
    return escaped[:-1] + "\\ " if escaped.endswith(" ") else escaped


def add_ignore(gitignore: Path, line: str) -> None:
    text = gitignore.read_text() if gitignore.exists() else ""
    atomic.write_text(gitignore, text + ("" if not text or text.endswith("\n") else "\n") + line + "\n")


def ignore(project: Path, path: Path, follow: bool = True) -> bool:
    """Make git ignore ``path`` (see ``ignore_entry``); True if a line was added."""
    entry = ignore_entry(project, path, follow)
    if entry is not None:
        add_ignore(*entry)
    return entry is not None
