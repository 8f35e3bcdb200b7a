"""The mlbuild a project's own flake pins, so ``mlbuild build`` builds what ``nix build`` builds.

A project's ``flake.nix`` takes mlbuild as its ``mlbuild`` input, and ``flake.lock`` pins one
revision. ``nix build .#MODEL`` evaluates that revision's Nix library and builders; this CLI would
otherwise evaluate its own (``nix/`` next to it), and after an upgrade on either side the two
give different store paths without a word. So when the pinned mlbuild's Nix library or runtime
differs from this CLI's, the driver evaluates the pinned one (``builtins.fetchTree`` of the locked
input: offline when it is in the store, as after any ``nix build``) and says so once.
"""

from __future__ import annotations

import contextlib
import contextvars
import filecmp
import functools
import json
import os
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import _nix, atomic
from .errors import ConfigError, NixError
from .git import half_merged

__all__ = ["pinned_entry", "pinned_root", "locked_input", "past_commit", "DIRTY_MLBUILD"]

# What goes into derivations (nix/default.nix's runtimeFilter): the Nix library and the runtime.
_COMPARED = ("nix", "mlbuild/runtime", "mlbuild/__init__.py")


# A git checkout with uncommitted changes as the mlbuild input: Nix 2.8 locks its tree by hash alone,
# a lock newer Nix refuses ("Lock file contains unlocked input"); newer Nix will not write one but
# with --allow-dirty-locks, and that lock's dirtyRev is one Nix 2.8 cannot read. Either way no other
# machine has that tree.
DIRTY_MLBUILD = ("which no other machine can fetch, and a flake.lock pinning them is refused by Nix 2.26 "
                 "(Debian 13) or, written with --allow-dirty-locks, by Nix 2.8 (Debian 12); commit them there, "
                 "then `nix flake lock --update-input mlbuild` here, `git add flake.lock` and commit it")


def locked_input(project_root: Path, name: str = "mlbuild") -> dict[str, Any] | None:
    """flake.lock's locked attributes of the root's NAME input; None without a flake.lock or input."""
    path = project_root / "flake.lock"
    if not (project_root / "flake.nix").is_file() or not path.is_file():
        return None
    text = ""
    try:
        text = path.read_text()
        data = json.loads(text)
        nodes, root = data["nodes"], data.get("root", "root")
        inputs = nodes[root].get("inputs", {})
        ref = _follow(nodes, root, inputs.get(name))
        if ref is None:
            if inputs:   # `nix build` may build with one of them, and this CLI would not say so
                _warn_unnamed(str(path), name, tuple(sorted(inputs)))
            return None
        locked = nodes[ref]["locked"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        merge = half_merged(path, text)
        if merge is not None:   # `nix flake lock` cannot read it either, and git will not restore an unmerged file
            raise ConfigError(f"{merge}; take one side (`git checkout --theirs -- flake.lock`, or `--ours`), "
                              f"then `nix flake lock` and `git add flake.lock`") from None
        raise ConfigError(f"{path} is not a flake lock mlbuild can read ({type(e).__name__}: {e}); "
                          f"restore it from git or run `nix flake lock`") from None
    return locked if isinstance(locked, dict) else None


def _follow(nodes: dict[str, Any], root: str, ref: Any, depth: int = 0) -> str | None:
    """The node an input names: a node's name, or (``inputs.mlbuild.follows = "platform/mlbuild"``)
    a path of input names from the root, each step of which may follow another; None: no input."""
    if isinstance(ref, str) or ref is None:
        return ref
    if not isinstance(ref, list) or depth > 32:   # a cycle: not a lock Nix writes
        raise TypeError(f"an input that follows {ref!r}")
    node = root
    for step in ref:
        nxt = _follow(nodes, root, nodes[node].get("inputs", {}).get(step), depth + 1)
        if nxt is None:
            raise KeyError(f"{'/'.join(map(str, ref))} (no input {step!r} there)")
        node = nxt
    return node


@functools.lru_cache(maxsize=None)
def _warn_unnamed(path: str, name: str, inputs: tuple[str, ...]) -> None:
    """Once per command: a flake whose mlbuild input has another name builds with what that one pins."""
    print(f"mlbuild: warning: {path} has no input named {name!r} (its inputs: {', '.join(inputs)}), so this build "
          f"uses this mlbuild's own Nix library ({_nix.nix_lib_dir()}), and `nix build` gives other store paths if the "
          f"flake builds with an mlbuild it pins under another name: name that input `{name}` in flake.nix "
          f"(`inputs.{name}.url = ...`), then `nix flake lock`", file=sys.stderr)


@functools.lru_cache(maxsize=None)
def _warn_dirty(url: str) -> None:
    """Once per command: the lock pins a dirty checkout's tree, which only this machine may have."""
    print(f"mlbuild: warning: flake.lock pins the mlbuild input from a checkout with uncommitted changes "
          f"({url}), {DIRTY_MLBUILD}", file=sys.stderr)


# `inputs.mlbuild.url = "...";` (or `mlbuild.url` inside `inputs = { ... }`), as init writes it, or
# `inputs.mlbuild = { url = "..."; ... };` (or `mlbuild = { url = ...` inside `inputs = { ... }`)
_URL_SET = re.compile(r'(?:^|[\s;{])(?:inputs\.)?mlbuild(?:\.|\s*=\s*\{(?:[^{}"]|"[^"]*")*?[\s;{])url\s*=\s*"([^"$\\]*)"\s*;')
_HEX_REV = re.compile(r"[0-9a-fA-F]{40}")
_REF_KEYS = ("type", "url", "path", "owner", "repo", "ref", "rev", "dir")


def _declared_url(text: str) -> str | None:
    """The url flake.nix gives the mlbuild input, where it sets it once in a plain string; None else."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)     # block comments
    text = re.sub(r"(^|\s)#[^\n]*", r"\1", text)           # line comments
    found = set(_URL_SET.findall(text))
    return found.pop() if len(found) == 1 else None


def _original_of(url: str) -> dict[str, str] | None:
    """flake.lock's ``original`` of a flake reference, as Nix writes it, for the forms whose spelling
    Nix keeps as it is (git+file:///abs, git+https://..., github:owner/repo[/ref-or-rev], path:/abs, with
    ?ref=, ?rev=, ?dir=); None for any other form, which is not checked."""
    base, _, query = url.partition("?")
    params = urllib.parse.parse_qsl(query, keep_blank_values=True)
    if "%" in url or any(k not in ("ref", "rev", "dir") for k, _ in params):
        return None
    ref: dict[str, str]
    if base.startswith(("git+file:///", "git+https://")):
        ref = {"type": "git", "url": base[len("git+"):]}
    elif base.startswith("path:/"):
        ref = {"type": "path", "path": base[len("path:"):]}
    elif base.startswith("github:") and base.count("/") in (1, 2) and "" not in base[7:].split("/"):
        owner, repo, *branch = base[len("github:"):].split("/")
        # Nix reads a third part of 40 hex digits as a commit (`rev`), else as a branch or tag, and
        # writes a github rev in lower case (it parses it as a hash)
        third = ({"rev": branch[0]} if _HEX_REV.fullmatch(branch[0]) else {"ref": branch[0]}) if branch else {}
        github = {"type": "github", "owner": owner, "repo": repo, **third, **dict(params)}
        return {**github, **({"rev": github["rev"].lower()} if "rev" in github else {})}
    else:
        return None
    return {**ref, **dict(params)}


def _unslashed(ref: dict[str, str]) -> dict[str, str]:
    return {k: v.rstrip("/") or v if k in ("url", "path") else v for k, v in ref.items()}


def stale_url(project_root: Path) -> str | None:
    """Why flake.lock's mlbuild pin is not the one flake.nix asks for (its url edited since the lock:
    `nix build` locks the new one, writing flake.lock, and builds with it); None: it is, or unknown."""
    try:
        declared = _declared_url((project_root / "flake.nix").read_text())
        data = json.loads((project_root / "flake.lock").read_text())
        nodes = data["nodes"]
        ref = nodes[data.get("root", "root")]["inputs"]["mlbuild"]
        original = nodes[ref]["original"] if isinstance(ref, str) else None   # a `follows` is another flake's
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    wanted = None if declared is None else _original_of(declared)
    if wanted is None or not isinstance(original, dict):
        return None
    have = {k: str(v) for k, v in original.items() if k in _REF_KEYS}
    if _unslashed(have) == _unslashed(wanted):   # a trailing slash: kept by Nix 2.8, maybe not by others
        return None
    return (f"{project_root / 'flake.nix'} sets inputs.mlbuild.url = \"{declared}\", but flake.lock pins the mlbuild "
            f"input from {_describe(original)}, locked before that url was set: `nix build` would lock the new one "
            f"(writing flake.lock) and build with it, and this command would build with the old one; run `nix flake "
            f"lock` to lock it, then `git add flake.lock` and commit it")


def _tree_files(root: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for rel in _COMPARED:
        top = root / rel
        if top.is_file():
            files[rel] = top
            continue
        for d, dirs, names in os.walk(top):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__")
            for n in names:
                if not n.endswith(".pyc"):
                    p = Path(d) / n
                    files[str(p.relative_to(root))] = p
    return files


def same_builders(a: Path, b: Path) -> bool:
    """Whether two mlbuild checkouts have the same Nix library and runtime (same derivations)."""
    fa, fb = _tree_files(a), _tree_files(b)
    return fa.keys() == fb.keys() and all(filecmp.cmp(fa[k], fb[k], shallow=False) for k in fa)


# While a command builds a commit's snapshot (metrics history and diff): what the worktree's flake.lock
# pins, as the JSON key _pinned takes; "" where it pins none. None: building the worktree itself.
_WORKTREE_PIN: contextvars.ContextVar[str | None] = contextvars.ContextVar("worktree_pin", default=None)


@contextlib.contextmanager
def past_commit(worktree_root: Path) -> Iterator[None]:
    """Builds in this block are of a commit's snapshot (not the worktree at ``worktree_root``): a pin
    of another mlbuild there is that commit's, as `nix build` at that commit has it, and the advice to
    lock this one into the project does not apply (the worktree's own flake.lock is what to change)."""
    try:
        locked = locked_input(worktree_root)
    except ConfigError:   # the worktree's flake.lock unreadable: say nothing of it here
        locked = None
    token = _WORKTREE_PIN.set("" if locked is None else json.dumps(locked, sort_keys=True))
    try:
        yield
    finally:
        _WORKTREE_PIN.reset(token)


def pinned_entry(project_root: Path, *, needs: tuple[str, ...] = ()) -> Path | None:
    """The entry.nix to evaluate for the project: the pinned mlbuild's, when the project's flake pins
    one whose builders differ from this CLI's; None: this CLI's own. ``needs``: the entry.nix
    arguments this build passes (an older mlbuild may not take them: an error, not a silent drop)."""
    if os.environ.get("MLBUILD_NIX"):   # an explicit library wins
        return None
    locked = locked_input(project_root)
    if locked is None:
        return None
    stale = stale_url(project_root)
    worktree = _WORKTREE_PIN.get()
    if stale is not None and worktree is None:
        raise ConfigError(stale)
    if stale is not None:   # a commit's (metrics history, diff): what it pinned, which no lock can change now
        print(f"mlbuild: a commit whose flake.nix names another mlbuild url than its flake.lock pins (committed "
              f"without `nix flake lock`) builds with the pin, as mlbuild built it then", file=sys.stderr)
    key = json.dumps(locked, sort_keys=True)
    past = "" if worktree is None or worktree == key else "another one" if worktree else "none (it builds with this one)"
    found = _pinned(key, past=past)   # once per command (serve builds twice)
    if locked.get("type") == "git" and "rev" not in locked:
        _warn_dirty(str(locked.get("url", "")))
    if found is None:
        return None
    root, args, where = found
    missing = [a for a in needs if a not in args]
    if missing:
        raise ConfigError(f"{where} is an older mlbuild whose builds do not take {', '.join(missing)} "
                          f"(this build needs them); update it (`nix flake lock --update-input mlbuild`, or "
                          f"--override-input mlbuild URL for another one), then commit flake.lock")
    return root / "nix" / "entry.nix"


def pinned_root(project_root: Path) -> Path | None:
    """The checkout of the pinned mlbuild that builds the project's outputs (its runtime runs in
    them: a server, a monitor), when it differs from this CLI's; None: this CLI's own."""
    entry = pinned_entry(project_root)
    return None if entry is None else entry.parent.parent


@functools.lru_cache(maxsize=None)
def _pinned(locked_json: str, past: str = "") -> tuple[Path, tuple[str, ...], str] | None:
    """(its root, the arguments its entry.nix takes, how to name it) of the pinned mlbuild when its
    builders differ from this CLI's; None when they are the same or it cannot be fetched (warned).
    ``past``: the pin is a commit's that the worktree no longer has (metrics history or diff): what
    the worktree's flake.lock pins instead, in words; "": the worktree's own."""
    locked = json.loads(locked_json)
    sub = locked.get("dir", "")
    attrs = {k: v for k, v in locked.items() if k != "dir"}
    where = f"the mlbuild input flake.lock pins ({_describe(attrs)})"
    expr = (f"let src = builtins.fetchTree (builtins.fromJSON {json.dumps(json.dumps(attrs))}); "
            f"entry = src + \"/{sub + '/' if sub else ''}nix/entry.nix\"; in "
            f"{{ path = src.outPath; args = if builtins.pathExists entry "
            f"then builtins.attrNames (builtins.functionArgs (import entry)) else null; }}")
    got = _fetched(locked_json)
    try:
        if got is None:
            proc = _nix.run_nix([*_nix.common_options(), "eval", "--impure", "--json", "--expr", expr])
            got = json.loads(proc.stdout)
            _remember(locked_json, got)
    except NixError as e:
        if "dirtyRev" in attrs and "dirtyRev" in e.log_tail:   # Nix 2.8: "unsupported Git input attribute"
            version = ".".join(map(str, _nix.nix_version()))
            raise ConfigError(f"flake.lock pins the mlbuild input from a checkout with uncommitted changes "
                              f"(dirtyRev {attrs['dirtyRev']}: a newer Nix's `nix flake lock --allow-dirty-locks` "
                              f"wrote it), which Nix {version} here cannot read, nor can `nix build`; commit those "
                              f"changes in {attrs.get('url', 'the mlbuild checkout')}, then `nix flake lock --update-input "
                              f"mlbuild` and commit flake.lock") from None
        print(f"mlbuild: warning: cannot fetch {where}, so this build uses this mlbuild's own Nix library "
              f"({_nix.nix_lib_dir()}) and may give other store paths than `nix build` ({e.log_tail.strip()[-300:] or e})",
              file=sys.stderr)
        return None
    root = Path(got["path"]) / sub if sub else Path(got["path"])
    # Where its files lie: in a runner's own store (NIX_CONFIG="store = /tmp/machine-b", NIX_REMOTE) its
    # /nix/store/...-source is not on the host: the same mlbuild was said to differ, then Nix failed on
    # "getting status of '/nix/store/...-source/nix/entry.nix'". Nix evaluates it there to the same derivations.
    root = Path(_nix.real_path(str(root)))
    if got["args"] is None:
        raise ConfigError(f"{where} has no nix/entry.nix at {root}: it is not mlbuild; point the flake's "
                          f"`mlbuild` input at mlbuild (see the README's \"Your own project\")")
    own = _nix.nix_lib_dir().parent
    if same_builders(root, own):
        return None
    if past:   # a commit from before the project moved to another mlbuild: nothing to lock here
        print(f"mlbuild: commits whose flake.lock pins another mlbuild ({_describe(attrs)}) build with that one, as "
              f"`nix build` at those commits does, not with this mlbuild ({own}): their metrics are that mlbuild's. "
              f"The worktree's flake.lock pins {past}, so nothing needs to change", file=sys.stderr)
        return root, tuple(got["args"]), where
    if _newer_than(attrs, own):   # a teammate's older CLI: its own would move the project back
        print(f"mlbuild: building with {where}, as `nix build` does; it is newer than this mlbuild ({own}), "
              f"which the project has moved past: upgrade this one (`git -C {own} pull`, then `bash .ci/setup` "
              f"there), not the project's flake.lock (locking this one into it would move the project back, and "
              f"every model would train again)", file=sys.stderr)
        return root, tuple(got["args"]), where
    url = f"git+file://{own}" if (own / ".git").exists() else "<this mlbuild's flake URL>"
    print(f"mlbuild: building with {where}, as `nix build` does; it differs from this mlbuild ({own}). "
          f"To build with this one: `nix flake lock --override-input mlbuild {url}` (or point inputs.mlbuild.url "
          f"at it and run `nix flake lock --update-input mlbuild`), then commit flake.lock", file=sys.stderr)
    return root, tuple(got["args"]), where


def _newer_than(attrs: dict[str, Any], own: Path) -> bool:
    """Whether the pinned git revision is a later commit than this CLI's checkout: its HEAD is an
    ancestor of it, where the checkout has that commit, else by the commit times (the lock's
    lastModified); False where this mlbuild is no git checkout or either is unknown."""
    rev, modified = attrs.get("rev"), attrs.get("lastModified")
    if not isinstance(rev, str) or not (own / ".git").exists():
        return False
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}   # this checkout, not the project's

    def git(*args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(["git", "-C", str(own), *args], capture_output=True, text=True, env=env, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None

    known = git("cat-file", "-e", f"{rev}^{{commit}}")
    if known is not None and known.returncode == 0:
        head, ancestor = git("rev-parse", "HEAD"), git("merge-base", "--is-ancestor", "HEAD", rev)
        return head is not None and head.stdout.strip() != rev and ancestor is not None and ancestor.returncode == 0
    when = git("log", "-1", "--format=%ct", "HEAD")
    if not isinstance(modified, int) or when is None or when.returncode != 0 or not when.stdout.strip().isdigit():
        return False
    return modified > int(when.stdout.strip())


FETCHED_KEPT = 16   # the newest fetches of pinned mlbuild inputs remembered


def _fetched_file() -> Path | None:
    try:
        return _nix.state_home() / "pinned-mlbuild.json"
    except RuntimeError:   # no home folder to find
        return None


def _fetched(locked_json: str) -> dict[str, Any] | None:
    """What an earlier command's fetch of the same locked input gave (its store path and entry.nix
    arguments), while that path is in the store: the evaluation took ~0.05-0.12 s of every build,
    serve, metrics and image command. Only an input pinned by its content hash (narHash), whose
    store path holds that content and nothing else, is taken from there."""
    where = _fetched_file()
    if "narHash" not in json.loads(locked_json) or where is None:
        return None
    try:
        got = json.loads(where.read_text()).get(locked_json)
    except (OSError, ValueError, AttributeError):   # none yet, or not a record: fetch
        return None
    if not isinstance(got, dict) or not isinstance(got.get("path"), str) or not isinstance(got.get("args"), list) \
            or not os.path.isdir(_nix.real_path(got["path"])):   # collected since (a runner's own store: there)
        return None
    # A folder there is not yet a path Nix holds: a garbage collection or `nix-store --delete` stopped
    # part way leaves an invalid, half-deleted copy, which fetchTree replaces and the build must not
    # read (a runtime with files missing: other store paths, or a failed build). One nix-store call.
    try:
        if _nix.invalid_paths([got["path"]]):
            return None
    except NixError:   # not a store path (a record edited by hand): fetch
        return None
    return got


def _remember(locked_json: str, got: dict[str, Any]) -> None:
    """Record a fetch for ``_fetched`` (the newest FETCHED_KEPT); a record that cannot be written is skipped."""
    where = _fetched_file()
    if "narHash" not in json.loads(locked_json) or where is None or not isinstance(got.get("args"), list):
        return
    try:
        try:
            known = json.loads(where.read_text())
        except (OSError, ValueError):
            known = {}
        known = dict(list(known.items() if isinstance(known, dict) else [])[-(FETCHED_KEPT - 1):])
        known.pop(locked_json, None)
        where.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(where, json.dumps({**known, locked_json: got}) + "\n")
    except OSError:
        pass


def _describe(attrs: dict[str, Any]) -> str:
    what = attrs.get("url") or attrs.get("path") or "/".join(str(attrs.get(k, "")) for k in ("owner", "repo"))
    rev = attrs.get("rev")
    return f"{attrs.get('type', '?')} {what}" + (f" at {str(rev)[:12]}" if rev else "")
