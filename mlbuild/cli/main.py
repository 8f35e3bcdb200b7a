"""Entry point: the ``mlbuild`` group, global options and the one place errors are printed."""

from __future__ import annotations

import errno
import os
import shlex
import signal
import sys
from gettext import gettext
from pathlib import Path
from typing import Any

import click

from .. import __version__, git
from ..config import Project, load_project
from ..errors import MlbuildError

__all__ = ["main", "cli", "OutDir"]


# Where each command is defined. Its module is imported only when the command runs (or for
# --help), so `mlbuild data add` does not pay for cryptography, the build stream or matplotlib
# (click's documented lazy-loading pattern; the modules register themselves on `cli`).
COMMANDS = {
    "init": "commands", "lock": "commands", "prefetch": "commands", "build": "commands", "exp": "commands", "serve": "commands",
    "data": "data", "image": "image", "metrics": "metrics", "validate": "metrics", "monitor": "monitor",
    "notebook": "notebook", "store": "store",
}

# The first paragraph of each command's help, which `mlbuild --help` lists: from here, so that it
# imports no command module (all of them took ~0.3-0.5 s: 0.6 s against `--version`'s 0.12 s).
# test_cli checks that each is the command's own.
SHORT_HELP = {
    "build": "Build TARGETS (default: toolchain), e.g. digits, digits.model, digits.validation.",
    "data": "Datasets: content-hashed, outside git, in the Nix store.",
    "exp": "Experiments: model variants with overridden params.",
    "image": "Container images of models (`nix build .#MODEL.image`): load them, push them.",
    "init": "Create a project in FOLDER (default: here): a classifier over one CSV file.",
    "lock": "Resolve [python].requirements and snapshot the interpreter into mlbuild.lock.",
    "metrics": "Validation metrics: now, between revisions, over the git history.",
    "monitor": "Monitor a deployed model: `mlbuild monitor NAME --url URL`, `mlbuild monitor config NAME`.",
    "notebook": "Notebooks: export one to a plain module; run them as checks ([notebooks.NAME]).",
    "prefetch": "Put every locked wheel and the interpreter snapshot into the Nix store.",
    "serve": "Build MODEL's package, validate it, and serve it (extra arguments go to the server: --port 8080 ...).",
    "store": "The shared binary store: a signed Nix binary cache every machine substitutes from.",
    "validate": "Validate MODEL's package: metrics on the held-out data, gated by the thresholds.",
}


class _Group(click.Group):
    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            import importlib

            importlib.import_module(f"{__package__}.{COMMANDS[cmd_name]}")
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's own listing, with a command not loaded yet given by its SHORT_HELP entry."""
        commands = [(name, self.commands.get(name) or click.Command(name, help=SHORT_HELP[name])
                     if name in SHORT_HELP else self.get_command(ctx, name)) for name in self.list_commands(ctx)]
        shown = [(name, cmd) for name, cmd in commands if cmd is not None and not cmd.hidden]
        if shown:
            limit = formatter.width - 6 - max(len(name) for name, _ in shown)
            with formatter.section(gettext("Commands")):   # as click names it
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in shown])

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MlbuildError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            # Die of the SIGINT, as Python itself does (click exits 1): a shell stops a script or loop
            # that runs mlbuild (`for m in a b; do mlbuild build $m; done`) at a Ctrl-C only when its
            # child died of the signal, so an exit 1 let it go on to the next command.
            click.echo("\nAborted!", err=True)
            try:
                sys.stdout.flush()
            except OSError:
                pass
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
            raise   # not reached

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except OSError as e:
            store = os.environ.get("NIX_STORE_DIR", "/nix/store").rstrip("/") + "/"
            if e.errno == errno.EROFS and str(e.filename).startswith(store):
                # A store path is read-only by design (NixOS mounts the store so): a write into one is
                # mlbuild's bug, whose traceback is wanted, not a disk error's advice
                raise
            if e.errno in _FAILED_FS and e.filename:
                # A file system that fails under a command (remounted read-only after a disk error, an
                # NFS mount that dropped or went stale): where and why, not a traceback
                click.echo(f"Error: {e.strerror}: {e.filename}: {_FAILED_FS[e.errno]}; check the mount "
                           f"(`findmnt -T {shlex.quote(str(e.filename))}`), mount it again, then run the command "
                           "again (the files mlbuild replaces are replaced whole)", err=True)
                sys.exit(1)
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # A full disk (or quota) can stop any write, .mlbuild's records and caches included, and
            # the output itself (`> file`, --help and --version too): say where, not a traceback. The
            # files a command replaces are replaced whole (atomic.py).
            fix = "free space there" if e.filename else "free space where it writes (its output too, if it goes to a file)"
            click.echo(f"Error: {e.strerror}{f' writing {e.filename}' if e.filename else ''}; {fix}, then run the "
                       "command again", err=True)
            sys.exit(1)


_FAILED_FS = {
    errno.EROFS: "its file system is read-only (mounted so, or remounted so by the kernel after a disk error)",
    errno.EIO: "its disk or network mount failed",
    errno.ESTALE: "its network mount went stale (the server restarted, or the folder was replaced there)",
    errno.ENOTCONN: "its network mount is not connected",
}


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``mlbuild VERSION``, and where this mlbuild runs from a git checkout (as `.ci/setup` installs
    it), the checkout and its commit: the version number alone is the same at every commit."""
    if not value or ctx.resilient_parsing:
        return
    import subprocess

    root = Path(__file__).resolve().parents[2]
    where = ""
    if (root / "flake.nix").is_file() and (root / ".git").exists():
        try:
            rev = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                                 capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            rev = None
        if rev is not None and rev.returncode == 0 and rev.stdout.strip():
            where = f" ({root} at {rev.stdout.strip()})"
    click.echo(f"mlbuild {__version__}{where}")
    ctx.exit()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_show_version,
              help="Show the version (and the git checkout and commit it runs from) and exit.")
@click.option("--project", "-C", "project_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Run as if started in this folder (like git -C); the project is the nearest folder "
                   "at or above it holding mlbuild.toml.")
@click.pass_context
def cli(ctx: click.Context, project_dir: Path | None) -> None:
    """mlbuild: reproducible ML builds on Nix.

    Start a project with `mlbuild init`, pin its inputs with `mlbuild lock`, fetch them with
    `mlbuild prefetch`, build with `mlbuild build`.
    """
    if project_dir is not None:  # like `git -C`: run as if started in that folder
        if not project_dir.is_dir():
            raise click.BadParameter(f"{project_dir} is not a folder", param_hint="--project/-C")
        os.chdir(project_dir)
    git.pin_environment()   # a relative GIT_DIR: relative to here (as git -C has it), not to the project's folder
    ctx.obj = None


def load(ctx: click.Context) -> Project:
    return load_project(ctx.find_root().obj)


class OutDir(click.Path):
    """An ``--out`` folder: one given as "" (`--out "$DIR"` with DIR unset) is refused, not taken
    for the current folder (the project, where the files left the worktree dirty)."""

    def __init__(self) -> None:
        super().__init__(file_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail(f"{value!r} is empty (an unset variable?); give a folder, or leave --out out for the default",
                      param, ctx)
        return super().convert(value, param, ctx)


def out_folder(folder: Path) -> Path:
    """``folder`` (an ``--out``), made now: one that cannot be made (a file in the way, no
    permission) is refused naming it, before any work, not a traceback after it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise click.BadParameter(f"cannot make the folder {str(folder)!r}: {e.strerror}; give a folder mlbuild "
                                 "can write to", param_hint="--out") from None
    return folder


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    # SIGTERM (a cancelled CI job, `timeout`, `docker stop`) ends mlbuild as Ctrl-C does: with the
    # clean-up of whatever it was doing (a push removes its record and its temp file), not dead
    # mid-write. `mlbuild build` hands it on to Nix (build._stopped_with_us).
    signal.signal(signal.SIGTERM, _terminated)
    # A dataset nested over ~1,000 folders deep (PATH_MAX allows ~2,000) stopped `data add` in a
    # RecursionError traceback: os.walk (recursive before Python 3.12) and the NAR writers and
    # readers recurse once a folder. Measured at 1,950 levels: add, status, diff and push work.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    cli()
