"""`mlbuild data add|status|diff|push|pull`."""

from __future__ import annotations

from pathlib import Path

import click

from ..data import datasets as ds
from .main import cli, load

__all__ = ["data"]


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@cli.group()
def data() -> None:
    """Datasets: content-hashed, outside git, in the Nix store."""


@data.command()
@click.argument("name")
@click.argument("path", type=click.Path(path_type=Path))
@click.pass_context
def add(ctx: click.Context, name: str, path: Path) -> None:
    """Hash PATH (file or folder), import it into the store and pin it as dataset NAME."""
    added = ds.add(load(ctx), name, path)
    if added.moved_from is not None:
        click.echo(f"{name}: path {added.moved_from} -> {added.path} in mlbuild.toml")
    result = added.imported
    before = added.pinned_before
    if (result is None or result.existed) and before is not None and before != added.sha256:
        click.echo(f"{name}: pinned {added.sha256[:16]}... (was {before[:16]}...), a version the store "
                   f"already holds: nothing imported")
    elif result is None or (result.existed and before == added.sha256):
        click.echo(f"{name}: unchanged (sha256 {added.sha256[:16]}...), nothing imported")
    else:
        files = f"{result.files} file{'' if result.files == 1 else 's'}"
        click.echo(f"{name}: {files}, {_size(result.size)} -> {result.path}")


@data.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Each dataset: present, shared (in the shared store only), missing, changed on disk, derived,
    unlocked (never added), unstorable or unreadable; where it needs work, the command that does it."""
    from ..data.remote import shared_hashes

    project = load(ctx)
    rows = ds.status(project, shared_hashes(project))
    width = max([len(r.name) for r in rows] + [4])
    states = max([len(r.state) for r in rows] + [8])
    for r in rows:
        click.echo(f"{r.name:<{width}}  {r.kind:<7}  {r.state:<{states}}  {r.detail}")


@data.command()
@click.argument("name")
@click.argument("rev", required=False)
@click.pass_context
def diff(ctx: click.Context, name: str, rev: str | None) -> None:
    """Files added, removed and changed: locked version vs REV's lock (default: working copy)."""
    changes = ds.diff(load(ctx), name, rev)
    if not changes:
        click.echo(f"{name}: no differences")
    for c in changes:
        kinds = f"  ({c.kinds})" if c.kinds else ""
        click.echo(f"{c.change:<8} {ds.shown_name(c.path)}  {_size(c.old_size)} -> {_size(c.new_size)}{kinds}")


@data.command()
@click.argument("names", nargs=-1)
@click.pass_context
def push(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Upload datasets NAMES (default: all locked) to the shared store."""
    from ..data.remote import push as do_push

    for line in do_push(load(ctx), list(names)):
        click.echo(line)


@data.command()
@click.argument("names", nargs=-1)
@click.pass_context
def pull(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Fetch datasets NAMES (default: all locked) from the shared store."""
    from ..data.remote import pull as do_pull

    for line in do_pull(load(ctx), list(names)):
        click.echo(line)
