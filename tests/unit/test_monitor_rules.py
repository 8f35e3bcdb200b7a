"""`mlbuild monitor config`: a live-feedback alert only for thresholds the server has a live metric
of; the others are named, as the validation suite's alert is what watches them."""

from __future__ import annotations

import json

from mlbuild.runtime.serve.names import BINARY_METRICS, LABEL_METRICS, live_metric
from tests.conftest import run_cli

TOML = """[project]
name = "p"
[models.cancer]
script = "m.py"
[models.cancer.validation]
thresholds = { accuracy = 0.93, f1 = 0.93, f1_weighted = 0.9, roc_auc = 0.97, mae = "<= 0.3" }
"""


def test_live_alerts_only_for_metrics_the_server_publishes(tree) -> None:  # type: ignore[no-untyped-def]
    root = tree({"mlbuild.toml": TOML})
    proc = run_cli("monitor", "config", "cancer", "--out", str(root / "conf"), cwd=root,
                   env={"PATH": "/nonexistent"})   # no Nix: the files come from mlbuild.toml alone
    rules = json.loads((root / "conf" / "alerts.yml").read_text())["groups"][0]["rules"]
    live = sorted(r["labels"]["metric"] for r in rules if r["alert"] == "MlbuildLiveMetricBelowThreshold")
    assert live == ["accuracy", "f1", "f1_weighted"]
    assert "MlbuildValidationBelowThreshold" in {r["alert"] for r in rules}   # the suite watches all five
    assert "no live-feedback alert for mae, roc_auc" in proc.stderr


def test_live_metric_names() -> None:
    assert all(live_metric(n) for n in (*LABEL_METRICS, *BINARY_METRICS))
    assert not any(live_metric(n) for n in ("roc_auc", "mae", "rmse", "r2", "accuracy_top5"))
