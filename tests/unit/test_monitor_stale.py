"""MlbuildMonitorStale, evaluated by Prometheus's own rule engine (`promtool test rules`) over
the series the monitor exports: it fires for a monitor that runs but completes no suite run,
including one that never completed any (a wrong --url)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli

TOML = """[project]
name = "p"
[models.digits]
script = "m.py"
[models.digits.validation]
thresholds = { accuracy = 0.9 }
"""

TARGET = {"job": "mlbuild-digits-monitor", "instance": "127.0.0.1:9109", "model": "digits"}


def series(name: str, values: str) -> dict[str, str]:
    labels = ",".join(f'{k}="{v}"' for k, v in TARGET.items())
    return {"series": f"{name}{{{labels}}}", "values": values}


def promtool_test(conf: Path, input_series: list[dict[str, str]], expect: dict[str, bool],
                  interval: str = "15s", evaluation: str = "15s", alert: str = "MlbuildMonitorStale",
                  labels: dict[str, str] = TARGET, annotations: dict[str, str] | None = None) -> None:
    """Whether ``alert`` fires at each evaluation time (`2m`: firing or not), with ``labels`` (the
    series' own that its expression keeps) and the rule's, and ``annotations`` (default: the
    rule's, which must then have no template)."""
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed: `bash .ci/setup` installs Debian's prometheus package")
    rule = next(r for r in json.loads((conf / "alerts.yml").read_text())["groups"][0]["rules"]
                if r["alert"] == alert)
    firing: list[dict[str, Any]] = [{"exp_labels": {**labels, **rule["labels"]},
                                     "exp_annotations": annotations or rule["annotations"]}]
    test = {"rule_files": [str(conf / "alerts.yml")], "evaluation_interval": evaluation,
            "tests": [{"interval": interval, "input_series": input_series,
                       "alert_rule_test": [{"eval_time": at, "alertname": alert,
                                            "exp_alerts": firing if fires else []} for at, fires in expect.items()]}]}
    (conf / "test.yml").write_text(json.dumps(test))
    proc = subprocess.run(["promtool", "test", "rules", str(conf / "test.yml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_monitor_that_never_completed_a_run_is_stale(tree) -> None:  # type: ignore[no-untyped-def]
    """With a wrong --url the last-run series never appears: the rule compared nothing, and no
    alert ever fired."""
    root = tree({"mlbuild.toml": TOML})
    run_cli("monitor", "config", "digits", "--out", str(root / "conf"), cwd=root, env={"PATH": "/nonexistent"})
    # started at time 0 (what promtool's clock starts at), never a completed run: 3 intervals of 60 s
    promtool_test(root / "conf", [series("mlbuild_monitor_start_time_seconds", "0x40"),
                                  series("mlbuild_monitor_server_reachable", "0x40")],
                  {"2m": False, "4m": True})


def test_a_monitor_completing_its_runs_is_not_stale(tree) -> None:  # type: ignore[no-untyped-def]
    root = tree({"mlbuild.toml": TOML})
    run_cli("monitor", "config", "digits", "--out", str(root / "conf"), cwd=root, env={"PATH": "/nonexistent"})
    # a run every 60 s (the last-run timestamp rises 15 s per 15 s sample), then none from 5m
    promtool_test(root / "conf", [series("mlbuild_monitor_start_time_seconds", "0x40"),
                                  series("mlbuild_monitor_last_run_timestamp_seconds", "0 0 0 0 60 60 60 60 120 120 120 "
                                         "120 180 180 180 180 240 240 240 240 300x20")],
                  {"4m": False, "7m": False, "9m": True})


def test_the_monitor_exports_its_start_before_any_run_completes(tmp_path: Path) -> None:
    """What the rule counts from while there is no last run."""
    import time

    from mlbuild.runtime.monitor import Monitor
    from tests.unit.test_monitor_answers import tiny_spec

    before = time.time()
    mon = Monitor(tiny_spec(tmp_path), "http://127.0.0.1:1", None, timeout=2)
    assert "error" in mon.run_once()
    sample = mon.registry.get_sample_value
    assert before <= (sample("mlbuild_monitor_start_time_seconds", {"model": "digits"}) or 0) <= time.time()
    assert sample("mlbuild_monitor_last_run_timestamp_seconds", {"model": "digits"}) is None
    # and its HELP says so: "When the suite last ran" read as a monitor that stopped running
    from prometheus_client import generate_latest

    assert ("# HELP mlbuild_monitor_last_run_timestamp_seconds When a suite run last completed (a run that could "
            "not reach or read the server does not count") in generate_latest(mon.registry).decode()


def stale_expr(root: Path, *args: str) -> str:
    run_cli("monitor", "config", "digits", "--out", str(root / "conf"), *args, cwd=root, env={"PATH": "/nonexistent"})
    rules = json.loads((root / "conf" / "alerts.yml").read_text())["groups"][0]["rules"]
    return str(next(r["expr"] for r in rules if r["alert"] == "MlbuildMonitorStale"))


@pytest.mark.parametrize("args, threshold", [
    ([], "180"),
    (["--interval", "0.001"], "30"),     # wrote `> 0`: always firing (`{3 * interval:.0f}`)
    (["--interval", "0.4", "--scrape-interval", "1s"], "2"),    # wrote `> 1`, under a scrape
    (["--interval", "0.1", "--scrape-interval", "100ms"], "0.3"),
    (["--interval", "5", "--scrape-interval", "2m"], "240"),    # wrote `> 15`: it fired between scrapes
    (["--interval", "90", "--scrape-interval", "1m"], "270"),
])
def test_the_stale_threshold_is_never_under_two_scrapes_nor_rounded_to_0(tree, args: list[str],  # type: ignore[no-untyped-def]
                                                                       threshold: str) -> None:
    root = tree({"mlbuild.toml": TOML})
    assert stale_expr(root, *args).endswith(f") > {threshold}")


def test_a_healthy_monitor_scraped_rarely_is_not_stale(tree) -> None:  # type: ignore[no-untyped-def]
    """Scraped every 2 minutes, a monitor running every 5 s shows a last run up to 2 minutes old."""
    root = tree({"mlbuild.toml": TOML})
    stale_expr(root, "--interval", "5", "--scrape-interval", "2m")
    promtool_test(root / "conf", [series("mlbuild_monitor_start_time_seconds", "0x10"),
                                  series("mlbuild_monitor_last_run_timestamp_seconds", "0+120x10")],
                  {"3m": False, "7m": False, "13m": False}, interval="2m", evaluation="1m")
