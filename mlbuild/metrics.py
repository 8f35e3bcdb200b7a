"""Validation metrics over time: show, diff two git revisions, history across the git log.

Each point is the ``NAME.validation.report`` derivation of the project as it was at a revision
(the project folder taken from git with ``git archive``): built, or substituted from the store,
or already present. Results are printed as tables and written as a PNG plot (matplotlib), a
self-contained HTML report (the plot inlined) and Prometheus text format (for a textfile
collector or a pushgateway, so the numbers reach Grafana).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import re
import subprocess
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from . import _nix, atomic, flakepin, git
from .build import Progress, Summary, build_targets, check_model, model_code, validation_table
from .config import CONFIG_NAME, Project, load_project
from .errors import BuildError, MlbuildError
from .runtime.validate import LOWER_IS_BETTER, check_text, check_thresholds, shown

__all__ = ["Point", "show", "diff", "history", "write_reports", "table", "prometheus_text", "validate", "gate_checks",
           "heldout", "heldout_differs", "report_notes", "gate_advice", "check_text"]


@dataclass(frozen=True)
class Point:
    rev: str                 # a git revision, or "worktree"
    report: dict[str, Any]   # metrics.json of the validation report ({} when it failed)
    path: str
    error: str = ""          # why this revision has no report (its build failed)


def _report(project: Project, model: str, rev: str, **kw: Any) -> Point:
    check_model(project, model)
    summary = build_targets(project, [f"{model}.validation.report"], **kw)
    path = summary.outputs[0].path
    return Point(_here(project, summary) if rev == "worktree" else rev,
                 json.loads((Path(_nix.real_path(path)) / "metrics.json").read_text()), path)


def _here(project: Project, summary: Summary) -> str:
    """The label of what the worktree built: its commit when it was clean, else "worktree"."""
    return "worktree" if summary.dirty else git.head(project.root) or "worktree"


def validate(project: Project, model: str, *, allow_dirty: bool = False,
             on_progress: Callable[[Progress], None] | None = None) -> Point:
    """Build the gate (fails with the threshold table) and return the report it passed."""
    check_model(project, model)
    try:
        summary = build_targets(project, [f"{model}.validation"], allow_dirty=allow_dirty, on_progress=on_progress)
    except BuildError as e:
        if f"mlbuild: validation of {model} failed (" not in e.log_tail:
            raise
        # the table says which thresholds failed; say what to do about it
        raise e.with_hint(gate_advice(model, e.log_tail)) from None
    path = summary.outputs[0].path
    return Point(_here(project, summary), json.loads((Path(_nix.real_path(path)) / "metrics.json").read_text()), path)


def gate_advice(model: str, log_tail: str) -> str:
    """What to do about a failed gate (its table in ``log_tail``): a better model, or a threshold
    the task allows; where a gated metric is undefined for the held-out data (roc_auc of targets of
    one class), no model meets it: the held-out data or the threshold is what to change."""
    undefined = [line.strip().split(":", 1)[0] for line in log_tail.splitlines()
                 if ": undefined for this held-out data: " in line]
    if undefined:
        return (f"\n{model}'s {', '.join(undefined)} has no value on its held-out data, whatever the model (the reason "
                f"is above): give the suite held-out data it is defined on (load() in [models.{model}.validation]"
                f".suite), or drop that threshold from [models.{model}.validation].thresholds in mlbuild.toml")
    unknown = [name.strip() for line in log_tail.splitlines() if ": no such metric in the report; " in line
               for name in line.split(":", 1)[0].split(",")]
    failed = re.search(rf"mlbuild: validation of {re.escape(model)} failed \(([^)]*)\)", log_tail)
    if unknown and failed and set(failed.group(1).split(", ")) <= set(unknown):
        # "improve the model" for a threshold no model can meet: a regression model's `accuracy`, a typo.
        # The metrics it does report, from the gate's line (a classifier's typo was told "a regression
        # model's are mae, rmse and r2")
        reported = re.search(r": no such metric in the report; the suite reports (.*?) \(fix the name", log_tail)
        listed = f" ({reported.group(1)})" if reported else " (listed above)"
        return (f"\n{model}'s suite reports no {', '.join(unknown)}, whatever the model: name a metric it "
                f"reports{listed} in [models.{model}.validation].thresholds in mlbuild.toml")
    return (f"\n{model} does not meet its thresholds ([models.{model}.validation].thresholds in mlbuild.toml): improve "
            f"the model and compare variants on the held-out data (`mlbuild exp run {model} --set KEY=VALUE`, then "
            f"`mlbuild exp show {model}`), or lower a threshold that asks more than the task allows; every metric: "
            f"`mlbuild metrics show {model}`")


def gate_checks(project: Project, model: str, metrics: dict[str, float]) -> tuple[list[dict[str, Any]], str | None]:
    """``metrics`` against today's thresholds in mlbuild.toml: (the checks, a one-line summary
    such as ``gate: FAIL (accuracy >= 0.99)``; None without thresholds)."""
    thresholds = (validation_table(project, model) or {}).get("thresholds") or {}
    if not thresholds or not isinstance(thresholds, dict):
        return [], None
    checks = check_thresholds(metrics, thresholds)
    failed = [f"{c['metric']} {c['op']} {c['threshold']}" for c in checks if not c["ok"]]
    return checks, "gate: pass" if not failed else f"gate: FAIL ({', '.join(failed)})"


def report_notes(report: dict[str, Any]) -> list[str]:
    """The report's notes (classes whose precision or recall is undefined, constant regression
    targets) and the metrics it leaves out as undefined, as ``note: ...`` lines: the build prints
    them in its log, which a build that passes does not show."""
    return ([f"note: {n}" for n in report.get("notes", [])]
            + [f"note: {k} is left out: {why}" for k, why in sorted(report.get("undefined", {}).items())])


def show(project: Project, model: str, *, allow_dirty: bool = False) -> Point:
    return _report(project, model, "worktree", allow_dirty=allow_dirty)


def _at(project: Project, rev: str, tmp: Path) -> Project | None:
    """The project folder as it was at ``rev`` (tracked files only), unpacked under ``tmp``; None
    when it has no mlbuild.toml there (a commit from before the project)."""
    root = git.repo_root(project.root)
    if root is None:
        raise MlbuildError(f"{project.root} is not in a git repository; metrics diff/history need git revisions")
    rel = project.root.resolve().relative_to(root.resolve())
    proc = subprocess.run(["git", "archive", "--format=tar", rev, "--", str(rel) if str(rel) != "." else "."],
                          cwd=root, capture_output=True)
    if proc.returncode != 0:
        raise MlbuildError(f"git revision {rev!r} has no {rel}: {proc.stderr.decode().strip()}")
    dest = tmp / "rev"
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as t:
        if hasattr(tarfile, "data_filter"):
            t.extractall(dest, filter=_safe_member)
        else:   # Python before 3.11.4 (Debian 12's 3.11.2) has no filters: extractall has no such argument
            t.extractall(dest, members=[m for m in t.getmembers() if _inside(m, str(dest))])
    if not (dest / rel / CONFIG_NAME).is_file():   # else load_project would look in the folders above
        return None
    try:
        return load_project(dest / rel)
    except MlbuildError as e:   # mlbuild.toml as committed (not TOML, a bad key): named in that commit
        raise _in_commit(e, dest / rel, rev) from None


def _in_commit(e: MlbuildError, root: Path, rev: str) -> MlbuildError:
    """``e`` about the snapshot of ``rev`` unpacked at ``root`` (a temporary folder, gone once the
    command ends), said of that commit instead: its files by their paths in the project."""
    text = str(e).replace(f"{root}/", "").replace(str(root), ".")
    return MlbuildError(f"at revision {rev[:10]}: {text} (in that commit: it cannot be validated as it was committed)")


def _safe_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's "data" filter, skipping what it refuses instead of failing the whole revision: a
    committed link to an absolute path (a `result` link to the store, say) is no input of a build
    (Nix copies it as a dangling link), and must not end `metrics history` with a traceback."""
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError:
        return None


def _inside(member: tarfile.TarInfo, dest: str) -> bool:
    """What the "data" filter lets through, where tarfile has none: a file, folder or link whose
    path, and a link's target, stay inside ``dest`` (what `git archive` writes holds nothing else)."""
    if not (member.isfile() or member.isdir() or member.issym()):
        return False
    base = os.path.realpath(dest)
    path = os.path.realpath(os.path.join(base, member.name))
    if os.path.commonpath([base, path]) != base:
        return False
    if member.issym():
        if os.path.isabs(member.linkname):
            return False
        target = os.path.normpath(os.path.join(os.path.dirname(path), member.linkname))
        return os.path.commonpath([base, target]) == base
    return True


def _report_at(project: Project, model: str, rev: str, required: bool = True,
               others: dict[str, list[str]] | None = None) -> Point | None:
    """``rev``'s report of ``model``; None (when not ``required``) where it has no validation, and
    then, in ``others``, the models of a revision that does not declare ``model`` at all."""
    with tempfile.TemporaryDirectory(prefix="mlbuild-rev-") as tmp:
        old = _at(project, rev, Path(tmp))
        if old is None:
            if required:
                rel = project.root.resolve().relative_to(git.repo_root(project.root) or project.root.resolve())
                raise MlbuildError(f"revision {rev!r} has no {rel / CONFIG_NAME} (the project is not in that commit); "
                                   f"give one that has it (`git log --oneline -- {rel / CONFIG_NAME}` lists the "
                                   "commits that changed it)")
            return None
        models = old.raw.get("models", {})
        if "validation" not in models.get(model, {}):
            renamed = model not in models and bool(models)   # it may be one of them, under its old name
            if others is not None and renamed:
                others[rev] = sorted(models)
            if required:
                # the name given is today's (that commit is from before a rename), or an old one (after it)
                which = "old" if model in (project.raw.get("models") or {}) else "new"
                what = (f"no model {model!r} (its models: {', '.join(sorted(models))}; a model renamed since has "
                        f"its reports under its {which} name there)" if renamed else f"no [models.{model}.validation]")
                raise MlbuildError(f"at revision {rev!r}, mlbuild.toml declares {what}")
            return None
        # A snapshot from git is clean by construction (it is not a worktree).
        try:
            with flakepin.past_commit(project.root):
                return _report(old, model, rev, allow_dirty=True, keep=False)
        except BuildError as e:   # of two revisions (diff), say which one failed
            raise BuildError(f"at revision {rev[:10]}: {e}") from None
        except MlbuildError as e:   # a stale lock, a config mistake: that commit as it was committed
            raise _in_commit(e, old.root, rev) from None


def _declared_at(project: Project, rev: str) -> Project | None:
    """``project`` with mlbuild.toml as it was at ``rev`` (its models, datasets, code: enough for
    model_code, no build); None where that commit has none, or one that is not TOML. A byte order
    mark (a Windows editor's) is not TOML's, but load_project and Nix read past it: so does this."""
    try:
        text = git.show(project.root, rev, CONFIG_NAME).removeprefix("\ufeff")
        return Project(project.root, project.name, project.python, tomllib.loads(text))
    except (MlbuildError, tomllib.TOMLDecodeError):
        return None


def _check_model(project: Project, model: str, revs: Sequence[str] | None = None) -> Project:
    """check_model, but a model the worktree no longer declares (renamed or removed since; the
    history note points at its old name) is taken where one of ``revs`` (default: every commit of
    mlbuild.toml) declares it: the project as of the newest of those, for its code."""
    if model in (project.raw.get("models") or {}):
        return project
    if revs is None:
        try:
            revs = git.log_revisions(project.root, [CONFIG_NAME])
        except git.GitError:   # no git to ask: today's models are all there is
            revs = []
    for rev in reversed(revs):
        old = _declared_at(project, rev)
        if old is not None and model in (old.raw.get("models") or {}):
            return old
    check_model(project, model)   # in no revision either: refused, naming today's models
    return project


def diff(project: Project, model: str, rev1: str, rev2: str) -> tuple[Point, Point]:
    _check_model(project, model, [rev1, rev2])   # each revision is checked again
    root = git.repo_root(project.root)
    for rev in (rev1, rev2):   # both, before building either
        if root is not None:
            git.check_commit(root, rev)
    a, b = _report_at(project, model, rev1), _report_at(project, model, rev2)
    assert a is not None and b is not None
    return a, b


def history(project: Project, model: str, notes: list[str] | None = None) -> list[Point]:
    """One point per commit that changed the config, the lock, the code of the model, its suite
    or the derived datasets they use, or the project's flake.lock (the mlbuild that builds them)."""
    declared = _check_model(project, model)
    # flake.lock: a commit that moves the project to another mlbuild builds other derivations (new
    # weights, maybe other metrics), and history had no row for it
    files = ["mlbuild.toml", "mlbuild.lock", "flake.lock", *model_code(declared, model)]
    existing = [f for f in files if (project.root / f).exists()]
    revs = git.log_revisions(project.root, existing)
    if not revs:
        raise MlbuildError(f"no commits touch {', '.join(existing)}; commit the project first")
    points = []
    others: dict[str, list[str]] = {}
    for rev in revs:
        try:
            p = _report_at(project, model, rev, required=False, others=others)
        except BuildError as e:  # e.g. a commit whose training raised: a gap, not the end
            last = [l for l in str(e).splitlines() if l.strip()][-1:]
            points.append(Point(rev, {}, "", f"build failed: {last[0].strip() if last else e}"))
            continue
        except MlbuildError as e:  # a commit with a stale lock or a config mistake: a gap too
            points.append(Point(rev, {}, "", str(e).removeprefix(f"at revision {rev[:10]}: ")))
            continue
        if p is not None:
            points.append(p)
    # Commits before the first that declares the model, whose models are gone today: it may be one
    # of them, renamed (a model added beside the others is not)
    first = next((i for i, rev in enumerate(revs) if rev not in others), len(revs))
    earlier = [others[rev] for rev in revs[:first] if rev in others]
    gone = sorted({n for ms in earlier for n in ms} - set(project.raw.get("models", {})))
    if gone and first < len(revs) and revs[first - 1] in others:   # the names the first commit with it removed
        here = _declared_at(project, revs[first])
        gone = sorted(set(others[revs[first - 1]]) - set((here.raw.get("models") or {}) if here is not None else {})
                      & set(gone)) or gone
    note = (f"note: {len(earlier)} earlier commit(s) declare no model {model!r} but {', '.join(map(repr, gone))}, "
            f"which mlbuild.toml no longer has: if {model!r} was renamed, its history there is under the old name "
            f"(`mlbuild metrics history {gone[0] if len(gone) == 1 else 'OLD_NAME'}`)" if gone else "")
    if note and notes is not None:
        notes.append(note)
    # Commits since then without it (`metrics history OLD` of a model renamed since): they were
    # counted as "earlier" and the note named the old names of other models, never the new name
    later = [rev for rev in revs[first:] if rev in others]
    if later and notes is not None:
        i = revs.index(later[0])
        before = _declared_at(project, revs[i - 1]) if i > 0 else None
        new = sorted(set(others[later[0]]) - set((before.raw.get("models") or {}) if before is not None else {}))
        notes.append(f"note: {len(later)} later commit(s) declare no model {model!r}; the first, {later[0][:10]}, " + (
            f"added {', '.join(map(repr, new))}: if {model!r} was renamed there, its history since is under the new "
            f"name (`mlbuild metrics history {new[0] if len(new) == 1 else 'NEW_NAME'}`)"
            if new else f"renamed or removed it (`git show {later[0][:10]} -- mlbuild.toml`)"))
    if notes is not None and git.is_shallow(project.root):   # CI checks out one commit by default
        notes.append(f"note: this is a shallow clone (git clone --depth): commits before {revs[0][:10]} are not in "
                     "it, nor their metrics; `git fetch --unshallow` gives the whole history")
    if not points:
        raise MlbuildError(f"no commit declares [models.{model}.validation]; commit it first" + (f"\n{note}" if note else ""))
    if not any(p.report for p in points):
        raise MlbuildError(f"no commit of {model} could be validated:\n"
                           + "\n".join(f"  {p.rev[:10]}: {p.error}" for p in points))
    return points


def _metric_names(points: Sequence[Point]) -> list[str]:
    names: list[str] = []
    for p in points:
        for k in p.report.get("metrics", {}):
            if k not in names:
                names.append(k)
    return sorted(names)


def heldout(report: dict[str, Any]) -> str:
    """The hash of the samples a report scored: ``heldout`` (what the suite loaded), else, in
    reports from before it, the held-out dataset's (which changes with its training rows too)."""
    return str((report.get("heldout") or report.get("dataset") or {}).get("sha256") or "-")


def heldout_differs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two reports scored other samples. A report that records no hash (one an older
    mlbuild made, which a project's flake.lock may pin: "-") is unknown, not different."""
    x, y = heldout(a), heldout(b)
    return "-" not in (x, y) and x != y


HELDOUT_NOTE = ("note: the held-out data differs between these revisions (the data column): their metrics are "
                "not computed on the same samples")


def table(points: Sequence[Point]) -> list[str]:
    """One row per point: revision, suite version, the held-out data (its hash and sample count:
    a change there moves the metrics without the model changing), then the metrics."""
    names = _metric_names(points)
    head = ["revision", "suite", "data", "n", *names]
    rows = [[p.rev[:10], p.report.get("suite", {}).get("version", "-")[:8],
             heldout(p.report)[:8], str(p.report.get("n", "-")),
             *(shown(p.report['metrics'][n]) if n in p.report.get("metrics", {}) else "-" for n in names)]
            for p in points]
    failed = [f"{p.rev[:10]}: {p.error}" for p in points if p.error]
    data = {heldout(p.report) for p in points if p.report} - {"-"}   # unknown is no difference
    note = [HELDOUT_NOTE] if len(data) > 1 else []
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [head, *rows]] + failed + note


def prometheus_text(model: str, points: Sequence[Point], source: str = "history") -> str:
    """The latest point as Prometheus text format (gauges, labelled by model, hash, suite, and
    ``source``: ``history`` or ``worktree``, the command that wrote it). Without ``source``, the two
    files in one folder gave a textfile collector the same series twice for a clean HEAD (the
    worktree's point is HEAD's), and node-exporter fails such a scrape."""
    p = [q for q in points if q.report][-1]
    labels = (f'model="{model}",model_hash="{p.report.get("model_hash", "")}",'
              f'suite_version="{p.report.get("suite", {}).get("version", "")}",revision="{p.rev}",'
              f'source="{source}"')
    lines = ["# HELP mlbuild_validation_metric A validation metric of the packaged model (scikit-learn).",
             "# TYPE mlbuild_validation_metric gauge"]
    for name, value in sorted(p.report.get("metrics", {}).items()):
        lines.append(f'mlbuild_validation_metric{{{labels},metric="{name}"}} {value}')
    lines += ["# HELP mlbuild_validation_samples Held-out samples the metrics were computed on.",
              "# TYPE mlbuild_validation_samples gauge", f"mlbuild_validation_samples{{{labels}}} {p.report.get('n', 0)}"]
    return "\n".join(lines) + "\n"


def _figure(model: str, points: Sequence[Point]) -> Any:
    """The history figure: scores (accuracy, F1, R2...) on one axis and, below it when there are
    any, error metrics (mae, rmse...: in the target's units, often far from 0..1) on their own, so
    neither kind flattens the other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in points if p.report]
    names = _metric_names(points)
    errors = [n for n in names if n in LOWER_IS_BETTER]
    groups = [(g, label) for g, label in (([n for n in names if n not in errors], "score"),
                                          (errors, "error (lower is better)")) if g]
    fig, axes = plt.subplots(len(groups) or 1, 1, figsize=(8, 4.5 if len(groups) < 2 else 7), dpi=100,
                             sharex=True, squeeze=False)
    xs = list(range(len(points)))
    # Where the held-out data changes, the line breaks at a dotted rule: the metrics on either side
    # are not computed on the same samples (the table's note).
    changes = [i for i in xs[1:] if heldout_differs(points[i].report, points[i - 1].report)]
    for ax, (group, label) in zip(axes[:, 0], groups):
        for j, name in enumerate(group):
            ys = [p.report["metrics"].get(name) for p in points]
            for k, (lo, hi) in enumerate(zip([0, *changes], [*changes, len(xs)])):
                ax.plot(xs[lo:hi], ys[lo:hi], marker="o", color=f"C{j}", label=name if k == 0 else None)
        for i, x in enumerate(changes):
            ax.axvline(x - 0.5, color="0.5", linestyle=":", linewidth=1,
                       label="held-out data changed" if i == 0 and ax is axes[0, 0] else None)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    axes[0, 0].set_title(f"{model}: validation metrics by revision")
    axes[-1, 0].set_xticks(xs, [p.rev[:8] for p in points], rotation=30, ha="right")
    fig.tight_layout()
    return fig


def _plot(model: str, points: Sequence[Point]) -> bytes:
    import matplotlib.pyplot as plt

    fig = _figure(model, points)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


PLOTS_KEPT = 32   # the newest drawn figures kept in the plot cache
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"   # a PNG's last chunk (IEND, empty, and its CRC)


def _matplotlibrc_files() -> list[Path]:
    """Where matplotlib reads its settings from (matplotlib_fname's search), besides its own
    defaults: the working folder's matplotlibrc, $MATPLOTLIBRC, its configuration folder's."""
    config = os.environ.get("MPLCONFIGDIR") or \
        os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "matplotlib")
    rc = os.environ.get("MATPLOTLIBRC")
    return [Path("matplotlibrc").absolute(), *([Path(rc), Path(rc) / "matplotlibrc"] if rc else []),
            Path(config) / "matplotlibrc"]


def _plot_key(model: str, points: Sequence[Point]) -> str:
    """A hash of everything the figure is drawn from: what _figure reads of each point, the code
    that draws it, matplotlib's version and the settings files it reads."""
    import importlib.metadata

    from .runtime import validate

    shown = [(p.rev[:8], p.report.get("metrics", {}), heldout(p.report)) for p in points if p.report]
    rc = []
    for f in _matplotlibrc_files():
        try:
            rc.append([str(f), hashlib.sha256(f.read_bytes()).hexdigest()])
        except OSError:   # none there (or a folder): matplotlib does not read it either
            continue
    try:
        version = importlib.metadata.version("matplotlib")
    except importlib.metadata.PackageNotFoundError:
        version = "-"
    code = hashlib.sha256(Path(__file__).read_bytes() + Path(validate.__file__).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps([model, shown, rc, version, code], sort_keys=True).encode()).hexdigest()


def _cached_plot(model: str, points: Sequence[Point]) -> bytes:
    """``_plot``, from a cache in mlbuild's state folder (MLBUILD_STATE, else ~/.cache/mlbuild) when
    the same figure was drawn before: importing matplotlib and drawing took ~1 s of each `metrics
    show` and `metrics history`, most of the command when nothing was built. Keyed by ``_plot_key``;
    the newest PLOTS_KEPT figures are kept. A cache that cannot be read or written is skipped."""
    try:
        cache = _nix.state_home() / "plots"
    except RuntimeError:   # no home folder to find
        return _plot(model, points)
    entry = cache / f"{_plot_key(model, points)}.png"
    try:
        png = entry.read_bytes()
        # whole: a figure cut short (a crash, a disk error) was copied into every report for good
        if png.startswith(b"\x89PNG") and png.endswith(_PNG_END):
            os.utime(entry)   # the newest are kept
            return png
    except OSError:
        pass
    png = _plot(model, points)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(entry, png)
        drawn = sorted(cache.glob("*.png"), key=lambda f: f.stat().st_mtime_ns, reverse=True)
        for old in drawn[PLOTS_KEPT:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass
    return png


def write_reports(model: str, points: Sequence[Point], out_dir: Path, worktree: bool = False) -> dict[str, Path]:
    """<model>-history.png, -report.html (self-contained) and -metrics.prom in ``out_dir``; for the
    worktree alone (``metrics show``), <model>-worktree.png, .html and .prom, so that a look at
    the worktree does not write over the history's files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = _cached_plot(model, points)
    files = ({"png": out_dir / f"{model}-worktree.png", "html": out_dir / f"{model}-worktree.html",
              "prom": out_dir / f"{model}-worktree.prom"} if worktree else
             {"png": out_dir / f"{model}-history.png", "html": out_dir / f"{model}-report.html",
              "prom": out_dir / f"{model}-metrics.prom"})
    atomic.write_bytes(files["png"], png)
    rows = table(points)
    # A row per point, then lines of prose (why a revision has no report, notes): those are one cell.
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r.split()) + "</tr>"
                    for r in rows[1:len(points) + 1])
    cells += "".join(f"<tr><td colspan='99'>{html.escape(r)}</td></tr>" for r in rows[len(points) + 1:])
    head = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0].split())
    last = [p for p in points if p.report][-1].report
    cm = last.get("confusion_matrix")
    cm_html = ""
    if cm:
        labels = last.get("labels", [str(i) for i in range(len(cm))])
        cm_html = "<h2>Confusion matrix (latest)</h2><table><tr><th></th>" + "".join(
            f"<th>{html.escape(l)}</th>" for l in labels) + "</tr>" + "".join(
            f"<tr><th>{html.escape(labels[i])}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
            for i, row in enumerate(cm)) + "</table>"
    atomic.write_text(files["html"],   # whole or not at all: a browser, a textfile collector read them
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(model)} validation</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}</style></head><body>"
        f"<h1>{html.escape(model)}: validation metrics</h1>"
        f"<img alt='metrics by revision' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        f"<h2>By revision</h2><table><tr>{head}</tr>{cells}</table>{cm_html}"
        f"<p>Latest package: {html.escape(last.get('package', ''))}; suite version "
        f"{html.escape(last.get('suite', {}).get('version', ''))}.</p></body></html>\n")
    atomic.write_text(files["prom"], prometheus_text(model, points, "worktree" if worktree else "history"))
    return files
