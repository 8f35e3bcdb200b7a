"""`mlbuild monitor NAME --url URL [...]` and `mlbuild monitor config NAME`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from .. import build as b
from .. import monitor as m
from .main import cli, load

__all__ = ["monitor"]


class _MonitorGroup(click.Group):
    """`monitor config ...` is a subcommand; anything else is `monitor run ...`."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


def _url(value: str) -> str:
    from ..runtime.monitor import http_url

    try:
        return http_url(value)
    except ValueError as e:   # before building anything
        raise click.BadParameter(str(e)) from None


@cli.group(cls=_MonitorGroup)
def monitor() -> None:
    """Monitor a deployed model: `mlbuild monitor NAME --url URL`, `mlbuild monitor config NAME`."""


@monitor.command("run", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("model")
@click.option("--url", required=True, callback=lambda _c, _p, v: _url(v),
              help="The live server, e.g. http://127.0.0.1:8080.")
@click.option("--allow-dirty", is_flag=True, help="Build even with uncommitted or untracked files.")
@click.pass_context
def run(ctx: click.Context, model: str, url: str, allow_dirty: bool) -> None:
    """Run MODEL's validation suite against URL at an interval (or --once); metrics on --port
    (default 9109); --webhook URL for alerts. Other options go to the monitor."""
    project = load(ctx)
    b.check_model(project, model)
    summary = b.build_targets(project, [f"{model}.monitor"], allow_dirty=allow_dirty)
    program = f"{summary.outputs[0].path}/bin/monitor"
    os.execv(program, [program, "--url", url, *ctx.args])


@monitor.command("config")
@click.argument("model")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("monitoring"),
              show_default=True, help="Folder for prometheus.yml, alerts.yml, grafana-dashboard.json.")
@click.option("--server", default="127.0.0.1:8080", show_default=True, help="host:port of the model server.")
@click.option("--monitor", "monitor_addr", default="127.0.0.1:9109", show_default=True,
              help="host:port of `mlbuild monitor`'s metrics.")
@click.option("--scrape-interval", default="15s", show_default=True)
@click.option("--interval", type=float, default=60.0, show_default=True, help="The monitor's interval (s).")
@click.pass_context
def config(ctx: click.Context, model: str, out_dir: Path, server: str, monitor_addr: str,
           scrape_interval: str, interval: float) -> None:
    """Write a Prometheus scrape config, alerting rules and a Grafana dashboard for MODEL."""
    project = load(ctx)
    for kind, path in m.write_config(project, model, out_dir, server=server, monitor=monitor_addr,
                                     scrape_interval=scrape_interval, interval=interval).items():
        click.echo(f"{kind:>10}: {path}")
    unwatched = m.without_live_alert(project, model)
    if unwatched:
        click.echo(f"note: no live-feedback alert for {', '.join(unwatched)}: the server computes its live metrics "
                   f"from predictions and feedback alone (see `mlbuild_live_metric`); MlbuildValidationBelowThreshold "
                   f"watches them through the suite that `mlbuild monitor {model}` runs against the server", err=True)
