"""`mlbuild build`: clean-worktree check, live progress, and a summary of what happened.

A target is an attribute of ``mkProject`` (``toolchain``, ``datasets.digits-split``,
``digits.model``...). Nix runs with ``--log-format internal-json``: its activity stream says what
is built and what is substituted, with timings, and carries the build log lines, from which the
training's structured ``MLBUILD {...}`` lines drive the epoch bar. Each finished target is
recorded in ``.mlbuild/builds.jsonl`` with the facts of the build that are not inputs (git
revision, dirty flag, Nix version, time).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from . import _nix, atomic, git
from .config import Project, state_dir
from .errors import BuildError, ConfigError, MlbuildError, StoreKeyError
from .flakepin import pinned_entry
from .lockfile import read_lock
from .toolchain import check_fresh

if TYPE_CHECKING:   # the store's modules load only for a build that uses one
    from .store.config import StoreConfig

__all__ = ["build_targets", "Built", "Summary", "DirtyTreeError", "TargetError", "Progress", "check_clean",
           "check_model", "check_targets", "format_summary", "store_options", "push_outputs"]

EVENT = "MLBUILD "
LOG_TAIL = 30   # lines of a failed build's log shown (and all a build's log keeps in memory)
_ACT_BUILD, _ACT_SUBSTITUTE, _RES_LOG = 105, 108, 101
_ACT_BUILD_WAITING = 111   # Nix waits for another process's lock on an output


class DirtyTreeError(MlbuildError):
    """The worktree has uncommitted or untracked files."""


class TargetError(MlbuildError):
    """A build target names nothing the project declares."""


# What a model's attribute set holds (nix/project.nix): `nix build .#<m>` is the package.
MODEL_STAGES = ("model", "package", "validation", "release", "image", "monitor", "toolchain", "datasets",
                "notebooks")
_TOP = ("toolchain", "interpreter", "datasets", "notebooks", "models")


def check_model(project: Project, model: str, *, passes_options: str | None = None) -> None:
    """Refuse a model name mlbuild.toml does not declare, listing the ones it does.
    ``passes_options``: the command (``serve``) that passes unknown options on, so that one given
    before the model took its place."""
    models = sorted((project.raw.get("models") or {}).keys())
    if model not in models:
        head, dot, _ = model.partition(".")
        first = models[0] if len(models) == 1 else "MODEL"
        fix = (f"it is an option: give the model first, then the server's options (mlbuild {passes_options} "
               f"{first} {model} ...)" if passes_options and model.startswith("-")
               else f"give the model's name ({head}), not MODEL.STAGE" if dot and head in models
               else f"declare [models.{model}] in {project.config_path}" if model and not dot
               else "give one of those names")
        raise TargetError(f"{model!r} is not a model of {project.name} (models: {', '.join(models) or 'none'}); {fix}")


def validation_table(project: Project, model: str) -> dict[str, Any] | None:
    """MODEL's [models.MODEL.validation] table; None when it has none (no gate)."""
    table = ((project.raw.get("models") or {}).get(model) or {}).get("validation")
    return table if isinstance(table, dict) else None


def check_targets(project: Project, targets: Sequence[str]) -> None:
    """Refuse, before Nix evaluates anything, a target whose model, dataset, notebook or stage
    the project does not declare (``digits.datasets.NAME`` too); the error lists what it does
    declare. Deeper attributes (``digits.validation.report``) are left to Nix."""
    declared = {k: sorted((project.raw.get(k) or {}).keys()) for k in ("models", "datasets", "notebooks")}

    def names(kind: str) -> str:
        return ", ".join(declared[kind]) or "none"

    def check_member(kind: str, name: str) -> None:
        if name not in declared[kind]:
            raise TargetError(f"{name!r} is not one of the {kind} of {project.name} "
                              f"({kind}: {names(kind)}); declare [{kind}.{name}] in {project.config_path}")

    for target in targets:
        if '"' in target:   # a quoted attribute name (may hold dots): Nix's to check
            continue
        parts = target.split(".")
        if "" in parts:
            raise TargetError(f"{target!r} is not a target: a name is empty; give a model ({names('models')}), "
                              f"MODEL.STAGE, toolchain, datasets.NAME or notebooks.NAME")
        head, rest = parts[0], parts[1:]
        # A collection is an attribute set of several derivations: Nix builds them all, and
        # mlbuild reported, recorded and kept (a GC root) the first alone; `notebooks` with none
        # ended in IndexError. `models.MODEL.datasets` is MODEL.datasets.
        model, stage = (rest[0], rest[1:]) if head == "models" and rest else (head, rest)
        kind = head if not rest else stage[0] if len(stage) == 1 and model in declared["models"] else None
        if kind in ("datasets", "notebooks", "models"):
            each = ", ".join(declared[kind]) if kind == "models" else ", ".join(f"{kind}.{n}" for n in declared[kind])
            raise TargetError(f"{target!r} names all the {kind} at once; give them one by one: {each}" if each else
                              f"{target!r} names all the {kind} at once, and {project.name} declares none")
        if head == "models" and rest:
            head, rest = rest[0], rest[1:]
            check_model(project, head)
        elif head in ("datasets", "notebooks") and rest:
            check_member(head, rest[0])
            continue
        elif head in _TOP:
            continue
        if head not in declared["models"]:
            for kind in ("datasets", "notebooks"):
                if head in declared[kind]:
                    raise TargetError(f"{target!r} is not a target: did you mean {kind}.{target}?")
            if rest and rest[0] in MODEL_STAGES:
                check_model(project, head)
            raise TargetError(
                f"{target!r} is not a target of {project.name}: give a model ({names('models')}), "
                f"MODEL.STAGE ({', '.join(MODEL_STAGES)}), toolchain, datasets.NAME ({names('datasets')}) "
                f"or notebooks.NAME ({names('notebooks')})")
        if rest and rest[0] not in MODEL_STAGES:
            raise TargetError(f"{target!r}: a model has no stage {rest[0]!r}; "
                              f"its stages are {', '.join(MODEL_STAGES)}")
        if len(rest) > 1 and rest[0] in ("datasets", "notebooks"):   # MODEL.datasets.NAME is datasets.NAME
            check_member(rest[0], rest[1])


@dataclass(frozen=True)
class Progress:
    target: str
    event: dict[str, Any]


@dataclass(frozen=True)
class Built:
    target: str
    path: str


@dataclass
class Summary:
    outputs: list[Built] = field(default_factory=list)
    built: list[tuple[str, float]] = field(default_factory=list)        # (derivation, seconds)
    substituted: list[tuple[str, float]] = field(default_factory=list)  # (store path, seconds)
    present: list[str] = field(default_factory=list)                    # targets already there
    pushed: list[str] = field(default_factory=list)                     # paths pushed to the store
    checked: list[str] = field(default_factory=list)                    # targets built again, the same bytes
    fixed: list[str] = field(default_factory=list)       # --check: fixed-output targets, checked by their hash
    shared: int | None = None    # paths the shared store already had (None: no push was asked for)
    seconds: float = 0.0
    push_seconds: float = 0.0    # of ``seconds``: the push, said on its own line, not the build's
    dirty: bool = False          # built from a dirty worktree (--allow-dirty): marked so in provenance


def _code(table: Any, default: Any, where: str, key: str) -> list[str]:
    """A stage's ``code`` list (default: its one script), as nix/*.nix give it to mkCode. A file
    outside the project is refused, as mkCode refuses it (git, asked about it, failed with a
    screenful)."""
    code = table.get("code", [default]) if isinstance(table, dict) else []
    files = [f.rstrip("/") for f in code if isinstance(f, str)] if isinstance(code, list) else []
    for f in files:
        if f.startswith("/") or ".." in f.split("/"):
            named = f"{where}.code" if isinstance(table, dict) and "code" in table else f"{where}.{key}"
            raise ConfigError(f"{named} names {f!r}, which is outside the project: a build sees only the "
                              "project folder's files; move it into the project and name it relative to it")
    return files


def model_code(project: Project, model: str) -> list[str]:
    """The files model ``model`` and its validation suite read, with the code of every derived
    dataset they are made from (a changed prepare.py changes the training and held-out data)."""
    table = project.raw.get("models", {}).get(model)
    if not isinstance(table, dict):
        return []
    v = table.get("validation")
    files = [*_code(table, table.get("script", f"{model}.py"), f"[models.{model}]", "script"),
             *(_code(v, v["suite"], f"[models.{model}.validation]", "suite") if isinstance(v, dict) and "suite" in v else [])]
    datasets = project.raw.get("datasets") or {}
    todo = [d for d in (table.get("datasets") or []) if isinstance(d, str)]
    if isinstance(v, dict) and isinstance(v.get("dataset"), str):
        todo.append(v["dataset"])
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        t = datasets.get(name) if isinstance(datasets, dict) else None
        if name in seen or not isinstance(t, dict) or "prepare" not in t:
            continue
        seen.add(name)
        files += _code(t, t["prepare"], f"[datasets.{name}]", "prepare")
        todo += [d for d in (t.get("inputs") or []) if isinstance(d, str)]
    return list(dict.fromkeys(files))


def code_inputs(project: Project) -> list[str]:
    """The project files the stages read (each ``code`` list, or its default: the script, the
    prepare script, the suite, the notebook)."""
    raw = project.raw
    out = [f for n, t in (raw.get("datasets") or {}).items() if isinstance(t, dict) and "prepare" in t
           for f in _code(t, t["prepare"], f"[datasets.{n}]", "prepare")]
    out += [f for m in (raw.get("models") or {}) for f in model_code(project, m)]
    out += [f for n, t in (raw.get("notebooks") or {}).items() if isinstance(t, dict) and "path" in t
            for f in _code(t, t["path"], f"[notebooks.{n}]", "path")]
    return sorted(set(out))


def dirty_files(project: Project) -> git.Dirty:
    return git.dirty_files(project.root, code_inputs(project))


def _local_datasets(project: Project) -> dict[str, str]:
    """The declared local datasets: name -> ``path`` as mlbuild.toml gives it."""
    return {k: str(v["path"]) for k, v in (project.raw.get("datasets") or {}).items()
            if isinstance(v, dict) and isinstance(v.get("path"), str)}


def _dataset_of(root: Path, datasets: dict[str, str], name: str) -> str | None:
    """The dataset whose file or folder holds the project path ``name``, if one does."""
    wanted = os.path.normpath(root / name)
    for dataset, path in sorted(datasets.items()):
        data = os.path.normpath(root / path)
        if wanted == data or wanted.startswith(data + os.sep):
            return dataset
    return None


def check_clean(project: Project, built: Sequence[str] = (),
                then: str = "the next target would be built from the change and marked clean") -> None:
    """DirtyTreeError listing what is not committed. ``built``: the targets this build built while
    the tree was clean (it changed since, and ``then`` says what the next step would do with it)."""
    dirty = dirty_files(project)
    if not dirty:
        return
    datasets = _local_datasets(project)

    def ignored(p: str) -> str:
        data = _dataset_of(project.root, datasets, p)
        return (f"  ignored:   {p} (the data of dataset {data}, which the build reads from the store: take it out "
                f"of `code` and list \"{data}\" in the stage's datasets)" if data else
                f"  ignored:   {p} (git ignores it, but the code the build reads holds it)")

    lines = [f"  modified:  {p}" for p in dirty.modified] + [f"  untracked: {p}" for p in dirty.untracked] \
        + [ignored(p) for p in dirty.ignored] \
        + [f"  line ends: {p} (git checks it out with other line ends than it commits)" for p in dirty.converted]
    more = f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""
    fix = ("; a code file git ignores is in no commit (and `nix build` never sees it): `git add -f` it, or "
           "take it out of `code`" if any(_dataset_of(project.root, datasets, p) is None for p in dirty.ignored)
           else "")
    if any(os.path.basename(p) == "flake.lock" for p in [*dirty.modified, *dirty.untracked]):
        fix += ("; flake.lock is what `nix flake lock` (or the first `nix build`/`nix run`) writes: commit it "
                "(`git add flake.lock && git commit`)")
    if dirty.converted:
        fix += ("; a file git converts on checkout (core.autocrlf, an eol= in .gitattributes) is built as this folder "
                "holds it, bytes no commit holds (`nix build` reads the commit: another store path, a retraining): "
                "check it out as committed (`git config core.autocrlf input`, or drop the eol=; then delete it and "
                "`git checkout -- PATH`)")
    if os.environ.get("GIT_DIR"):   # git.pin_environment wrote its work tree out
        fix += (f"; GIT_DIR={os.environ['GIT_DIR']} is set, so git reads that repository, with the work tree "
                f"{os.environ.get('GIT_WORK_TREE', '.')}: where that is not the project's, unset GIT_DIR and "
                f"GIT_WORK_TREE")
    head = "the worktree is not clean, so the inputs of this build would not be known:\n"
    if built:   # another terminal's edit, `data add`, `git checkout` while the earlier targets built
        head = (f"the worktree changed while this build ran ({', '.join(built)} built from the clean tree, before "
                f"it changed); {then}, so it stops here:\n")
    raise DirtyTreeError(
        head
        + "\n".join(lines[:20]) + more
        + "\ncommit code and configuration; add data files and outputs to .gitignore (data is pinned by "
          "`mlbuild data add`, never committed)" + fix + "; or pass --allow-dirty to build anyway (the outputs' "
          "provenance is then marked dirty, which retrains the model once)"
    )


def _name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    base = base[33:] if len(base) > 33 and base[32] == "-" else base
    return base[:-4] if base.endswith(".drv") else base


class _Stream:
    """Follows Nix's internal-json activity stream."""

    def __init__(self, target: str, on_progress: Callable[[Progress], None] | None) -> None:
        self.target = target
        self.on_progress = on_progress
        self.acts: dict[int, tuple[int, str, float]] = {}
        # The last LOG_TAIL lines of each derivation's log: a training that prints gigabytes would
        # otherwise be held whole in mlbuild's memory, to show 30 lines of it if it fails.
        self.logs: dict[str, deque[str]] = {}
        self.lines: dict[str, int] = {}   # how many lines each log had: more than the tail shows?
        self.summary = Summary()
        self.other: list[str] = []
        self.waits: set[str] = set()   # Nix's waits said (one for a remote builder may start again and again)

    def line(self, raw: str) -> None:
        if not raw.startswith("@nix "):
            self.other.append(raw.rstrip())
            return
        try:
            msg = json.loads(raw[5:])
        except ValueError:
            return
        action = msg.get("action")
        if action == "start" and msg.get("type") == _ACT_BUILD_WAITING:
            self._waiting(str(msg.get("text", "")))
        elif action == "start" and msg.get("type") in (_ACT_BUILD, _ACT_SUBSTITUTE):
            self.acts[msg["id"]] = (msg["type"], msg["fields"][0], time.monotonic())
        elif action == "stop" and msg.get("id") in self.acts:
            kind, what, t0 = self.acts.pop(msg["id"])
            dest = self.summary.built if kind == _ACT_BUILD else self.summary.substituted
            dest.append((what, time.monotonic() - t0))
        elif action == "result" and msg.get("type") == _RES_LOG and msg.get("id") in self.acts:
            text = str(msg["fields"][0])
            drv = self.acts[msg["id"]][1]
            if not text.startswith(EVENT):   # progress events drive the bar; a failure shows the rest
                self.logs.setdefault(drv, deque(maxlen=LOG_TAIL)).append(text)
                self.lines[drv] = self.lines.get(drv, 0) + 1
            elif self.on_progress is not None:
                try:
                    event = json.loads(text[len(EVENT):])
                except ValueError:
                    return
                self.on_progress(Progress(_name(drv), event))
        elif action == "msg" and msg.get("level", 9) <= 0:
            self.other.append(str(msg.get("msg", "")))

    def _waiting(self, text: str) -> None:
        """Nix waits for the lock another process holds on an output: the build it waits for runs on
        alone, most often one whose mlbuild was killed (kill -9, a CI runner's timeout), and the
        command sat silent until that build ended (minutes of training), then said `cached`. Nix
        uses the same activity for other waits (a free build user, a remote builder: `waiting for UID
        to build '...drv'`, `waiting for a machine to build ...`), said as Nix says them, and for a
        content-addressed derivation's `resolved derivation: ...`, which is no wait. mlbuild's own
        `nix build` runs as `nix --extra-experimental-features ... build ...`: `pgrep -af 'nix build'`
        found none of them."""
        plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
        if not plain.startswith("waiting") or plain in self.waits:
            return
        self.waits.add(plain)
        if not plain.startswith("waiting for lock"):
            print(f"mlbuild: nix is {plain}", file=sys.stderr, flush=True)
            return
        paths = re.findall(r"/nix/store/[0-9a-z]{32}-[^'\s\x1b]+", text) or [re.sub(r"\x1b\[[0-9;]*m", "", text)]
        names = ", ".join(p.rsplit("/", 1)[-1][33:] or p for p in paths)
        print(f"mlbuild: waiting for another build of {names} to finish (Nix's lock on {', '.join(paths)}): a "
              f"`nix build` or mlbuild of the same thing, or one left running by an mlbuild that was killed "
              f"(`pgrep -af 'nix.*build'` lists them and their trainings); this build takes its output once it is done", file=sys.stderr,
              flush=True)

    def failure(self, root: Path, datasets: dict[str, str] | None = None) -> BuildError:
        text = "\n".join(self.other)
        failed = [d for d in self.logs if d in text] or list(self.logs)
        tail = []
        for drv in failed[-1:]:
            tail = [f"--- last lines of the build log of {_name(drv)} ---", *self.logs[drv]]
            if self.lines.get(drv, 0) > len(self.logs[drv]):   # a failed build has no train.log: where the rest is
                tail.append(f"--- its last {len(self.logs[drv])} of {self.lines[drv]} lines; the whole log: "
                            f"nix log {drv} ---")
        errors = [l for l in self.other if "error" in l.lower()][-8:]
        hints = [*_own_module(root, tail), *_missing_file(root, datasets or {}, tail), *_sparse(root, errors)]
        return BuildError(f"nix build of {self.target} failed{_nix.daemon_denied_hint(text)}",
                          "\n".join([*errors, *tail, *hints]))


def _store_hint(error: BuildError, store: StoreConfig | None) -> BuildError:
    """A substitute that failed is, with the shared store the only substituter, an entry damaged
    there (a NAR cut short, other bytes than its narinfo says), not "networking issues" as Nix
    says, nor a case for its `--fallback`: say how to find it and what to do."""
    if store is None or "some substitutes for the outputs of derivation" not in error.log_tail:
        return error
    from .store.layout import store_command

    return error.with_hint(
        f"\nmlbuild: fetching from the shared store {store.root} failed: an entry there is damaged (not the network): "
        f"`{store_command(store.root, 'verify')}` names it; `verify --repair` removes it, then push it again from a "
        f"machine that has it (`mlbuild build --push TARGET`)")


_HASH_MISMATCH = re.compile(r"hash mismatch in fixed-output derivation '[^']*?/[0-9a-z]{32}-([^'/]+)\.drv':"
                            r"\s*specified:\s*(\S+)\s*got:\s*(\S+)")


def _url_hash_hint(error: BuildError, project: Project) -> BuildError:
    """A url dataset whose file is not the one its sha256 pins: Nix names the derivation and two
    base64 hashes; say which dataset, the file's sha256 as `sha256sum` writes it and the fix."""
    found = _HASH_MISMATCH.search(_ANSI.sub("", error.log_tail))   # Nix colours the path and hashes
    table = (project.raw.get("datasets") or {}).get(found.group(1)) if found else None
    if found is None or not isinstance(table, dict) or not isinstance(table.get("url"), str):
        return error
    name, got = found.group(1), found.group(3)
    if got.startswith("sha256-"):
        got = base64.b64decode(got[len("sha256-"):]).hex()
    return error.with_hint(
        f"\nmlbuild: dataset {name}: the file at {table['url']} has sha256 {got}, not the "
        f"{table.get('sha256')} that [datasets.{name}].sha256 pins: if the file changed on purpose, set "
        f"sha256 = \"{got}\" in mlbuild.toml (derived datasets and models built from it are built again); "
        "otherwise the URL now serves other bytes (a new version, an error page): fix the URL")


def _own_module(root: Path, tail: list[str]) -> list[str]:
    """The runtime's "no module named X" hint made exact, where X is a file or folder of the project."""
    found = next((m for line in reversed(tail) if (m := _NO_MODULE.match(line))), None)
    if found is None:
        return []
    name = found.group(1)
    own = next((p for p in (f"{name}.py", f"{name}/") if (root / p.rstrip("/")).exists()), None)
    return [] if own is None else [
        f"mlbuild: {own} is in the project but not in the build: add {json.dumps(own)} to the failing "
        "stage's `code = [...]` in mlbuild.toml (its script and those files are all a stage sees)"]


_NOT_THERE = re.compile(r"names (\S+), which does not exist in ")


def _sparse(root: Path, errors: list[str]) -> list[str]:
    """A code file Nix found missing (`[models.m].script names m.py, which does not exist`) that
    git has, left out of the folder by a sparse checkout: how to bring it."""
    found = next((m for line in errors if (m := _NOT_THERE.search(_ANSI.sub("", line)))), None)
    rel = git.sparse_excluded(root / found.group(1)) if found else None
    return [] if rel is None else [
        f"mlbuild: {rel} is in git, but this sparse checkout leaves it out of the folder the build reads: "
        f"`git sparse-checkout add {shlex.quote('/' + rel)}` (in cone mode, its folder: "
        f"`git sparse-checkout add {shlex.quote(os.path.dirname(rel) or '/')}`)"]


_NO_MODULE = re.compile(r"mlbuild: no module named '([A-Za-z_][A-Za-z0-9_]*)' in this build")
_NOTEBOOK = re.compile(r"mlbuild: notebook (.+) failed at ")
_NO_FILE = re.compile(r"\s*FileNotFoundError: \[Errno 2\] No such file or directory: '([^']+)'$")


def _missing_file(root: Path, datasets: dict[str, str], tail: list[str]) -> list[str]:
    """A relative path the stage could not open that is the project's: a file of a dataset (read
    from the store, by name), or a project file (a stage runs in a temporary folder and sees its
    `code` files only; a notebook runs in a copy of them). A bare FileNotFoundError said neither."""
    found = next((m for line in reversed(tail) if (m := _NO_FILE.match(line))), None)
    if found is None:
        return []
    name = found.group(1)
    header = next((m for line in tail if (m := _NOTEBOOK.match(line))), None)
    notebook = header is not None
    if os.path.isabs(name):
        # There on this machine, not in the build: Nix's sandbox (Debian 13's Nix has it on) shows a
        # build its inputs only. Without one (Debian 12's `sandbox = false`) the build read it, and
        # no store path recorded it: the same build failed on CI only, with a bare FileNotFoundError.
        # (a dangling symlink here is no file either: `data add` of it fails as the build did)
        if not os.path.exists(name) or name.startswith(_nix.store_dir() + "/"):
            return []
        read = 'DATA["NAME"]' if notebook else 'ctx.data["NAME"] (a prepare: inputs["NAME"])'
        return [f"mlbuild: {name} is a file of this machine, which a build does not see: Nix's sandbox (on here, as "
                f"Debian 13's Nix has it) gives a build its inputs only (Debian 12's Nix, sandbox = false, let it read "
                f"the file, though no store path records it); pin it as a dataset, `mlbuild data add NAME {name}`, "
                f"list NAME in {'the notebook' if notebook else 'the failing stage'}'s datasets and read {read}"]
    # a notebook's kernel runs in the notebook's folder (notebooks/eda.ipynb reading ../data/x.csv)
    rel = os.path.normpath(os.path.join(os.path.dirname(header.group(1)), name)) if header else name
    shown = name if rel == os.path.normpath(name) else f"{name} ({rel} from the notebook's folder)"
    dataset = _dataset_of(root, datasets, rel)
    if dataset is not None:
        read = 'DATA["{0}"]' if notebook else 'ctx.data["{0}"] (a prepare: inputs["{0}"])'
        return [f"mlbuild: {shown} is the dataset {dataset} ({datasets[dataset]}), which a build reads from the store, "
                f"not from the project folder: list \"{dataset}\" in {'the notebook' if notebook else 'the failing stage'}'s "
                f"datasets and read {read.format(dataset)}"]
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or not os.path.lexists(root / rel):
        return []
    if notebook:
        return [f"mlbuild: {shown} is in the project but not in the build: add {json.dumps(rel)} to the notebook's "
                "`code = [...]` in mlbuild.toml (its working folder holds those files only)"]
    return [f"mlbuild: {name} is in the project, but a stage runs in an empty temporary folder: list "
            f"{json.dumps(name)} in the failing stage's `code = [...]` in mlbuild.toml and open it beside the "
            f"script, Path(__file__).parent / {json.dumps(name)}"]


def _record(project: Project, built: Built, status: str, dirty: bool) -> None:
    state = state_dir(project.root)
    entry = {"target": built.target, "path": built.path, "status": status, "git_rev": git.head(project.root),
             "dirty": dirty, "nix": ".".join(map(str, _nix.nix_version())), "time": time.time()}
    atomic.append_line(state / "builds.jsonl", json.dumps(entry, sort_keys=True))


def shared_store(project: Project) -> tuple[StoreConfig, list[str]] | None:
    """The shared store set up for this project or machine and the Nix options that substitute
    from it (signatures checked); None when there is none. A store that is named (in mlbuild.toml
    or MLBUILD_STORE) or present but cannot be used is a warning: the build goes on without it, and
    what it would have fetched is rebuilt (or is missing), so the user must know why. A [store]
    table that is wrong (an unknown key, a bad value) is an error."""
    from .store.config import DEFAULT_ROOT, load_store_config
    from .store.layout import Layout

    # A wrong [store] table is an error, not a warning: nix/project.nix refuses it for the build too.
    cfg = load_store_config(project.root)
    try:
        if not Layout(cfg.root).is_initialised():
            if cfg.root != DEFAULT_ROOT or cfg.root.exists():
                _warn_no_store(f"the shared store {cfg.root} is not set up (no such store there: an NFS mount "
                               f"that is not up, or a store never initialised; `mlbuild store init` makes one)")
            return None
        return cfg, cfg.nix_options()
    except MlbuildError as e:
        _warn_no_store(str(e))
        return None


def store_options(project: Project) -> list[str]:
    """The Nix options of ``shared_store`` (none without a usable store)."""
    store = shared_store(project)
    return store[1] if store is not None else []


def warn_store_keys(cfg: StoreConfig) -> None:
    """Say why a build may have rebuilt what the store holds: Nix's own configuration gives a
    store key's name to another key (Nix keeps one key per name), or no key trusted here (mlbuild's
    setting or Nix's) is one the store names as its own (``<store>/mlbuild/public-key``): Nix then
    refuses every signed entry and trains again without a word. Asked only after a build built
    something (it runs `nix show-config`, ~0.2 s, which a build that built nothing need not pay)."""
    from .store.layout import Layout
    from .store.push import published_keys

    if _nix.untrusted_daemon_user():   # only the daemon's own nix.conf counts
        _warn_daemon_store(cfg, _nix.nix_config())
        return
    nix_keys = _nix.configured_public_keys()
    for key, theirs in cfg.shadowed_keys(nix_keys):
        print(f"mlbuild: warning: the shared store's key {key} shares its name with {theirs} in Nix's own "
              f"configuration (trusted-public-keys): Nix keeps one key per name, so it may refuse the store's "
              f"signatures and rebuild what the store holds; give one of the keys another name", file=sys.stderr)
    try:
        published = published_keys(Layout(cfg.root))
    except StoreKeyError:   # a push names the problem; a build only warns about what it explains
        return
    trusted = cfg.trusted_keys()
    if published and not {str(k) for k in published} & {*map(str, trusted), *nix_keys}:
        keys = " ".join(map(str, published))
        print(f"mlbuild: warning: the shared store {cfg.root} is signed by {keys} ({cfg.root}/mlbuild/public-key), "
              f"which this machine does not trust (trusted here: {', '.join(k.name for k in trusted)}): Nix refuses "
              f"what the store holds and builds it again; if that is your team's key (ask whoever keeps the "
              f"store: anyone who may write the folder may change that file), trust it: "
              f"MLBUILD_STORE_PUBLIC_KEYS='{keys}' (or [store].public-keys in mlbuild.toml)", file=sys.stderr)


def _warn_daemon_store(cfg: StoreConfig, config: dict[str, str]) -> None:
    """``warn_store_keys`` for a user the Nix daemon does not trust: the daemon substitutes from
    the store only where its own nix.conf names it (``substituters``, or ``trusted-substituters``,
    which lets a call name it) and trusts a key the store signs with."""
    from .store.layout import Layout
    from .store.push import published_keys

    try:
        keys = [str(k) for k in published_keys(Layout(cfg.root))] or [str(k) for k in cfg.trusted_keys()]
    except StoreKeyError:
        keys = [str(k) for k in cfg.trusted_keys()]
    want = []
    if cfg.url not in {*config.get("substituters", "").split(), *config.get("trusted-substituters", "").split()}:
        want.append(f"extra-substituters = {cfg.url}")
    if keys and not set(keys) & set(config.get("trusted-public-keys", "").split()):
        want.append(f"extra-trusted-public-keys = {' '.join(keys)}")
    if want:
        print(f"mlbuild: warning: the shared store {cfg.root} was not used, so what it holds was built again: "
              f"{_nix.daemon_admin_hint(want)}", file=sys.stderr)


def _warn_no_store(reason: str) -> None:
    print(f"mlbuild: warning: building without the shared store: {reason}", file=sys.stderr)


def wants_push(project: Project) -> bool:
    table = project.raw.get("store", {})
    push = table.get("push", False) if isinstance(table, dict) else False
    if not isinstance(push, bool):   # "false" in quotes is a string, and a true one
        raise ConfigError(f"{project.config_path}: [store].push must be true or false (no quotes), got {push!r}")
    return push


def _check_push_target(project: Project, asked: bool) -> None:
    """Before building what will be pushed: the store must be there and writable here, and the
    signing key readable, trusted and the store's own (a bad key found after the build wasted
    the training). ``asked``: --push was given, else ``[store] push = true`` asked for it. Each
    refusal says how to build without pushing: a pull-request CI job on a read-only mount of a
    project with ``push = true`` was told only to "do it from a machine that mounts the store
    read-write"."""
    from .errors import StoreError
    from .store.config import load_store_config
    from .store.layout import Layout
    from .store.push import check_signing_key, check_store_key

    cfg = load_store_config(project.root)
    layout = Layout(cfg.root)
    without = "; or build without pushing (--no-push" + \
        ("" if asked else f", as [store] push = true in {project.config_path.name} asks for a push") + ")"
    try:
        layout.require()
        layout.require_writable("push")
        key = cfg.secret_key()
        check_signing_key(key, cfg.trusted_keys())
        check_store_key(layout, key, cfg.secret_key_file, cfg.secret_key_from)
    except StoreError as e:   # found before building: say so, and how to build without pushing
        raise type(e)(str(e).replace("so nothing was pushed", "so nothing was built or pushed") + without) from None


def push_outputs(project: Project, summary: Summary) -> None:
    """Push the built outputs' closures (and what rebuilding them needs) to the shared store;
    records what was pushed and how much was there already in ``summary``."""
    from .store.config import load_store_config
    from .store.push import push

    result = push(load_store_config(project.root), [b.path for b in summary.outputs], build_deps=True)
    summary.pushed = [n.store_path for n in result.pushed]
    summary.shared = len(result.present)


def _derived_dataset_roots(project: Project, target: str, drv: str | None) -> dict[str, str]:
    """GC roots for the datasets a model's target was built from (those in the store).

    No output refers to a dataset (outputs name theirs by hash), so without a root of its own a
    split that took hours to prepare would go at the next `nix-collect-garbage`, and the next
    retraining would prepare it again. Raw datasets are rooted by `data add`, and again here: in a
    project moved or copied since, Nix held that root by the old folder's path."""
    declared = {n for n, t in project.raw.get("datasets", {}).items() if isinstance(t, dict)}
    if not declared or drv is None or target.split(".", 1)[0] in ("toolchain", "datasets", "notebooks"):
        return {}
    # One nix-store call (was three: the outputs missing here, which build_closure also names, get no root).
    # A dataset's path is its derivation's output: other paths of the closure may have its name (a
    # dataset named "code" or "suite" is named like the code a stage reads), and one of them got the
    # dataset's root, `data add`'s own included, which then held the code, not the data.
    listed = _nix.closure_with_outputs([drv])
    valid = {p for p in listed if not p.endswith(".drv")}
    outputs = ((_name(d), _nix.drv_outputs(d).get("out")) for d in listed if d.endswith(".drv") and _name(d) in declared)
    return {f"dataset-{name}": out for name, out in outputs if out in valid}


def changed_datasets(project: Project, lock: dict[str, Any]) -> list[str]:
    """A line for each local dataset whose files differ from what mlbuild.lock pins.

    Builds use the pinned version (the lock is what is reproducible), which is right, but a user
    who edited the CSV expects the edit to count: say so. Through the stat cache (`local_sha256`),
    an unchanged dataset costs a walk of lstat calls, and a changed one is read once, not per build."""
    from .data.datasets import local_sha256
    from .nar import ChangedWhileReadError, NotStorableError

    lines = []
    for name, table in sorted((project.raw.get("datasets") or {}).items()):
        pinned = (lock.get("datasets") or {}).get(name, {}).get("sha256")
        if not isinstance(table, dict) or not isinstance(table.get("path"), str) or pinned is None:
            continue
        local = project.root / table["path"]
        try:
            sha = local_sha256(project.root, name, local)
        except (OSError, NotStorableError, ChangedWhileReadError):
            continue   # gone, unreadable, unstorable or being written: `data status` says which
        if sha != pinned:
            lines.append(f"{table['path']} differs from the version mlbuild.lock pins for dataset {name}; this build "
                         f"uses the pinned one. To use the new files: mlbuild data add {name} {table['path']}")
    return lines


@contextlib.contextmanager
def _stopped_with_us(proc: subprocess.Popen[str]) -> Iterator[None]:
    """Stop ``nix build`` if mlbuild is stopped while it runs.

    A Ctrl-C in a terminal reaches the whole process group, Nix included; a SIGINT or SIGTERM sent
    to mlbuild alone (a CI runner, a supervisor, `kill`) did not, and left nix and its builder (a
    training run) orphaned, holding the output's lock, so the next build waited silently. SIGTERM
    is made an exception here, and on any exception Nix gets SIGINT (it stops its builders and
    exits), then SIGKILL after 10 s."""
    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if main else None
    try:
        yield
    except BaseException:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def build_targets(project: Project, targets: Sequence[str], *, allow_dirty: bool = False,
                  overrides: dict[str, Any] | None = None, substituters: Sequence[str] = (),
                  extra: Sequence[str] = (), push: bool | None = None, check: bool = False,
                  on_progress: Callable[[Progress], None] | None = None, keep: bool = True) -> Summary:
    """Build each target, substituting from the shared store when one is set up; with ``check``,
    build each target's own derivation again and compare (BuildError naming the files that
    differ); push the results when ``push`` (default: ``[store] push = true`` in mlbuild.toml).
    ``keep=False`` for a project that is a temporary snapshot of a git revision (`metrics
    history`, `metrics diff`): its ``.mlbuild`` goes with it, so no GC roots or build records
    are written there (they cost five Nix calls per revision and left dangling roots).
    Raises DirtyTreeError, BuildError (with the build log's tail)."""
    targets = list(dict.fromkeys(targets))   # `build lr lr`: one build, one line
    check_targets(project, targets)
    _check_tmpdir()
    state_dir(project.root, writable=True)   # its records and GC roots go there: refused before training, not after
    lock = read_lock(project.lock_path)
    check_fresh(project, lock)
    for line in changed_datasets(project, lock):
        print(f"mlbuild: warning: {line}", file=sys.stderr)
    dirty = bool(dirty_files(project))
    if dirty and not allow_dirty:
        check_clean(project)
    entry = _entry_file(project, overrides, dirty)
    args = ["--argstr", "src", str(project.root), "--argstr", "overrides", json.dumps(overrides or {})]
    if dirty:
        args += ["--arg", "dirty", "true"]
    do_push = push if push is not None else wants_push(project)   # a bad [store].push, before building
    if do_push:
        _check_push_target(project, asked=push is not None)
    total = Summary(dirty=dirty)
    # A variant (`exp run --set`) is rooted under a name of its own: under the target's name it
    # replaced the root of the configured build, which the next garbage collection then took.
    variant = "@" + hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:12] \
        if overrides else ""
    t0 = time.monotonic()
    store = shared_store(project)
    extra = [*(store[1] if store is not None else []), *extra]
    def command(target: str, *flags: str) -> list[str]:
        return [*_nix.common_options(substituters), *extra, "build", "--json", "--no-link", *flags,
                "--log-format", "internal-json", "--file", str(entry), *args, target]

    drvs: dict[str, str] = {}
    for target in list(targets) or ["toolchain"]:
        if total.outputs and not dirty:   # Nix reads the folder as each target starts, not once
            if not allow_dirty:
                check_clean(project, built=[b.target for b in total.outputs])
            elif dirty_files(project):   # as asked: the rest is built from the change, marked dirty
                dirty = total.dirty = True
                entry = _entry_file(project, overrides, dirty)
                args += ["--arg", "dirty", "true"]
        stream, status, out = _run_build(target, command(target), on_progress)
        if status != 0:
            raise _store_hint(_url_hash_hint(stream.failure(project.root, _local_datasets(project)), project),
                              store[0] if store is not None else None)
        result = _nix.parse_build_json(out)[0]
        path = result["outputs"]["out"]
        built = Built(target, path)
        total.outputs.append(built)
        if result.get("drvPath"):
            drvs[target] = result["drvPath"]
        total.built += stream.summary.built
        total.substituted += stream.summary.substituted
        # Built by this command: in this target's step, or in an earlier one (an image builds its
        # validation first, and `build X.image X.validation` then finds the validation there).
        mine = any(_name(d).startswith(_name(path)) for d, _ in total.built) or \
            any(p == path for p, _ in total.substituted)
        if not mine:
            total.present.append(target)
        # The root first: the output is unrooted until then (`--no-link`), and a record that cannot
        # be written (a full disk) must not leave it so.
        if not keep:
            continue
        _nix.add_roots({target + variant: path, **_derived_dataset_roots(project, target, result.get("drvPath"))},
                       state_dir(project.root) / "gcroots")
        _record(project, built, "present" if not mine else "built", dirty)
    if store is not None and total.built:
        warn_store_keys(store[0])
    if check:   # before the push: a build that is not reproducible is not shared
        for built in total.outputs:
            drv = drvs.get(built.target)
            if drv is not None and _nix.is_fixed_output(drv):   # a dataset: its "build" only says it is missing
                total.fixed.append(built.target)
                continue
            if not dirty:   # Nix reads the folder again: a change since is what it would rebuild and compare
                check_clean(project, built=[b.target for b in total.outputs],
                            then="the check would build the change again, not what was built")
            report = _report_of(project, built.target)
            if report is not None and report not in total.checked and report not in targets:
                # the gate only compares thresholds: its report computes the metrics
                stream, status, out = _run_build(report, command(report), on_progress)
                if status != 0:
                    raise stream.failure(project.root)
                result = _nix.parse_build_json(out)[0]
                _check_reproducible(project, report, command(report, "--rebuild", "--keep-failed"),
                                    on_progress, result.get("drvPath"), result["outputs"]["out"])
                total.checked.append(report)
            _check_reproducible(project, built.target, command(built.target, "--rebuild", "--keep-failed"),
                                on_progress, drv, built.path)
            total.checked.append(built.target)
    if do_push:
        t_push = time.monotonic()
        push_outputs(project, total)
        total.push_seconds = time.monotonic() - t_push
    total.seconds = time.monotonic() - t0
    return total


def _entry_file(project: Project, overrides: dict[str, Any] | None, dirty: bool) -> Path:
    """The entry.nix of the mlbuild the project's flake pins, where it takes ``overrides`` and
    ``dirty`` as this build needs; else this mlbuild's own."""
    needs = (*(["overrides"] if overrides else []), *(["dirty"] if dirty else []))
    return pinned_entry(project.root, needs=needs) or _nix.nix_lib_dir() / "entry.nix"


def _check_tmpdir() -> None:
    """Refuse a TMPDIR that Nix's build users cannot enter (``mktemp -d`` makes one: mode 0700),
    where root builds with no daemon and no sandbox (Debian's nix.conf): Nix makes each build's
    folder in it, owned by a build user, and the builder failed on its own spec file with a
    PermissionError naming neither."""
    tmpdir = os.environ.get("TMPDIR")
    if not tmpdir or os.geteuid() != 0 or not _nix.store_is_local():
        return
    shut = next((p for p in (Path(tmpdir).absolute(), *Path(tmpdir).absolute().parents)
                 if p.is_dir() and not p.stat().st_mode & 0o001), None)
    if shut is None:
        return
    config = _nix.nix_config()
    group = config.get("build-users-group", "")
    if group and config.get("sandbox") == "false":   # a sandbox binds the folder in as /build
        raise BuildError(f"TMPDIR is {tmpdir}, which Nix's build users (group {group}) cannot enter ({shut} has mode "
                         f"{shut.stat().st_mode & 0o777:04o}): each build runs in a folder there; "
                         f"`chmod o+x {shut}`, or unset TMPDIR")


def _report_of(project: Project, target: str) -> str | None:
    """``MODEL.validation.report`` for a target that is a model's validation (the gate), else None."""
    parts = target.split(".")
    parts = parts[1:] if parts[0] == "models" else parts
    models = project.raw.get("models") or {}
    return f"{target}.report" if len(parts) == 2 and parts[1] == "validation" and parts[0] in models else None


def _run_build(target: str, cmd: list[str], on_progress: Callable[[Progress], None] | None,
               env: dict[str, str] | None = None, cpus: set[int] | None = None) -> tuple[_Stream, int, str]:
    """Run ``nix CMD`` (a build with ``--log-format internal-json``), following its log: the
    stream read, the exit status and stdout. ``env``: variables to set for Nix; ``cpus``: the CPUs
    it (and a build it runs itself, with no daemon) may use."""
    stream = _Stream(target, on_progress)
    before = os.sched_getaffinity(0) if cpus else None
    try:
        if cpus:   # inherited by the child at its start: set around it, in this thread alone
            os.sched_setaffinity(0, cpus)
        proc = subprocess.Popen([_nix._which("nix"), *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors="surrogateescape", env={**os.environ, **(env or {})})
    finally:
        if before:
            os.sched_setaffinity(0, before)
    assert proc.stderr is not None and proc.stdout is not None
    with _stopped_with_us(proc):
        for raw in proc.stderr:
            stream.line(raw)
        out = proc.stdout.read()
        status = proc.wait()
    return stream, status, out


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_DIFFERS = re.compile(r"may not be deterministic: output '([^']+)' differs from '([^']+)'")
_KEPT = re.compile(r"keeping build directory '([^']+)'")
_UNCHECKABLE = re.compile(r"some outputs of '([^']+)' are not valid, so checking is not possible")


def _drop_kept(said: str) -> None:
    """Remove the build folders ``--keep-failed`` kept (it keeps the .check output, and the build
    folder too). Nix 2.26 names the `build` folder inside its own `nix-build-NAME.drv-N` (the
    sandbox's /build): removing only that left an empty folder in /tmp at every check."""
    import shutil

    for kept in _KEPT.findall(said):
        top = Path(kept)
        if top.name == "build" and top.parent.name.startswith("nix-build-"):
            top = top.parent
        shutil.rmtree(top, ignore_errors=True)


def _check_reproducible(project: Project, target: str, cmd: list[str],
                        on_progress: Callable[[Progress], None] | None, drv: str | None, built_path: str) -> None:
    """Build ``target``'s own derivation again (``nix build --rebuild``: its inputs are not rebuilt),
    in another build folder and on one CPU fewer, and compare with the output there is, which may
    have come from the shared store; BuildError naming the files whose bytes differ, with the
    second build kept beside the first (``OUT.check``) to compare."""
    import shutil
    import tempfile

    from .data.importer import remove_tree
    from .runtime.hashing import sha256_file
    from .storepath import check_output_path

    # Built again under other conditions than the first build, not only at another time: in
    # another build folder (a path the training wrote into its outputs, os.getcwd() or a warning's
    # file name) and on one CPU fewer (a thread count taken from the machine): as the same build
    # was on the same machine, those came out the same, and a teammate's build did not.
    # (Where a Nix daemon builds, it builds in its own folder, on its own CPUs.)
    folder = tempfile.mkdtemp(prefix="mlbuild-check-")
    os.chmod(folder, 0o755)   # Nix's build users make their folders in it
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    try:
        stream, status, out = _run_build(target, cmd, on_progress, env={"TMPDIR": folder},
                                         cpus=set(sorted(cpus)[:-1]) if len(cpus) > 1 else None)
        said = _ANSI.sub("", "\n".join(stream.other))
        _drop_kept(said)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # Nix evaluates the folder again: a file changed since (in a tree that was dirty already) is what
    # it rebuilds, or refuses to check ("not valid"), and nothing built before is compared.
    unchecked = _UNCHECKABLE.search(said)
    rebuilt = _nix.parse_build_json(out)[0].get("drvPath") if status == 0 else unchecked and unchecked.group(1)
    if drv is not None and rebuilt and rebuilt != drv:
        raise BuildError(f"{target} changed while it was built (a file it reads, edited in a dirty tree): its check "
                         f"evaluated the change, {rebuilt}, not {drv}, so nothing was compared; run `mlbuild build "
                         f"--check {target}` again once the files are as you want them")
    # The second build, where Nix left it (a passed check; a failed build): a whole second copy
    # of the output (300 MB for a 300 MB model), invalid, in the store until a garbage collection.
    again = check_output_path(drv, built_path) if drv else None
    if again is not None and os.path.lexists(again) and _nix.invalid_paths([again]):
        try:
            remove_tree(again)
        except OSError:   # a store this user may not write (a daemon's): the daemon deletes it
            _nix.delete_paths([again])
    if status == 0:
        return
    m = _DIFFERS.search(said)
    if m is None:   # the second build failed: as any failed build
        raise stream.failure(project.root)
    first, second = Path(m.group(1)), Path(m.group(2))

    def entry(p: Path) -> str:   # what Nix compares (a NAR): a link's target, a file's bytes and executable bit
        return "-> " + os.readlink(p) if p.is_symlink() else "folder" if p.is_dir() else \
            sha256_file(p) + (" executable" if p.stat().st_mode & 0o100 else "")

    def files(p: Path) -> dict[str, str]:
        """Each file, link and folder under ``p`` (a folder's name ends in /)."""
        if not p.is_dir() or p.is_symlink():
            return {p.name: entry(p)} if os.path.lexists(p) else {}
        found = {}
        for top, dirs, names in os.walk(p):
            for name in dirs + names:
                q = Path(top, name)
                found[q.relative_to(p).as_posix() + ("/" if q.is_dir() and not q.is_symlink() else "")] = entry(q)
        return found

    a, b = files(first), files(second)
    differ = sorted(f for f in a.keys() | b.keys() if a.get(f) != b.get(f))
    shown = ", ".join(differ[:10]) + (f" and {len(differ) - 10} more" if len(differ) > 10 else "")
    raise BuildError(f"{target} is not reproducible: built again, it gave other bytes in "
                     f"{shown or 'its file metadata (modes or links)'} (the first build: {first}; the second: "
                     f"{second}); fix the source of randomness (an unseeded generator, the time, the order of a "
                     f"set or of a folder listing: see the README's Training section on determinism)")


def format_summary(s: Summary) -> list[str]:
    lines = [f"{b.target}\t{b.path}" for b in s.outputs]
    # The push's time goes on its own line: beside "already present 2" it read as a build's 35 s.
    lines.append(f"built {len(s.built)}, substituted {len(s.substituted)}, already present {len(s.present)} "
                 f"({s.seconds - s.push_seconds:.1f} s)")
    lines += [f"  built        {_name(d):<40} {sec:6.1f} s" for d, sec in s.built]
    lines += [f"  substituted  {_name(p):<40} {sec:6.1f} s" for p, sec in s.substituted]
    lines += [f"  present      {t}" for t in s.present]
    if s.checked:
        lines.append(f"reproducible: {', '.join(s.checked)} (built again, the same bytes)")
    if s.fixed:
        lines.append(f"not built again: {', '.join(s.fixed)} (fixed-output: its bytes are checked against the "
                     f"pinned hash)")
    if s.shared is not None:
        lines.append(f"pushed {len(s.pushed)} store paths to the shared store ({s.shared} already there) "
                     f"in {s.push_seconds:.1f} s")
    return lines

