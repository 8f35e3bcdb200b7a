"""What the server's live metrics are called, for the driver's alert rules (``mlbuild monitor
config``) as much as for the server: no imports, so the driver reads it without the toolchain.

The server computes live metrics from what it predicted and the ground truth that feedback gives:
for a classifier, the validation report's metrics (``mlbuild/runtime/validate.py``) that labels
alone give; for a regression model, its MAE, RMSE and R2. Those that need scores (``roc_auc``)
have no live counterpart: the validation suite run against the live server (``mlbuild monitor``)
covers them.
"""

from __future__ import annotations

__all__ = ["LABEL_METRICS", "BINARY_METRICS", "REGRESSION_METRICS", "PROBE_HEADER", "live_metric"]

LABEL_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro",
                 "precision_weighted", "recall_weighted", "f1_weighted")
BINARY_METRICS = ("precision", "recall", "f1")   # of class 1, for two-class models (as the report)
REGRESSION_METRICS = ("mae", "rmse", "r2")       # from true values, for regression models

# A request with this header is a probe, not traffic: `mlbuild monitor` sends the validation suite
# with it (mlbuild/runtime/monitor.py), and the server leaves it out of the live windows, where
# the held-out rows, sent every interval, would fill the drift window at low traffic and hide drift.
PROBE_HEADER = "mlbuild-probe"


def live_metric(name: str) -> bool:
    """Whether the server can publish ``mlbuild_live_metric{metric=name}`` (for a model it fits)."""
    return name in LABEL_METRICS or name in BINARY_METRICS or name in REGRESSION_METRICS
