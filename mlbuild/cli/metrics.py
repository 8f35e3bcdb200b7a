"""`mlbuild validate NAME` and `mlbuild metrics show|diff|history NAME`."""

from __future__ import annotations

from pathlib import Path

import click

from .. import metrics as m
from ..runtime.validate import shown
from ..config import state_dir
from .commands import _Bar
from .main import OutDir, cli, load, out_folder

__all__ = ["validate", "metrics"]

_OUT = click.option("--out", "out_dir", type=OutDir(), default=None,
                    help="Where to write the PNG, HTML and Prometheus files (default: .mlbuild/reports).")


def _reports_dir(ctx: click.Context, out_dir: Path | None) -> Path:
    """The folder the reports go to, made before anything is built: one that cannot be made (a
    file in the way, no permission) is refused now, not after the history's builds."""
    return out_folder(out_dir or state_dir(load(ctx).root) / "reports")


def _write(model: str, points: list[m.Point], out_dir: Path, worktree: bool = False) -> None:
    for line in m.table(points):
        click.echo(line)
    files = m.write_reports(model, points, out_dir, worktree=worktree)
    for kind, path in files.items():
        click.echo(f"{kind:>5}: {path}")


@cli.command()
@click.argument("model")
@click.option("--allow-dirty", is_flag=True, help="Build even with uncommitted or untracked files.")
@click.pass_context
def validate(ctx: click.Context, model: str, allow_dirty: bool) -> None:
    """Validate MODEL's package: metrics on the held-out data, gated by the thresholds."""
    point = m.validate(load(ctx), model, allow_dirty=allow_dirty, on_progress=_Bar())
    click.echo(f"{model}: validation passed ({point.report['n']} held-out samples, suite "
               f"{point.report['suite']['version']})")
    for c in point.report["gate"]["checks"]:
        click.echo(f"  {c['metric']:<20} {m.check_text(c)}  {c['op']} {c['threshold']}")
    for line in m.table([point]) + m.report_notes(point.report):
        click.echo(line)


@cli.group()
def metrics() -> None:
    """Validation metrics: now, between revisions, over the git history."""


@metrics.command("show")
@click.argument("model")
@click.option("--allow-dirty", is_flag=True, help="Build even with uncommitted or untracked files.")
@_OUT
@click.pass_context
def show(ctx: click.Context, model: str, allow_dirty: bool, out_dir: Path | None) -> None:
    """MODEL's validation metrics for the working tree, and whether they pass its thresholds."""
    project = load(ctx)
    folder = _reports_dir(ctx, out_dir)
    point = m.show(project, model, allow_dirty=allow_dirty)
    _write(model, [point], folder, worktree=True)
    for line in m.report_notes(point.report):
        click.echo(line)
    _, gate = m.gate_checks(project, model, point.report.get("metrics", {}))
    if gate is not None:   # the report is built whether or not the gate passes: say which
        click.echo(gate)


@metrics.command("diff")
@click.argument("model")
@click.argument("rev1")
@click.argument("rev2")
@click.pass_context
def diff(ctx: click.Context, model: str, rev1: str, rev2: str) -> None:
    """MODEL's metrics at two git revisions, side by side."""
    a, b = m.diff(load(ctx), model, rev1, rev2)
    names = sorted(set(a.report["metrics"]) | set(b.report["metrics"]))
    rows = [["metric", rev1[:10], rev2[:10], "change"]]
    for n in names:
        x, y = a.report["metrics"].get(n), b.report["metrics"].get(n)
        delta = ("+" if y >= x else "") + shown(y - x) if x is not None and y is not None else "-"
        rows.append([n, "-" if x is None else shown(x), "-" if y is None else shown(y), delta])
    # columns as wide as their longest cell: an RMSE of 123456.7890 ran into the next column
    widths = [max(w, *(len(r[i]) for r in rows)) for i, w in enumerate((20, 10, 10, 9))]
    for r in rows:
        click.echo(" ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:]))]))
    sa, sb = a.report["suite"]["version"], b.report["suite"]["version"]
    click.echo(f"suite version: {sa} -> {sb}" + ("  (the suite changed: some differences come from it)" if sa != sb else ""))
    da, db = m.heldout(a.report), m.heldout(b.report)
    click.echo(f"held-out data: {da[:8]} (n {a.report.get('n', '-')}) -> {db[:8]} (n {b.report.get('n', '-')})"
               + (f"\nnote: the held-out data differs between {rev1[:10]} and {rev2[:10]}: their metrics are not "
                  f"computed on the same samples" if m.heldout_differs(a.report, b.report) else "")
               + "".join(f"\nnote: {rev[:10]}'s report records no held-out data (an older mlbuild made it): whether "
                         f"both scored the same samples is unknown" for rev, d in ((rev1, da), (rev2, db)) if d == "-"))


@metrics.command("history")
@click.argument("model")
@_OUT
@click.pass_context
def history(ctx: click.Context, model: str, out_dir: Path | None) -> None:
    """MODEL's metrics at every commit of its config, locks and code (built or substituted)."""
    notes: list[str] = []
    folder = _reports_dir(ctx, out_dir)
    _write(model, m.history(load(ctx), model, notes), folder)
    for note in notes:
        click.echo(note)
