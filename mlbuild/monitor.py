"""`mlbuild monitor`: run a model's monitor, and write its Prometheus and Grafana configuration.

``monitor NAME --url URL`` builds ``NAME.monitor`` (nix/monitor.nix) and runs its ``bin/monitor``:
the validation suite against the live server, exported as Prometheus metrics.
``monitor config NAME`` writes, for that model:

- ``prometheus.yml``: scrape jobs for the server's ``/metrics`` and the monitor's, and the rules;
- ``alerts.yml``: a suite metric breaking its threshold (the monitor), a live metric from
  ground-truth feedback breaking its threshold (the server; for the thresholds it has a live metric
  of, see :mod:`.runtime.serve.names`), error rate, p99 latency, input drift
  (population stability index), and a monitor that stopped reporting or never completed a run;
- ``grafana-dashboard.json``: a dashboard over the same metrics (and only metrics that exist).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from . import atomic
from .config import Project
from .errors import ConfigError
from .runtime.serve.names import BINARY_METRICS, LABEL_METRICS, REGRESSION_METRICS, live_metric
from .runtime.validate import parse_threshold

__all__ = ["check_listen", "write_config", "has_monitor", "alert_rules", "duration_seconds", "stale_after", "without_live_alert", "prometheus_config", "dashboard",
           "unexported", "older_shared_config"]

_OPS = {">=": "<", "<=": ">", ">": "<=", "<": ">="}   # the alert fires on the negation


_CLASSIFICATION = (*LABEL_METRICS, *BINARY_METRICS, "roc_auc")   # what the validation report holds, by task


def _thresholds(project: Project, model: str) -> dict[str, tuple[str, float]]:
    table = project.raw.get("models", {}).get(model)
    if table is None:
        raise ConfigError(f"no model {model!r} in {project.config_path}")
    raw = table.get("validation", {}).get("thresholds", {})
    try:
        parsed = {name: parse_threshold(name, rule) for name, rule in raw.items()}
    except ValueError as e:
        raise ConfigError(f"{project.config_path}: [models.{model}.validation] {e}") from None
    classification = sorted(n for n in parsed if n in _CLASSIFICATION)
    regression = sorted(n for n in parsed if n in REGRESSION_METRICS)
    if classification and regression:   # one of them can never be measured, nor alert
        raise ConfigError(
            f"{project.config_path}: [models.{model}.validation].thresholds mix a classifier's metrics "
            f"({', '.join(classification)}) with a regression model's ({', '.join(regression)}); a model's "
            f"validation report has one kind: keep those of its task")
    return parsed


def check_listen(host: str, port: int) -> None:
    """Where `mlbuild monitor` will serve its /metrics: ``host`` must be an address of this machine
    and ``port`` free there (0: any), checked as the monitor binds (the first address ``host`` gives),
    before the monitor's build, which may train the model: the monitor found out only after it.
    ConfigError naming the address and the fix. (A port taken between now and then is the monitor's
    own error.)"""
    import socket

    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if not host.strip():   # `--host "$HOST"` with HOST unset: 0.0.0.0 in effect, every interface
        raise ConfigError(f"--host {host!r} is empty (an unset variable?); give an address of this machine, "
                          f"such as 127.0.0.1 (the default) or 0.0.0.0 for every interface")
    if host.startswith("[") and host.endswith("]"):   # a URL's or scrape target's form, which no bind takes
        raise ConfigError(f"--host {host!r}: give an IPv6 address without brackets (--host {host[1:-1]}); the "
                          f"monitor binds it as given, and '{host}' names no address (Name or service not known)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the monitor's HTTP server sets it
            s.bind(address)
    except (OSError, UnicodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"cannot serve the monitor's /metrics on {shown} ({why}); pass another --port "
                          f"(0: a free one) or a --host that is an address of this machine") from None


def has_monitor(project: Project, model: str) -> bool:
    """Whether ``model`` declares a validation suite, which its monitor (``NAME.monitor``) runs:
    without one there is no monitor to scrape, nor alert on."""
    if model not in project.raw.get("models", {}):
        raise ConfigError(f"no model {model!r} in {project.config_path}")
    return "validation" in project.raw["models"][model]


def _is_regression(project: Project, model: str) -> bool:
    """Whether the thresholds are a regression model's (the task is the training's, unknown here)."""
    return any(name in REGRESSION_METRICS for name in _thresholds(project, model))


def without_live_alert(project: Project, model: str) -> list[str]:
    """Thresholds the server has no live metric for (``roc_auc``, which needs scores, or a metric
    of the user's own): alerts.yml watches them through the validation suite the monitor runs
    against the live server, not through feedback."""
    return sorted(name for name in _thresholds(project, model) if not live_metric(name))


# The routes whose latency is inference: v2 infer (tritonclient adds /versions/{version} when given
# a model_version) and the v1 predict route (serve/app.py names them so in the metrics).
INFER_ROUTES = r"/v2/models/\\{name\\}(/versions/\\{version\\})?/infer|/v1/models/\\{name\\}:predict"
# Requests no client makes: Prometheus's scrape and the health and readiness probes (KServe's v1
# one, /v1/models/{name}, among them: a 503 while loading or draining). They are most requests of a
# quiet server, and in the error rate they hid a server failing every client request.
NOT_CLIENT_ROUTES = (r"/metrics|/v2/health/(live|ready)|/v2/models/\\{name\\}(/versions/\\{version\\})?/ready"
                     r"|/v1/models/\\{name\\}")


#: A Prometheus duration (15s, 1m30s, 500ms): its units, largest first, in seconds.
DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?")
_UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)


def duration_seconds(value: str) -> float:
    """The seconds of a Prometheus duration above zero; ValueError naming it and the form."""
    m = DURATION.fullmatch(value)
    seconds = sum(int(g) * unit for g, unit in zip(m.groups(), _UNITS) if g) if m and value else 0
    if not seconds:
        raise ValueError(f"{value!r} is not a Prometheus duration above zero; give one like 15s, 1m or 1m30s")
    return float(seconds)


def stale_after(interval: float, scrape_interval: str) -> float:
    """Seconds without a completed run before MlbuildMonitorStale fires: three of the monitor's
    intervals, and never less than two scrapes (Prometheus sees a run only when it scrapes: a rule
    shorter than its scrape interval fires between scrapes of a healthy monitor)."""
    return max(3 * interval, 2 * duration_seconds(scrape_interval))


def _number(x: float) -> str:
    """``x`` for PromQL and people: 180, 0.3 (never rounded to 0, as ``.0f`` wrote 0.003)."""
    return f"{x:.0f}" if x == round(x) else f"{x:.3f}".rstrip("0").rstrip(".")


# Alert templates (Prometheus's Go templates) giving the suite metric's value ("missing" where the
# report has no such metric) and its threshold, from the monitor's own series beside the alert's.
_SUITE_VALUE = ("{{ with printf `mlbuild_monitor_metric{instance=%q,model_hash=%q,metric=%q}` $labels.instance "
                "$labels.model_hash $labels.metric | query }}{{ . | first | value | printf \"%.4g\" }}"
                "{{ else }}missing{{ end }}")
_SUITE_THRESHOLD = ("{{ with printf `mlbuild_monitor_threshold{instance=%q,metric=%q}` $labels.instance $labels.metric "
                    "| query }}{{ with first . }}{{ .Labels.op }} {{ .Value }}{{ end }}{{ end }}")


def alert_rules(project: Project, model: str, *, interval: float = 60.0, scrape_interval: str = "15s",
                error_rate: float = 0.05, p99_seconds: float = 0.5, psi: float = 0.2) -> dict[str, Any]:
    sel = f'model="{model}"'
    stale = _number(stale_after(interval, scrape_interval))
    clients = f'job="mlbuild-{model}",route!~"{NOT_CLIENT_ROUTES}"'
    monitored = has_monitor(project, model)   # else no monitor, and no rule on one
    rules: list[dict[str, Any]] = [{
        "alert": "MlbuildValidationThresholdFailed",
        "expr": f"mlbuild_monitor_threshold_ok{{{sel}}} == 0",
        "labels": {"severity": "page", "model": model},
        # what a receiver needs: the metric's value and its threshold (the rule's own value is 0)
        "annotations": {"summary": f"{model}: validation suite metric {{{{ $labels.metric }}}} is {_SUITE_VALUE}, "
                                   f"threshold {_SUITE_THRESHOLD}, on the live server (model "
                                   f"{{{{ $labels.model_hash }}}})"},
    }] if monitored else []
    for name, (op, value) in sorted(_thresholds(project, model).items()):
        if not live_metric(name):   # no live counterpart (see without_live_alert)
            continue
        rules.append({
            "alert": "MlbuildLiveMetricThresholdFailed",
            "expr": f'mlbuild_live_metric{{{sel},metric="{name}"}} {_OPS[op]} {value}',
            # a window of feedback moves with every batch of labels: it must stay bad a while to page
            "for": "10m",
            "labels": {"severity": "page", "model": model, "metric": name},
            "annotations": {"summary": f"{model}: live {name} from ground-truth feedback is "
                                       f"{{{{ $value }}}}, threshold {op} {value}"},
        })
    rules += [
        {"alert": "MlbuildHighErrorRate",   # of the requests clients make (not scrapes, not probes)
         "expr": (f'sum(rate(mlbuild_requests_total{{{clients},status=~"5.."}}[5m])) '
                  f'/ sum(rate(mlbuild_requests_total{{{clients}}}[5m])) > {error_rate}'),
         "for": "5m", "labels": {"severity": "page", "model": model},
         # what a receiver needs: the rate now, beside the threshold
         "annotations": {"summary": f"{model}: {{{{ $value | humanizePercentage }}}} of client requests fail "
                                    f"(5xx, over 5m), threshold {error_rate:.0%}"}},
        {"alert": "MlbuildHighLatency",   # the inference routes: v2 (with or without a version) and v1
         "expr": (f'histogram_quantile(0.99, sum by (le) (rate(mlbuild_request_duration_seconds_bucket'
                  f'{{job="mlbuild-{model}",route=~"{INFER_ROUTES}"}}[5m]))) > {p99_seconds}'),
         "for": "5m", "labels": {"severity": "warn", "model": model},
         "annotations": {"summary": f"{model}: p99 inference latency is {{{{ $value | humanizeDuration }}}} "
                                    f"(over 5m), threshold {_number(p99_seconds)} s"}},
        {"alert": "MlbuildInputDrift",
         "expr": f"mlbuild_input_drift_psi_max{{{sel}}} > {psi}",
         "for": "10m", "labels": {"severity": "warn", "model": model},
         "annotations": {"summary": f"{model}: input drift, a feature's population stability index is "
                                    f"{{{{ $value }}}} (> {psi})"}},
        # A process that is gone has no series left to compare (Prometheus marks them stale on the
        # first failed scrape), so each target's own `up` says it is down.
        {"alert": "MlbuildServerDown",
         "expr": f'up{{job="mlbuild-{model}"}} == 0',
         "for": "1m", "labels": {"severity": "page", "model": model},
         "annotations": {"summary": f"{model}: Prometheus cannot scrape the model server ({{{{ $labels.instance }}}})"}},
    ]
    rules += [
        {"alert": "MlbuildMonitorDown",
         "expr": f'up{{job="mlbuild-{model}-monitor"}} == 0',
         "for": "2m", "labels": {"severity": "warn", "model": model},
         "annotations": {"summary": f"{model}: Prometheus cannot scrape the monitor ({{{{ $labels.instance }}}}), "
                                    "so no validation suite result reaches it"}},
        # From the last completed run, or from the monitor's start while it has completed none (a
        # wrong --url: the last-run series never appears, and a rule on it alone never fired).
        {"alert": "MlbuildMonitorStale",
         "expr": (f"time() - (mlbuild_monitor_last_run_timestamp_seconds{{{sel}}} "
                  f"or mlbuild_monitor_start_time_seconds{{{sel}}}) > {stale}"),
         "labels": {"severity": "warn", "model": model},
         "annotations": {"summary": f"{model}: the monitor runs but has not completed a suite run for "
                                    f"{stale} s (the server does not answer it: see "
                                    f"mlbuild_monitor_server_reachable and the monitor's log)"}},
    ] if monitored else []
    return {"groups": [{"name": f"mlbuild-{model}", "rules": rules}]}


def prometheus_config(model: str, server: str, monitor: str | None, *, scrape_interval: str = "15s",
                      rule_file: str = "alerts.yml") -> dict[str, Any]:
    """Scrape jobs for the server and (``monitor``: its host:port; None for a model without one) the monitor."""
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [rule_file],
        "scrape_configs": [
            {"job_name": f"mlbuild-{model}", "static_configs": [{"targets": [server]}]},
            *([{"job_name": f"mlbuild-{model}-monitor", "static_configs": [{"targets": [monitor]}]}] if monitor else []),
        ],
    }


def _panel(title: str, exprs: list[tuple[str, str]], unit: str = "short",
           right: tuple[str, ...] = ()) -> dict[str, Any]:
    """A time series panel (its id and place are its rank on the dashboard, two a row); the series
    whose legends are in ``right`` (counts beside metrics) get the right-hand axis, so that they
    do not flatten the others."""
    overrides = [{"matcher": {"id": "byName", "options": legend},
                  "properties": [{"id": "custom.axisPlacement", "value": "right"}, {"id": "unit", "value": "short"}]}
                 for legend in right]
    return {"type": "timeseries", "title": title, "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": overrides},
            "targets": [{"refId": chr(65 + j), "expr": e, "legendFormat": leg} for j, (e, leg) in enumerate(exprs)]}


def dashboard(model: str, *, regression: bool = False, monitor: bool = True) -> dict[str, Any]:
    """The dashboard; the monitor's panels only where the model has one (``monitor``)."""
    sel, job = f'model="{model}"', f'job="mlbuild-{model}"'
    infer = f'{job},route=~"{INFER_ROUTES}"'
    unit = "short" if regression else "percentunit"   # mae, rmse are in the target's units
    panels = [
        _panel("Validation suite on the live server", [(f"mlbuild_monitor_metric{{{sel}}}", "{{metric}}")], unit),
        _panel("Thresholds met (1) / broken (0)", [(f"mlbuild_monitor_threshold_ok{{{sel}}}", "{{metric}}")]),
    ] if monitor else []
    panels += [
        _panel("Live metrics from feedback", [(f"mlbuild_live_metric{{{sel}}}", "{{metric}}"),
                                                 (f"mlbuild_live_feedback_samples{{{sel}}}", "samples in window")],
               right=("samples in window",)),
        # the drift gauges appear once the window holds 500 rows: its fill says why they are empty
        _panel("Input drift", [(f"mlbuild_input_drift_psi_max{{{sel}}}", "max PSI"),
                                  (f"mlbuild_input_drift_mean_shift_max{{{sel}}}", "max mean shift (std)"),
                                  (f"mlbuild_input_drift_rows{{{sel}}}", "rows in window")],
               right=("rows in window",)),
        _panel("Requests by status", [(f"sum by (status) (rate(mlbuild_requests_total{{{job}}}[5m]))", "{{status}}")], "reqps"),
        # the inference routes, as MlbuildHighLatency: with scrapes, probes and feedback in, a quiet
        # server's p50 and p99 were theirs, not the latency the alert pages on
        _panel("Inference latency p50 / p99", [
            (f"histogram_quantile({q}, sum by (le) (rate(mlbuild_request_duration_seconds_bucket{{{infer}}}[5m])))", f"p{p}")
            for q, p in (("0.5", 50), ("0.99", 99))], "s"),
        _panel("Batch size p50", [(f"histogram_quantile(0.5, sum by (le) (rate(mlbuild_batch_size_bucket{{{job}}}[5m])))", "p50")]),
        _panel("In flight / ready", [(f"mlbuild_requests_in_flight{{{job}}}", "in flight"),
                                        (f"mlbuild_model_ready{{{job}}}", "ready")]),
    ]
    for i, panel in enumerate(panels):
        panel.update(id=i, gridPos={"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8})
    return {"title": f"mlbuild: {model}", "uid": f"mlbuild-{model}", "schemaVersion": 39, "version": 1,
            "tags": ["mlbuild"], "time": {"from": "now-6h", "to": "now"}, "refresh": "30s",
            "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus"}]},
            "panels": panels}


def unexported(mlbuild_root: Path, rules: dict[str, Any]) -> dict[str, list[str]]:
    """The metrics the ``rules`` (alerts.yml) use that the mlbuild checkout at ``mlbuild_root``
    (the one a project's flake.lock pins, whose server and monitor run) never names in its runtime:
    {metric: [alert, ...]}. An expression over a series nobody exports is empty: the alert never fires."""
    runtime = mlbuild_root / "mlbuild" / "runtime"
    text = "\n".join(p.read_text(errors="replace") for p in sorted(runtime.rglob("*.py")))
    missing: dict[str, list[str]] = {}
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            for name in sorted(set(re.findall(r"\bmlbuild_[a-z_]+", rule.get("expr", "")))):
                if re.sub(r"_(bucket|count|sum|total)$", "", name) not in text:
                    missing.setdefault(name, []).append(rule.get("alert", "?"))
    return missing


def write_config(project: Project, model: str, out_dir: Path, *, server: str = "127.0.0.1:8080",
                 monitor: str = "127.0.0.1:9109", scrape_interval: str = "15s",
                 interval: float = 60.0) -> dict[str, Path]:
    """Write prometheus.yml, alerts.yml (YAML 1.2 is a superset of JSON: written as JSON) and
    grafana-dashboard.json into ``out_dir`` (all three made before any is written)."""
    files = {"prometheus": out_dir / "prometheus.yml", "rules": out_dir / "alerts.yml",
             "dashboard": out_dir / "grafana-dashboard.json"}
    monitored = has_monitor(project, model)
    contents = {"prometheus": prometheus_config(model, server, monitor if monitored else None,
                                                scrape_interval=scrape_interval),
                "rules": alert_rules(project, model, interval=interval, scrape_interval=scrape_interval),
                "dashboard": dashboard(model, regression=_is_regression(project, model), monitor=monitored)}
    out_dir.mkdir(parents=True, exist_ok=True)
    for kind, path in files.items():   # each replaced whole: a Prometheus reloading never reads half a file
        atomic.write_text(path, json.dumps(contents[kind], indent=2) + "\n")
    return files


def older_shared_config(monitoring: Path, model: str) -> list[Path]:
    """The files an mlbuild from before the per-model folders (17bc231) wrote for ``model`` straight
    into ``monitoring`` (the project's .mlbuild/monitoring): a Prometheus set up then reads them,
    and `monitor config` now writes ``monitoring``/MODEL, so they stay as they were, never updated.
    [] where prometheus.yml there is not ``model``'s (another model's, or none)."""
    try:
        conf = json.loads((monitoring / "prometheus.yml").read_text())
        jobs = [j.get("job_name") for j in conf.get("scrape_configs", [])]
    except (OSError, ValueError, AttributeError, TypeError):
        return []
    if f"mlbuild-{model}" not in jobs:
        return []
    return [p for p in (monitoring / n for n in ("prometheus.yml", "alerts.yml", "grafana-dashboard.json")) if p.is_file()]
