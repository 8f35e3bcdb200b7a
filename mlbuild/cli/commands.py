"""Toolchain commands: lock, prefetch, build."""

from __future__ import annotations

import click

from ..build import build_targets
from ..toolchain import lock_project, prefetch
from .main import cli, load

__all__ = ["lock", "prefetch_cmd", "build"]


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


@cli.command()
@click.argument("targets", nargs=-1)
@click.pass_context
def build(ctx: click.Context, targets: tuple[str, ...]) -> None:
    """Build TARGETS of the project (default: toolchain); prints their store paths."""
    for b in build_targets(load(ctx), targets):
        click.echo(f"{b.target}\t{b.path}")
