"""`mlbuild notebook export|check`: notebooks as modules and as build rules."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import build as b
from ..notebook import check_notebooks, export_notebook, format_check
from .main import cli, load

__all__ = ["notebook"]


class _Cells:
    """Live progress: the cell a notebook build is running (one rewritten line on a terminal)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.open = False  # a progress line waits for its end (on a terminal)

    def __call__(self, p: b.Progress) -> None:
        e = p.event
        if e.get("event") != "cell":
            return
        n, total = int(e["cell"]), int(e["cells"])
        line = f"  {e.get('notebook', p.target):<16} cell {n:>3}/{total:<3}"
        if self.tty:
            self.open = n != total
            click.echo("\r" + line, nl=not self.open, err=True)
        else:
            click.echo(line, err=True)

    def close(self) -> None:
        if self.open:
            click.echo("", err=True)
            self.open = False


@cli.group()
def notebook() -> None:
    """Notebooks: export one to a plain module; run them as checks ([notebooks.NAME])."""


@notebook.command("export")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              default=None, help="The module to write (default: the notebook's name with .py; - for stdout).")
@click.option("--on-magic", type=click.Choice(["comment", "error"]), default="comment", show_default=True,
              help="IPython magics and shell escapes: drop each with a comment, or refuse the export.")
@click.option("--force", is_flag=True, help="Replace an OUTPUT that an earlier export did not write.")
def export(path: Path, output: Path | None, on_magic: str, force: bool) -> None:
    """Convert the notebook PATH to an importable Python module."""
    stdout = output is not None and str(output) == "-"
    result = export_notebook(path, None if stdout else output, policy="error" if on_magic == "error" else "comment",
                             force=force, to_stdout=stdout)
    if stdout:
        click.echo(result.source, nl=False)
        return
    click.echo(f"{path} -> {result.output}: {_cells(result.code_cells, 'code')}, {_cells(result.markdown_cells, 'markdown')}")
    for m in result.magics:
        click.echo(f"  {m.describe()}")


@notebook.command("check")
@click.argument("names", nargs=-1)
@click.option("--allow-dirty", is_flag=True, help="Build even with uncommitted or untracked files.")
@click.pass_context
def check(ctx: click.Context, names: tuple[str, ...], allow_dirty: bool) -> None:
    """Run the notebooks NAMES (default: those with test = true) in the toolchain, as builds."""
    progress = _Cells()
    try:
        result = check_notebooks(load(ctx), names, allow_dirty=allow_dirty, on_progress=progress)
    finally:
        progress.close()  # a failure's message starts on a line of its own
    for line in format_check(result):
        click.echo(line)


def _cells(n: int, kind: str) -> str:
    return f"{n} {kind} cell{'' if n == 1 else 's'}"
