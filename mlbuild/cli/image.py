"""`mlbuild image load MODEL` and `mlbuild image push MODEL REF`."""

from __future__ import annotations

import click

from .. import image as img
from .commands import _Bar
from .main import cli, load

__all__ = ["image"]

_DIRTY = click.option("--allow-dirty", is_flag=True, help="Build even with uncommitted or untracked files.")


@cli.group()
def image() -> None:
    """Container images of models (`nix build .#MODEL.image`): load them, push them."""


@image.command("load")
@click.argument("model")
@click.option("--engine", type=click.Choice(img.ENGINES), default=None,
              help="podman or docker (default: $MLBUILD_ENGINE, else whichever is installed and works).")
@_DIRTY
@click.pass_context
def load_cmd(ctx: click.Context, model: str, engine: str | None, allow_dirty: bool) -> None:
    """Build MODEL's image and load it into podman or docker; prints its reference."""
    loaded = img.load_model_image(load(ctx), model, engine=engine, allow_dirty=allow_dirty, on_progress=_Bar())
    click.echo(loaded.note, err=True)
    click.echo(loaded.reference)


@image.command("push")
@click.argument("model")
@click.argument("ref")
@_DIRTY
@click.option("--tls-verify/--no-tls-verify", default=True, show_default=True,
              help="Check the registry's TLS certificate; --no-tls-verify for a plain-HTTP registry "
                   "(a local registry:2 on localhost:5000).")
@click.pass_context
def push_cmd(ctx: click.Context, model: str, ref: str, allow_dirty: bool, tls_verify: bool) -> None:
    """Build MODEL's image and push it to REF with skopeo.

    REF is a registry reference (registry.example.com/team/digits:v1, localhost:5000/digits:v1) or a
    skopeo destination (docker://, oci:, oci-archive:, dir:, docker-archive:, docker-daemon:,
    containers-storage:, e.g. oci:/path/layout:tag). A file path or a mistyped transport
    (oci/tmp/x, OCI:/tmp/x) is refused rather than sent to a registry. docker-daemon: writes to the
    engine at $DOCKER_HOST when it is set.
    """
    if not tls_verify and not img.destination(ref).startswith("docker://"):   # skopeo would ignore it
        click.echo(f"mlbuild: warning: --no-tls-verify is for a registry (docker://); {ref} is not one, so it "
                   f"changes nothing", err=True)
    dest, digest = img.push_model_image(load(ctx), model, ref, allow_dirty=allow_dirty, tls_verify=tls_verify,
                                        on_progress=_Bar())
    click.echo(f"pushed {model} to {dest}" + (f" ({digest})" if digest else ""))
