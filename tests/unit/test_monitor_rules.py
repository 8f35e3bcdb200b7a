"""`mlbuild monitor config`: a live-feedback alert only for thresholds the server has a live metric
of; the others are named, as the validation suite's alert is what watches them."""

from __future__ import annotations

import json
import re

from mlbuild.runtime.serve.names import BINARY_METRICS, LABEL_METRICS, REGRESSION_METRICS, live_metric
from tests.conftest import run_cli
from tests.unit.test_monitor_stale import promtool_test

TOML = """[project]
name = "p"
[models.cancer]
script = "m.py"
[models.cancer.validation]
thresholds = { accuracy = 0.93, f1 = 0.93, f1_weighted = 0.9, roc_auc = 0.97, top3 = 0.99 }
"""


def test_live_alerts_only_for_metrics_the_server_publishes(tree) -> None:  # type: ignore[no-untyped-def]
    root = tree({"mlbuild.toml": TOML})
    proc = run_cli("monitor", "config", "cancer", "--out", str(root / "conf"), cwd=root,
                   env={"PATH": "/nonexistent"})   # no Nix: the files come from mlbuild.toml alone
    rules = json.loads((root / "conf" / "alerts.yml").read_text())["groups"][0]["rules"]
    live = sorted(r["labels"]["metric"] for r in rules if r["alert"] == "MlbuildLiveMetricThresholdFailed")
    assert live == ["accuracy", "f1", "f1_weighted"]
    assert "MlbuildValidationThresholdFailed" in {r["alert"] for r in rules}   # the suite watches all five
    assert "no live-feedback alert for roc_auc, top3" in proc.stderr


def test_live_metric_names() -> None:
    assert all(live_metric(n) for n in (*LABEL_METRICS, *BINARY_METRICS, *REGRESSION_METRICS))
    assert not any(live_metric(n) for n in ("roc_auc", "accuracy_top5"))


def test_a_regression_threshold_gets_a_live_alert_in_its_direction(tree) -> None:  # type: ignore[no-untyped-def]
    root = tree({"mlbuild.toml": TOML.replace("cancer", "price").replace(
        'accuracy = 0.93, f1 = 0.93, f1_weighted = 0.9, roc_auc = 0.97, top3 = 0.99', 'mae = "<= 0.3", r2 = 0.8')})
    run_cli("monitor", "config", "price", "--out", str(root / "conf"), cwd=root, env={"PATH": "/nonexistent"})
    rules = json.loads((root / "conf" / "alerts.yml").read_text())["groups"][0]["rules"]
    live = {r["labels"]["metric"]: r["expr"] for r in rules if r["alert"] == "MlbuildLiveMetricThresholdFailed"}
    assert live == {"mae": 'mlbuild_live_metric{model="price",metric="mae"} > 0.3',
                    "r2": 'mlbuild_live_metric{model="price",metric="r2"} < 0.8'}


def test_thresholds_of_both_tasks_are_refused(tree) -> None:  # type: ignore[no-untyped-def]
    """A regression model's accuracy alert could never fire (and its validation never pass)."""
    root = tree({"mlbuild.toml": TOML.replace(
        'accuracy = 0.93, f1 = 0.93, f1_weighted = 0.9, roc_auc = 0.97, top3 = 0.99',
        'mse = "<= 4000", accuracy = 0.5, r2 = 0.3')})
    proc = run_cli("monitor", "config", "cancer", "--out", str(root / "conf"), cwd=root, check=False,
                   env={"PATH": "/nonexistent"})
    assert proc.returncode == 1
    assert ("[models.cancer.validation].thresholds mix a classifier's metrics (accuracy) with a regression "
            "model's (r2); a model's validation report has one kind") in proc.stderr
    assert not (root / "conf").exists()   # nothing half-written


def test_a_regression_dashboard_shows_its_suite_metrics_as_numbers(tree) -> None:  # type: ignore[no-untyped-def]
    root = tree({"mlbuild.toml": TOML.replace("f1 = 0.93, f1_weighted = 0.9, roc_auc = 0.97, top3 = 0.99", "").replace(
        "accuracy = 0.93, ", 'rmse = "<= 50"')})
    run_cli("monitor", "config", "cancer", "--out", str(root / "conf"), cwd=root, env={"PATH": "/nonexistent"})
    suite = json.loads((root / "conf" / "grafana-dashboard.json").read_text())["panels"][0]
    assert suite["title"] == "Validation suite on the live server"
    assert suite["fieldConfig"]["defaults"]["unit"] == "short"   # not percent: rmse 44 is not 4400%


def test_window_counts_sit_on_the_right_axis(tree) -> None:  # type: ignore[no-untyped-def]
    """A sample count of 1,000 beside an F1 of 0.9 on one axis made the metric a flat line."""
    root = tree({"mlbuild.toml": TOML})
    run_cli("monitor", "config", "cancer", "--out", str(root / "conf"), cwd=root, env={"PATH": "/nonexistent"})
    panels = {p["title"]: p for p in json.loads((root / "conf" / "grafana-dashboard.json").read_text())["panels"]}
    for title, legend in (("Live metrics from feedback", "samples in window"), ("Input drift", "rows in window")):
        overrides = panels[title]["fieldConfig"]["overrides"]
        assert [o["matcher"]["options"] for o in overrides] == [legend]
        assert {"id": "custom.axisPlacement", "value": "right"} in overrides[0]["properties"]
        assert legend in [t["legendFormat"] for t in panels[title]["targets"]]


def test_config_refuses_what_prometheus_would_refuse(tree) -> None:  # type: ignore[no-untyped-def]
    """`--server http://...` (the form `monitor --url` takes), `--scrape-interval abc` and
    `--interval 0` wrote files promtool rejects (or a stale alert that always fires)."""
    root = tree({"mlbuild.toml": TOML})
    for args, message in ((["--server", "http://127.0.0.1:8080"], "'http://127.0.0.1:8080' is a URL; give host:port, "
                                                                   "e.g. 127.0.0.1:8080"),
                          (["--monitor", "localhost"], "'localhost' is not host:port"),
                          (["--scrape-interval", "abc"], "'abc' is not a Prometheus duration above zero"),
                          (["--scrape-interval", "0s"], "'0s' is not a Prometheus duration above zero"),
                          (["--interval", "0"], "0"), (["--interval", "nan"], "nan is not a number of seconds above 0"),
                          (["--interval", "inf"], "inf is not a number of seconds above 0")):
        proc = run_cli("monitor", "config", "cancer", *args, cwd=root, check=False, env={"PATH": "/nonexistent"})
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (root / ".mlbuild" / "monitoring").exists()
    run_cli("monitor", "config", "cancer", "--server", "[::1]:8080", "--scrape-interval", "1m30s", cwd=root,
            env={"PATH": "/nonexistent"})
    # by default into the project's state folder, out of git (a dirty worktree stops the next build)
    assert (root / ".mlbuild" / "monitoring" / "cancer" / "alerts.yml").is_file()


def test_each_model_s_files_have_a_folder_of_their_own(tree) -> None:  # type: ignore[no-untyped-def]
    """Two models of a project wrote the same .mlbuild/monitoring/prometheus.yml: the second one's
    config replaced the first's, and a Prometheus reloading it stopped watching the first model."""
    root = tree({"mlbuild.toml": TOML + '[models.digits]\nscript = "d.py"\n[models.digits.validation]\nsuite = "v.py"\n'})
    for model in ("cancer", "digits"):
        run_cli("monitor", "config", model, cwd=root, env={"PATH": "/nonexistent"})
    for model in ("cancer", "digits"):
        conf = json.loads((root / ".mlbuild" / "monitoring" / model / "prometheus.yml").read_text())
        assert [j["job_name"] for j in conf["scrape_configs"]] == [f"mlbuild-{model}", f"mlbuild-{model}-monitor"]


def test_an_out_folder_that_cannot_be_made_is_named(tree) -> None:  # type: ignore[no-untyped-def]
    """`--out` over a file (or under one) ended in a mkdir traceback."""
    root = tree({"mlbuild.toml": TOML, "afile": "x"})
    for out, said in (("afile", "Directory 'afile' is a file"),
                      ("afile/monitoring", "cannot make the folder 'afile/monitoring': Not a directory")):
        proc = run_cli("monitor", "config", "cancer", "--out", out, cwd=root, check=False, env={"PATH": "/nonexistent"})
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and said in proc.stderr, proc.stderr
    assert (root / "afile").read_text() == "x"


def requests(route: str, status: str, per_15s: float) -> dict[str, str]:
    """A server's mlbuild_requests_total series, rising ``per_15s`` every 15 s for 20 minutes."""
    labels = f'job="mlbuild-cancer",instance="127.0.0.1:8080",method="GET",route="{route}",status="{status}"'
    return {"series": f"mlbuild_requests_total{{{labels}}}", "values": f"0+{per_15s}x80"}


def test_the_error_rate_is_of_the_requests_clients_make(tree) -> None:  # type: ignore[no-untyped-def]
    """Every client request failing (one v1 predict every 2 minutes, all 500) did not page: the
    rate divided by all requests, Prometheus's own scrapes of /metrics (4 a minute) and the
    health probes (6 a minute) among them, which diluted it to 4%."""
    root = tree({"mlbuild.toml": TOML})
    run_cli("monitor", "config", "cancer", "--out", str(root / "conf"), cwd=root, env={"PATH": "/nonexistent"})
    background = [requests("/metrics", "200", 1), requests("/v2/health/ready", "200", 1), requests("/v2/health/live", "200", 0.5),
                  requests("/v2/models/{name}/ready", "200", 0.25)]
    failing = requests("/v1/models/{name}:predict", "500", 0.125)
    promtool_test(root / "conf", [*background, failing], {"3m": False, "12m": True},
                  alert="MlbuildHighErrorRate", labels={},
                  annotations={"summary": "cancer: 100% of client requests fail (5xx, over 5m), threshold 5%"})
    # a healthy server answering its clients, scraped and probed as ever: no alert
    promtool_test(root / "conf", [*background, requests("/v1/models/{name}:predict", "200", 0.125)],
                  {"12m": False}, alert="MlbuildHighErrorRate", labels={})
    # a failing readiness probe is no client's error (a draining server answers 503 on purpose)
    promtool_test(root / "conf", [requests("/v2/health/ready", "503", 1), requests("/v2/models/{name}/ready", "503", 1),
                                  requests("/v1/models/{name}", "503", 1), requests("/v2/models/{name}/infer", "200", 1)],
                  {"12m": False}, alert="MlbuildHighErrorRate", labels={})


def test_the_error_rate_and_latency_alerts_say_their_value(tree) -> None:  # type: ignore[no-untyped-def]
    """They said "more than 5% of requests fail" and "p99 inference latency above 0.5 s": not how
    many fail, nor how slow, which the page must say (the other alerts give their value)."""
    root = tree({"mlbuild.toml": TOML})
    run_cli("monitor", "config", "cancer", "--out", str(root / "conf"), cwd=root, env={"PATH": "/nonexistent"})
    # one request in four fails
    promtool_test(root / "conf", [requests("/v1/models/{name}:predict", "500", 1),
                                  requests("/v1/models/{name}:predict", "200", 3)], {"12m": True},
                  alert="MlbuildHighErrorRate", labels={},
                  annotations={"summary": "cancer: 25% of client requests fail (5xx, over 5m), threshold 5%"})
    # every inference takes between 1 and 2.5 s: p99 interpolated in that bucket
    labels = 'job="mlbuild-cancer",instance="127.0.0.1:8080",route="/v1/models/{name}:predict"'
    buckets = [{"series": f'mlbuild_request_duration_seconds_bucket{{{labels},le="{le}"}}',
                "values": "0x80" if le != "+Inf" else "0+1x80"} for le in ("0.5", "1", "+Inf")]
    buckets[-1:-1] = [{"series": f'mlbuild_request_duration_seconds_bucket{{{labels},le="2.5"}}', "values": "0+1x80"}]
    promtool_test(root / "conf", buckets, {"12m": True}, alert="MlbuildHighLatency", labels={},
                  annotations={"summary": "cancer: p99 inference latency is 2.485s (over 5m), threshold 0.5 s"})


def test_the_dashboard_s_latency_is_the_alert_s(tree) -> None:  # type: ignore[no-untyped-def]
    """The latency panel took every route: at low traffic its p50 and p99 were Prometheus's scrapes,
    the health probes and feedback, not the inference latency MlbuildHighLatency pages on."""
    root = tree({"mlbuild.toml": TOML})
    run_cli("monitor", "config", "cancer", "--out", str(root / "conf"), cwd=root, env={"PATH": "/nonexistent"})
    rule = next(r for r in json.loads((root / "conf" / "alerts.yml").read_text())["groups"][0]["rules"]
                if r["alert"] == "MlbuildHighLatency")
    selector = re.search(r"rate\((mlbuild_request_duration_seconds_bucket\{.*\})\[5m\]", rule["expr"])
    assert selector is not None
    panels = json.loads((root / "conf" / "grafana-dashboard.json").read_text())["panels"]
    latency = [t for p in panels for t in p["targets"] if "mlbuild_request_duration_seconds" in t["expr"]]
    assert [t["legendFormat"] for t in latency] == ["p50", "p99"]
    assert all(selector.group(1) in t["expr"] for t in latency), latency


def test_a_model_without_validation_has_no_monitor_to_watch(tree) -> None:  # type: ignore[no-untyped-def]
    """Such a model has no monitor (NAME.monitor runs its validation suite): the config scraped
    one anyway, and MlbuildMonitorDown fired for ever."""
    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[models.m]\nscript = "m.py"\n'})
    proc = run_cli("monitor", "config", "m", "--out", "conf", cwd=root, env={"PATH": "/nonexistent"})
    assert "note: [models.m.validation] is not declared, so m has no monitor" in proc.stderr
    conf = root / "conf"
    jobs = [j["job_name"] for j in json.loads((conf / "prometheus.yml").read_text())["scrape_configs"]]
    assert jobs == ["mlbuild-m"]
    rules = json.loads((conf / "alerts.yml").read_text())["groups"][0]["rules"]
    assert not [r for r in rules if "monitor" in r["expr"]]
    assert {r["alert"] for r in rules} == {"MlbuildHighErrorRate", "MlbuildHighLatency", "MlbuildInputDrift",
                                           "MlbuildServerDown"}
    panels = json.loads((conf / "grafana-dashboard.json").read_text())["panels"]
    assert [p["id"] for p in panels] == list(range(6)) and not [p for p in panels if "monitor" in json.dumps(p)]
    assert panels[0]["gridPos"] == {"h": 8, "w": 12, "x": 0, "y": 0}
    # with a validation suite, its monitor is scraped and watched, as before
    (root / "mlbuild.toml").write_text('[project]\nname = "p"\n[models.m]\nscript = "m.py"\n'
                                       '[models.m.validation]\nsuite = "v.py"\n')
    proc = run_cli("monitor", "config", "m", "--out", "conf", cwd=root, env={"PATH": "/nonexistent"})
    assert "no monitor" not in proc.stderr
    jobs = [j["job_name"] for j in json.loads((conf / "prometheus.yml").read_text())["scrape_configs"]]
    assert jobs == ["mlbuild-m", "mlbuild-m-monitor"]
    assert len(json.loads((conf / "grafana-dashboard.json").read_text())["panels"]) == 8


def test_the_suite_alert_says_the_metric_s_value_and_threshold(tree) -> None:  # type: ignore[no-untyped-def]
    """It said 'accuracy breaks its threshold' and nothing of by how much (its value is threshold_ok's 0)."""
    root = tree({"mlbuild.toml": TOML})
    run_cli("monitor", "config", "cancer", "--out", str(root / "conf"), cwd=root, env={"PATH": "/nonexistent"})
    target = 'job="mlbuild-cancer-monitor",instance="127.0.0.1:9109",model="cancer"'
    run = f'{target},model_hash="abc",suite_version="v1"'
    labels = {"job": "mlbuild-cancer-monitor", "instance": "127.0.0.1:9109", "model": "cancer", "model_hash": "abc",
              "suite_version": "v1", "metric": "accuracy"}
    summary = "cancer: validation suite metric {} is {}, threshold {}, on the live server (model abc)"
    for metric, value in (("accuracy", "0.5"), ("top3", None)):   # a metric the report lacks: missing
        series = [{"series": f'mlbuild_monitor_threshold_ok{{{run},metric="{metric}"}}', "values": "0x10"},
                  {"series": f'mlbuild_monitor_threshold{{{target},metric="{metric}",op=">="}}', "values": "0.93x10"}]
        if value:
            series.append({"series": f'mlbuild_monitor_metric{{{run},metric="{metric}"}}', "values": f"{value}x10"})
        promtool_test(root / "conf", series, {"1m": True}, alert="MlbuildValidationThresholdFailed",
                      labels={**labels, "metric": metric},
                      annotations={"summary": summary.format(metric, value or "missing", ">= 0.93")})


def test_rules_use_what_the_runtime_exports_and_a_pinned_older_one_is_checked(tree, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A project pinned to an mlbuild from before mlbuild_monitor_start_time_seconds: alerts.yml
    (written by this CLI) watched it to catch a monitor that never completes a run, and its
    monitor never exported it: that alert never fired, and `monitor config` said nothing."""
    import shutil
    from pathlib import Path

    from mlbuild.config import load_project
    from mlbuild.monitor import alert_rules, unexported

    rules = alert_rules(load_project(tree({"mlbuild.toml": TOML})), "cancer")
    repo = Path(__file__).resolve().parents[2]
    assert unexported(repo, rules) == {}
    old = tmp_path / "old-mlbuild"
    shutil.copytree(repo / "mlbuild" / "runtime", old / "mlbuild" / "runtime",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for path in old.rglob("*.py"):
        path.write_text(path.read_text().replace("mlbuild_monitor_start_time_seconds", "started"))
    assert unexported(old, rules) == {"mlbuild_monitor_start_time_seconds": ["MlbuildMonitorStale"]}


def test_an_empty_out_or_a_host_with_a_space_is_refused(tree) -> None:  # type: ignore[no-untyped-def]
    """`--out "$DIR"` with DIR unset wrote the three files into the project (untracked files: the
    next build refused the dirty worktree); `--monitor "a b:9109"` wrote a target Prometheus refuses.
    `metrics show`/`history --out ""` took the project folder the same way."""
    root = tree({"mlbuild.toml": TOML})
    before = sorted(p.name for p in root.iterdir())
    for args, message in ((["--out", ""], "Invalid value for '--out': '' is empty (an unset variable?); give a folder"),
                          (["--monitor", "a b:9109"], "'a b:9109' is not host:port"),
                          (["--server", "exa mple:80"], "'exa mple:80' is not host:port")):
        proc = run_cli("monitor", "config", "cancer", *args, cwd=root, check=False, env={"PATH": "/nonexistent"})
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    for command in ("show", "history"):
        proc = run_cli("metrics", command, "cancer", "--out", "", cwd=root, check=False, env={"PATH": "/nonexistent"})
        assert proc.returncode == 2 and "'' is empty (an unset variable?)" in proc.stderr, proc.stderr
    assert sorted(p.name for p in root.iterdir()) == before
    run_cli("monitor", "config", "cancer", "--monitor", "[fe80::1%eth0]:9109", "--server", "model-1.example_x:80",
            "--out", str(root / "conf"), cwd=root, env={"PATH": "/nonexistent"})


def test_an_older_mlbuild_s_shared_config_of_the_model_is_named(tree) -> None:  # type: ignore[no-untyped-def]
    """mlbuild before 17bc231 wrote every model's files into .mlbuild/monitoring/, where a team
    pointed Prometheus. After an upgrade `monitor config` wrote .mlbuild/monitoring/MODEL/ and said
    nothing of the old files, which Prometheus kept reading, with the older rules, never updated."""
    root = tree({"mlbuild.toml": TOML + '[models.digits]\nscript = "d.py"\n[models.digits.validation]\nsuite = "v.py"\n'})
    shared = root / ".mlbuild" / "monitoring"
    run_cli("monitor", "config", "cancer", "--out", str(shared), cwd=root, env={"PATH": "/nonexistent"})  # as then
    other = run_cli("monitor", "config", "digits", cwd=root, env={"PATH": "/nonexistent"})
    assert "an older mlbuild" not in other.stderr   # those files are cancer's, not digits'
    proc = run_cli("monitor", "config", "cancer", cwd=root, env={"PATH": "/nonexistent"})
    assert f"note: an older mlbuild wrote cancer's monitoring config into {shared}/ (prometheus.yml, alerts.yml, " \
           "grafana-dashboard.json; every model's went there), and those files are not updated: point Prometheus " \
           f"(--config.file) and Grafana at the ones above, then remove them (rm {shared / 'prometheus.yml'} " \
           f"{shared / 'alerts.yml'} {shared / 'grafana-dashboard.json'})" in proc.stderr, proc.stderr
    assert (shared / "cancer" / "prometheus.yml").is_file() and (shared / "prometheus.yml").is_file()   # none removed
    # --out that very folder (where Prometheus still looks) writes those files anew: they are not older,
    # and the note told the user to remove the files the command had just written
    again = run_cli("monitor", "config", "cancer", "--out", ".mlbuild/monitoring", cwd=root, env={"PATH": "/nonexistent"})
    assert "an older mlbuild" not in again.stderr and "prometheus: .mlbuild/monitoring/prometheus.yml" in again.stdout
