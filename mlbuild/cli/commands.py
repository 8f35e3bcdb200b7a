"""Toolchain and build commands: lock, prefetch, build, exp."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from .. import _nix
from .. import build as b
from .. import exp as experiments
from ..errors import BuildError
from ..runtime.validate import shown as metric_text
from ..toolchain import lock_project, prefetch
from .main import cli, load

__all__ = ["init", "lock", "prefetch_cmd", "build", "exp", "serve"]


@cli.command()
@click.argument("folder", required=False, default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="the data: a CSV of numeric features with the class last (a number 0..K-1 or a name), "
                   "inside FOLDER; its feature count, classes and header are read from it")
@click.option("--name", help="the project and model name (default: the folder's name)")
@click.option("--python", "python", default="python3", show_default=True,
              help="[python].interpreter: the Python to snapshot (a command on PATH or a path)")
@click.option("--mlbuild-flake", "flake_url", help="flake.nix's mlbuild input (default: this mlbuild's git checkout)")
def init(folder: Path, csv_path: Path | None, name: str | None, python: str, flake_url: str | None) -> None:
    """Create a project in FOLDER (default: here): a classifier over one CSV file.

    Writes mlbuild.toml, prepare.py (a train/test split), model.py (an MLP), validate.py,
    flake.nix (with its flake.lock) and .gitignore, and makes FOLDER a git repository if it is in none. Nothing
    existing is overwritten (an existing .gitignore gets the lines it lacks).
    """
    from ..init import init_project

    new = init_project(folder, name=name, csv_path=csv_path, python=python, flake_url=flake_url)
    for f in new.files:
        click.echo(f"  wrote {f.relative_to(new.root)}")
    for f in new.extended:
        click.echo(f"  added lines to {f.relative_to(new.root)}")
    if new.note:
        click.echo(f"  note: {new.note}", err=True)
    if new.shape:
        names = new.shape.labels or []
        shown = f" ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''})" if names else ""
        click.echo(f"  {new.csv}: {new.shape.rows} rows, {new.shape.features} features, {new.shape.classes} classes"
                   f"{shown}{', a header row' if new.shape.header else ''}")
    # quoted for a shell: a folder or a CSV named with a space ("my data.csv") failed when pasted
    here = "" if new.root == Path.cwd().resolve() else f"cd {shlex.quote(str(new.root))} && "
    model, data, path = new.name, new.dataset, shlex.quote(new.csv)
    click.echo(f"""next:
  {here}mlbuild lock && mlbuild prefetch          # pin and fetch the wheels and the interpreter
  mlbuild data add {data} {path}{'' if csv_path else '   # once the CSV is there'}
  git add -A && git commit -m "{model}: new project"
  mlbuild build {model} && mlbuild validate {model}
  mlbuild serve {model} --port 8080            # or: nix run .#serve-{model} -- --port 8080""")


@cli.command()
@click.pass_context
def lock(ctx: click.Context) -> None:
    """Resolve [python].requirements and snapshot the interpreter into mlbuild.lock."""
    from ..lockfile import read_lock

    project = load(ctx)
    try:
        before = {w["name"]: w["version"] for w in read_lock(project.lock_path)["wheels"]}
    except Exception:   # no lock yet, or one lock_project refuses or replaces: nothing to compare
        before = None
    data = lock_project(project)
    snap = data["interpreter"]["snapshot"]
    click.echo(f"locked {len(data['wheels'])} wheels and {data['interpreter']['bin']} "
               f"{data['interpreter']['version']} (snapshot sha256 {snap['sha256'][:16]}...) "
               f"in {project.lock_path}")
    if before is not None:   # what changed: a new interpreter can swap in other builds (CUDA torch)
        after = {w["name"]: w["version"] for w in data["wheels"]}
        changes = [f"  + {n} {after[n]}" for n in sorted(set(after) - set(before))] + \
            [f"  - {n} {before[n]}" for n in sorted(set(before) - set(after))] + \
            [f"  ~ {n} {before[n]} -> {after[n]}" for n in sorted(set(after) & set(before)) if after[n] != before[n]]
        for line in changes[:40]:
            click.echo(line)
        if len(changes) > 40:
            click.echo(f"  ... and {len(changes) - 40} more changes")


@cli.command("prefetch")
@click.pass_context
def prefetch_cmd(ctx: click.Context) -> None:
    """Put every locked wheel and the interpreter snapshot into the Nix store."""
    result = prefetch(load(ctx))
    click.echo(f"{len(result.added)} added, " + (f"{len(result.fetched)} from the shared store, " if result.fetched else "")
               + f"{len(result.present)} already in the store")
    for name in result.added:
        click.echo(f"  + {name}")


def _count(value: object) -> int | None:
    """An epoch number from a progress event: a positive whole number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 1:
        return None
    return int(value)


class _Bar:
    """The live epoch bar: one rewritten line on a terminal; in a log (CI), at most ~20 lines a
    training run: the first epoch, every ceil(epochs / 20)th and the last."""

    LOG_LINES = 20

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def __call__(self, p: b.Progress) -> None:
        e = p.event
        if e.get("event") != "epoch":
            return
        # The training's own ctx.log_epoch(epoch, epochs) arguments: a total that is not a positive
        # number (None, 0: an open-ended run) draws no bar, and never stops the build.
        n, total = _count(e.get("epoch")), _count(e.get("epochs"))
        if n is None:
            return
        step = -(-total // self.LOG_LINES) if total else 1
        if not self.tty and n != 1 and n != total and n % step:
            return
        width = 24
        fill = min(width, int(width * n / total)) if total else 0
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in sorted(e.items())
                            if k not in ("epoch", "epochs", "event") and isinstance(v, (int, float)))
        shown = f"{n:>3}/{total:<3} [{'#' * fill}{'.' * (width - fill)}]" if total else f"{n:>3}"
        line = f"  {p.target:<16} epoch {shown} {metrics}"
        if self.tty:
            click.echo("\r" + line, nl=n == total, err=True)
        else:
            click.echo(line, err=True)


@cli.command()
@click.argument("targets", nargs=-1)
@click.option("--allow-dirty", is_flag=True, help="Build even with uncommitted or untracked files "
              "(the outputs' provenance is marked dirty).")
@click.option("--push/--no-push", default=None, help="Push what was built to the shared store "
              "(default: [store] push in mlbuild.toml).")
@click.option("--check", is_flag=True, help="Then build each target again (its own step: digits.model for the "
              "training) and fail, naming the files, unless the bytes are the same.")
@click.pass_context
def build(ctx: click.Context, targets: tuple[str, ...], allow_dirty: bool, push: bool | None, check: bool) -> None:
    """Build TARGETS (default: toolchain), e.g. digits, digits.model, digits.validation."""
    summary = b.build_targets(load(ctx), targets, allow_dirty=allow_dirty, push=push, check=check,
                              on_progress=_Bar())
    for line in b.format_summary(summary):
        click.echo(line)


@cli.group()
def exp() -> None:
    """Experiments: model variants with overridden params."""


@exp.command("run")
@click.argument("model")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a param (repeatable).")
@click.option("--allow-dirty", is_flag=True, help="Build even with uncommitted or untracked files.")
@click.pass_context
def exp_run(ctx: click.Context, model: str, sets: tuple[str, ...], allow_dirty: bool) -> None:
    """Build a variant of MODEL with params overridden."""
    project = load(ctx)
    summary, record = experiments.run(project, model, sets, allow_dirty=allow_dirty, on_progress=_Bar())
    click.echo(f"{model} {experiments.describe(record['overrides'])}: {record['status']} -> {record['path']}")
    if record.get("report"):   # its held-out metrics, against today's thresholds (what its image would need)
        from ..metrics import check_text, gate_checks

        report = json.loads((Path(_nix.real_path(record["report"])) / "metrics.json").read_text())
        checks, gate = gate_checks(project, model, report.get("metrics", {}))
        # a gated metric with the digits that decide its check: 0.94996 read 0.9500 beside "gate: FAIL (accuracy >= 0.95)"
        gated = [f"{c['metric']} {check_text(c)}" for c in checks if c["value"] is not None]
        values = ", ".join(gated if checks else
                           (f"{k} {metric_text(v)}" for k, v in sorted(report.get("metrics", {}).items())[:4]))
        click.echo(f"  test: {values} (n {report.get('n', '-')})" + (f"; {gate}" if gate else ""))


@exp.command("show")
@click.argument("model")
@click.pass_context
def exp_show(ctx: click.Context, model: str) -> None:
    """Table of MODEL's variants: params, final metrics, commit, built or cached, store path."""
    project = load(ctx)
    notes: list[str] = []
    variants = experiments.show(project, model, notes)
    for note in notes:
        click.echo(note, err=True)
    if not variants:
        click.echo(f"no experiments of {model} yet; run `mlbuild exp run {model} --set KEY=VALUE`")
        return
    declared = model in (project.raw.get("models") or {})   # else a model renamed or removed since: no "*"
    configured = (project.raw.get("models", {}).get(model) or {}).get("params") or {}
    keys = sorted({k for v in variants for k in v.params} | set(configured))   # a param added since: "-"
    mkeys = sorted({k for v in variants for k in v.metrics})
    # Held-out metrics: the ones the gate checks (what the project cares about), else all.
    thresholds = (b.validation_table(project, model) or {}).get("thresholds") or {}
    hkeys = [k for k in sorted(thresholds) if any(k in v.held_out for v in variants)] or \
        sorted({k for v in variants for k in v.held_out})

    def gate(v: experiments.Variant) -> str:
        """Whether the variant's held-out metrics meet today's thresholds (what its image would need)."""
        from ..metrics import gate_checks

        checks = gate_checks(project, model, v.held_out)[0] if v.held_out else []
        return "-" if not checks else "pass" if all(c["ok"] for c in checks) else "FAIL"

    head = [*keys, *(f"train:{k}" for k in mkeys), *(f"test:{k}" for k in hkeys), "gate", "data", "commit",
            "status", "runs", "store path"]
    rows = [[*((experiments.format_value(v.params[k]) + ("*" if declared and configured.get(k, object()) != v.params[k]
                                                         else ""))
               if k in v.params else "-" for k in keys),
             *(metric_text(v.metrics[k]) if k in v.metrics else "-" for k in mkeys),
             *(metric_text(v.held_out[k]) if k in v.held_out else "-" for k in hkeys),
             gate(v), v.data or "-", (v.commit or "-") + ("+dirty" if v.dirty else ""), v.status, str(v.runs), v.path]
            for v in variants]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    click.echo("* differs from mlbuild.toml's params; train: the training log's last epoch; test: the held-out "
               "validation report; gate: test metrics against today's thresholds; data: the training datasets' hashes")
    scored = {v.heldout_data for v in variants if v.heldout_data}
    if len(scored) > 1:
        click.echo(f"note: the test metrics were computed on {len(scored)} different held-out sets (the data "
                   "changed between runs): compare only rows of the same data")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("model")
@click.option("--allow-dirty", is_flag=True, help="Build even with uncommitted or untracked files.")
@click.option("--no-validate", is_flag=True,
              help="Serve even a package that has not passed its validation gate (for development).")
@click.pass_context
def serve(ctx: click.Context, model: str, allow_dirty: bool, no_validate: bool) -> None:
    """Build MODEL's package, validate it, and serve it (extra arguments go to the server: --port 8080 ...).

    A model with [models.MODEL.validation] is served only once its gate passed, as its image and
    `nix run .#serve-MODEL` are; --no-validate serves it anyway."""
    import os

    project = load(ctx)
    b.check_model(project, model, passes_options="serve")   # `serve --port 8080 digits`: '--port' came here
    _check_server_args(project.root, model, ctx.args)
    gated = b.validation_table(project, model) is not None
    summary = b.build_targets(project, [model], allow_dirty=allow_dirty, on_progress=_Bar())
    if gated and not no_validate:
        try:
            b.build_targets(project, [f"{model}.validation"], allow_dirty=allow_dirty, on_progress=_Bar())
        except BuildError as e:
            raise BuildError(f"{e}\n{model} did not pass its validation gate, so it is not served; fix the model, "
                             f"its data or its thresholds, or serve it anyway for development: "
                             f"mlbuild serve --no-validate {model}") from None
    if gated and no_validate:
        click.echo(f"mlbuild: warning: serving {model} without its validation gate (--no-validate)", err=True)
    program = f"{summary.outputs[0].path}/bin/serve"
    click.echo(f"serving {summary.outputs[0].path}", err=True)
    argv = _nix.store_program(program, ctx.args)   # a runner's own store (NIX_CONFIG, NIX_REMOTE): under `nix shell`
    os.execv(argv[0], argv)


def _check_server_args(root: Path, model: str, args: list[str]) -> None:
    """The server's arguments, parsed as its bin/serve will parse them, before the build and the
    validation (a training run where the model is not built): `serve digits --prot 8080` or
    `--port 80800` failed only then. Where flake.lock pins an mlbuild whose server takes other
    options than this CLI's, that server alone judges them."""
    import os

    from ..flakepin import pinned_root

    ours = Path(__file__).resolve().parents[1] / "runtime" / "serve" / "__main__.py"
    pinned = pinned_root(root)
    if pinned is not None:
        try:
            if (pinned / "mlbuild" / "runtime" / "serve" / "__main__.py").read_bytes() != ours.read_bytes():
                return
        except OSError:
            return
    had = os.environ.get("OMP_WAIT_POLICY")
    from ..runtime.serve.__main__ import build_parser   # sets OMP_WAIT_POLICY for the server's process

    if had is None:   # this process builds first: the server sets it again itself
        os.environ.pop("OMP_WAIT_POLICY", None)
    parser = build_parser(package="-")

    def refuse(message: str) -> None:
        raise click.UsageError(f"the server's options: {message} (`nix run .#serve-{model} -- --help` lists them; "
                               f"mlbuild serve {model} passes the options after the model to it)")
    parser.error = refuse   # type: ignore[method-assign,assignment]

    class Help(Exception):
        pass

    def asked_help(*_: object) -> None:
        raise Help

    # the server's help (-h, --help, or --he as argparse takes it) is its bin/serve's to show: parsed here,
    # it printed this process's usage (`python -m mlbuild.runtime.serve`) and ended mlbuild serve unbuilt
    parser.print_help = asked_help   # type: ignore[method-assign,assignment]
    try:
        parser.parse_args(args)
    except Help:
        pass
