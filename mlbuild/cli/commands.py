"""Toolchain and build commands: lock, prefetch, build, exp."""

from __future__ import annotations

import sys

import click

from .. import build as b
from .. import exp as experiments
from ..toolchain import lock_project, prefetch
from .main import cli, load

__all__ = ["lock", "prefetch_cmd", "build", "exp", "serve"]


@cli.command()
@click.pass_context
def lock(ctx: click.Context) -> None:
    """Resolve [python].requirements and snapshot the interpreter into mlbuild.lock."""
    project = load(ctx)
    data = lock_project(project)
    snap = data["interpreter"]["snapshot"]
    click.echo(f"locked {len(data['wheels'])} wheels and {data['interpreter']['bin']} "
               f"{data['interpreter']['version']} (snapshot sha256 {snap['sha256'][:16]}...) "
               f"in {project.lock_path}")


@cli.command("prefetch")
@click.pass_context
def prefetch_cmd(ctx: click.Context) -> None:
    """Put every locked wheel and the interpreter snapshot into the Nix store."""
    result = prefetch(load(ctx))
    click.echo(f"{len(result.added)} added, {len(result.present)} already in the store")
    for name in result.added:
        click.echo(f"  + {name}")


class _Bar:
    """The live epoch bar: one rewritten line on a terminal, one line per epoch otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def __call__(self, p: b.Progress) -> None:
        e = p.event
        if e.get("event") != "epoch":
            return
        n, total = int(e["epoch"]), int(e["epochs"])
        width = 24
        fill = int(width * n / max(total, 1))
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in sorted(e.items())
                            if k not in ("epoch", "epochs", "event") and isinstance(v, (int, float)))
        line = f"  {p.target:<16} epoch {n:>3}/{total:<3} [{'#' * fill}{'.' * (width - fill)}] {metrics}"
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
@click.pass_context
def build(ctx: click.Context, targets: tuple[str, ...], allow_dirty: bool, push: bool | None) -> None:
    """Build TARGETS (default: toolchain), e.g. digits, digits.model, digits.validation."""
    summary = b.build_targets(load(ctx), targets, allow_dirty=allow_dirty, push=push, on_progress=_Bar())
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
    summary, record = experiments.run(load(ctx), model, sets, allow_dirty=allow_dirty, on_progress=_Bar())
    click.echo(f"{model} {record['overrides'] or '(as configured)'}: {record['status']} -> {record['path']}")


@exp.command("show")
@click.argument("model")
@click.pass_context
def exp_show(ctx: click.Context, model: str) -> None:
    """Table of MODEL's variants: params, final metrics, store path, built or cached."""
    variants = experiments.show(load(ctx), model)
    if not variants:
        click.echo(f"no experiments of {model} yet; run `mlbuild exp run {model} --set KEY=VALUE`")
        return
    keys = sorted({k for v in variants for k in v.params})
    mkeys = sorted({k for v in variants for k in v.metrics})
    head = [*keys, *mkeys, "status", "runs", "store path"]
    rows = [[*(str(v.params.get(k, "")) for k in keys), *(f"{v.metrics[k]:.4f}" if k in v.metrics else "-" for k in mkeys),
             v.status, str(v.runs), v.path] for v in variants]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)))


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("model")
@click.option("--allow-dirty", is_flag=True, help="Build even with uncommitted or untracked files.")
@click.pass_context
def serve(ctx: click.Context, model: str, allow_dirty: bool) -> None:
    """Build MODEL's package and serve it (extra arguments go to the server: --port 8080 ...)."""
    import os

    project = load(ctx)
    b.check_model(project, model)
    summary = b.build_targets(project, [model], allow_dirty=allow_dirty, on_progress=_Bar())
    program = f"{summary.outputs[0].path}/bin/serve"
    click.echo(f"serving {summary.outputs[0].path}", err=True)
    os.execv(program, [program, *ctx.args])
