"""`mlbuild monitor NAME --url URL [...]` and `mlbuild monitor config NAME`."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import click

from .. import _nix
from .. import build as b
from .. import monitor as m
from ..config import state_dir
from .main import OutDir, cli, load, out_folder

__all__ = ["monitor"]


class _MonitorGroup(click.Group):
    """`monitor config ...` is a subcommand; anything else is `monitor run ...` (options first
    too: `monitor --url URL digits`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _url(value: str | None) -> str | None:
    from ..runtime.monitor import http_url

    try:
        return None if value is None else http_url(value)
    except ValueError as e:   # before building anything
        raise click.BadParameter(str(e)) from None


@cli.group(cls=_MonitorGroup)
def monitor() -> None:
    """Monitor a deployed model: `mlbuild monitor NAME --url URL`, `mlbuild monitor config NAME`.

    `mlbuild monitor NAME --help` lists the options of a run (--once, --interval, --port, --webhook...)."""


@monitor.command("run")
@click.argument("model")
@click.option("--url", required=True, callback=lambda _c, _p, v: _url(v),
              help="The live server, e.g. http://127.0.0.1:8080.")
@click.option("--once", is_flag=True, help="Run the suite once, print the result as JSON and exit (1 when a "
                                           "threshold breaks or the server does not answer).")
@click.option("--interval", type=float, default=None, callback=lambda _c, _p, v: None if v is None else _seconds(v),
              help="Seconds between runs.  [default: 60]")
@click.option("--host", default=None, help="Address of the monitor's own /metrics.  [default: 127.0.0.1]")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port of the monitor's own /metrics (0: a free one, logged).  [default: 9109]")
@click.option("--webhook", default=None, callback=lambda _c, _p, v: _url(v),
              help="POST JSON alerts here: every run while a metric breaks its threshold, once when the server "
                   "stops answering, once when it is fine again (default: $MLBUILD_MONITOR_WEBHOOK, which keeps a "
                   "secret URL off command lines).")
@click.option("--allow-dirty", is_flag=True, help="Build even with uncommitted or untracked files.")
@click.pass_context
def run(ctx: click.Context, model: str, url: str, once: bool, interval: float | None, host: str | None,
        port: int | None, webhook: str | None, allow_dirty: bool) -> None:
    """Run MODEL's validation suite against URL at an interval (or --once), with its metrics on
    --port for Prometheus. Builds MODEL.monitor first (and MODEL, when this checkout's is not
    built: a training run); its options are checked before that."""
    from .commands import _Bar

    project = load(ctx)
    b.check_model(project, model)
    if once and (host is not None or port is not None):   # --once serves no /metrics: said, stdout stays JSON
        click.echo(f"mlbuild: warning: --once runs the suite and prints its result, serving no /metrics: "
                   f"{' and '.join(o for o, v in (('--host', host), ('--port', port)) if v is not None)} "
                   f"{'is' if host is None or port is None else 'are'} not used", err=True)
    elif not once:
        m.check_listen("127.0.0.1" if host is None else host, 9109 if port is None else port)
    from ..runtime.monitor import WEBHOOK_ENV

    if webhook is None and os.environ.get(WEBHOOK_ENV):   # the monitor reads it; checked now, before the build
        try:
            _url(os.environ[WEBHOOK_ENV])
        except click.BadParameter as e:
            raise click.BadParameter(f"${WEBHOOK_ENV}: {e.message}", param_hint="--webhook") from None
    # It needs the model's package: from the store when built, else trained here (for as long as
    # `mlbuild build MODEL` takes), which said nothing for all that time.
    click.echo(f"mlbuild: building {model}.monitor (it trains and packages {model} first where this checkout's "
               f"are not built or in the shared store, as `mlbuild build {model}` would)", err=True)
    summary = b.build_targets(project, [f"{model}.monitor"], allow_dirty=allow_dirty, on_progress=_Bar())
    for line in b.format_summary(summary)[1:]:   # what was built; stdout stays the monitor's (--once: JSON)
        click.echo(f"mlbuild: {line}", err=True)
    program = f"{summary.outputs[0].path}/bin/monitor"
    click.echo(f"monitoring with {summary.outputs[0].path}", err=True)
    given = [*(["--once"] if once else []), *(["--interval", repr(interval)] if interval is not None else []),
             *(["--host", host] if host is not None else []), *(["--port", str(port)] if port is not None else [])]
    argv = _nix.store_program(program, ["--url", url, *given, *_webhook_args(project.root, webhook)])
    os.execv(argv[0], argv)   # in a runner's own store (NIX_CONFIG, NIX_REMOTE): under `nix shell`


def _webhook_args(root: Path, webhook: str | None) -> list[str]:
    """How the monitor gets the webhook: through its environment (off its command line, which `ps`
    shows), or, where flake.lock pins an mlbuild whose monitor reads no $MLBUILD_MONITOR_WEBHOOK
    (before it did, it took --webhook only, and dropped the alerts without a word), as --webhook."""
    from ..flakepin import pinned_root
    from ..runtime.monitor import WEBHOOK_ENV

    webhook = webhook if webhook is not None else os.environ.get(WEBHOOK_ENV) or None
    pinned = pinned_root(root)
    if webhook is None or pinned is None:
        if webhook is not None:
            os.environ[WEBHOOK_ENV] = webhook
        return []
    try:
        reads_env = WEBHOOK_ENV in (pinned / "mlbuild" / "runtime" / "monitor.py").read_text()
    except OSError:
        reads_env = False
    if reads_env:
        os.environ[WEBHOOK_ENV] = webhook
        return []
    click.echo(f"mlbuild: warning: the mlbuild flake.lock pins ({pinned}) has a monitor that takes the webhook "
               f"on its command line only, where `ps` shows it (its path may be a secret); "
               f"`nix flake lock --update-input mlbuild` moves the project to one that reads ${WEBHOOK_ENV}", err=True)
    return ["--webhook", webhook]


@monitor.command("config")
@click.argument("model")
@click.option("--out", "out_dir", type=OutDir(), default=None,
              help="Folder for prometheus.yml, alerts.yml, grafana-dashboard.json (default: the project's "
                   ".mlbuild/monitoring/MODEL, out of git: generated files that would leave the worktree dirty; "
                   "a folder per model, as each model's files are named alike).")
@click.option("--server", default="127.0.0.1:8080", show_default=True, callback=lambda _c, _p, v: _target(v),
              help="host:port of the model server (what Prometheus scrapes; no http://).")
@click.option("--monitor", "monitor_addr", default="127.0.0.1:9109", show_default=True,
              callback=lambda _c, _p, v: _target(v), help="host:port of `mlbuild monitor`'s metrics.")
@click.option("--scrape-interval", default="15s", show_default=True, callback=lambda _c, _p, v: _duration(v),
              help="How often Prometheus scrapes the two, a Prometheus duration (15s, 1m, 1m30s).")
@click.option("--interval", type=float, default=60.0, show_default=True, callback=lambda _c, _p, v: _seconds(v),
              help="Seconds between the monitor's runs, its --interval: the alert on a stalled "
                   "monitor waits 3 of them.")
@click.pass_context
def config(ctx: click.Context, model: str, out_dir: Path | None, server: str, monitor_addr: str,
           scrape_interval: str, interval: float) -> None:
    """Write a Prometheus scrape config, alerting rules and a Grafana dashboard for MODEL."""
    project = load(ctx)
    unwatched = m.without_live_alert(project, model)   # the model and its thresholds checked first
    # a folder per model: another model's config (the same three file names) wrote over this one's
    out_dir = out_folder(out_dir or state_dir(project.root) / "monitoring" / model)
    files = m.write_config(project, model, out_dir, server=server, monitor=monitor_addr,
                           scrape_interval=scrape_interval, interval=interval)
    for kind, path in files.items():
        click.echo(f"{kind:>10}: {path}")
    from ..flakepin import pinned_root

    pinned = pinned_root(project.root)   # its server and monitor are what Prometheus scrapes
    for metric, alerts in (m.unexported(pinned, json.loads(files["rules"].read_text())) if pinned else {}).items():
        click.echo(f"mlbuild: warning: the mlbuild flake.lock pins ({pinned}) exports no {metric}, which "
                   f"alerts.yml's {', '.join(alerts)} {'use' if len(alerts) > 1 else 'uses'}: with that mlbuild's server "
                   f"and monitor, what {metric} would show fires no alert; "
                   f"`nix flake lock --update-input mlbuild` (then commit "
                   f"flake.lock and rebuild) gives a server and monitor that export it", err=True)
    shared = state_dir(project.root) / "monitoring"
    # --out that folder (where the team's Prometheus still looks) writes them anew: nothing is older
    older = [] if out_dir.resolve() == shared.resolve() else m.older_shared_config(shared, model)
    if older:   # an upgrade's first `monitor config`: the files a Prometheus was pointed at stay as they were
        click.echo(f"note: an older mlbuild wrote {model}'s monitoring config into {older[0].parent}/ "
                   f"({', '.join(p.name for p in older)}; every model's went there), and those files are not "
                   f"updated: point Prometheus (--config.file) and Grafana at the ones above, then remove them "
                   f"(rm {' '.join(shlex.quote(str(p)) for p in older)})", err=True)
    if not m.has_monitor(project, model):
        click.echo(f"note: [models.{model}.validation] is not declared, so {model} has no monitor (`mlbuild monitor "
                   f"{model}` runs its validation suite): these files watch the server alone; declare it (suite, "
                   f"dataset, thresholds) and run this again for the monitor's scrape job and alerts", err=True)
    if unwatched:
        click.echo(f"note: no live-feedback alert for {', '.join(unwatched)}: the server computes its live metrics "
                   f"from predictions and feedback alone (see `mlbuild_live_metric`); MlbuildValidationThresholdFailed "
                   f"watches them through the suite that `mlbuild monitor {model}` runs against the server", err=True)


def _target(value: str) -> str:
    """A Prometheus scrape target, host:port (IPv6 in brackets); BadParameter naming the fix."""
    if "://" in value or "/" in value:
        host = value.split("://", 1)[-1].split("/", 1)[0]
        raise click.BadParameter(f"{value!r} is a URL; give host:port, e.g. {host or '127.0.0.1:8080'} "
                                 "(Prometheus scrapes http://HOST:PORT/metrics)")
    host, sep, port = value.rpartition(":")
    # a host name, an IPv4 address or an IPv6 one in brackets: `a b:80` wrote a target Prometheus refuses
    name = re.fullmatch(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+(%[A-Za-z0-9._-]+)?\]", host)
    if not sep or not name or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not host:port; give one like 127.0.0.1:8080 or [::1]:8080")
    return value


def _duration(value: str) -> str:
    """A Prometheus duration above zero (15s, 1m30s); BadParameter naming the form."""
    try:
        m.duration_seconds(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value


def _seconds(value: float) -> float:
    """Seconds above zero and at most a week, as the monitor checks them (nan and inf wrote rules
    that never fire; 1e10 broke the monitor's clock)."""
    from ..runtime.monitor import interval_seconds

    try:
        return interval_seconds(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
