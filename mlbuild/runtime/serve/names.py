"""What the server's live metrics are called, for the driver's alert rules (``mlbuild monitor
config``) as much as for the server: no imports, so the driver reads it without the toolchain.

The server computes live metrics from the labels it predicted and the true labels that feedback
gives; these are the validation report's metrics (``mlbuild/runtime/validate.py``) that need
nothing else. Those that need scores (``roc_auc``) or a regression model's values (``mae``,
``rmse``, ``r2``) have no live counterpart: the validation suite run against the live server
(``mlbuild monitor``) covers them.
"""

from __future__ import annotations

__all__ = ["LABEL_METRICS", "BINARY_METRICS", "live_metric"]

LABEL_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro",
                 "precision_weighted", "recall_weighted", "f1_weighted")
BINARY_METRICS = ("precision", "recall", "f1")   # of class 1, for two-class models (as the report)


def live_metric(name: str) -> bool:
    """Whether the server can publish ``mlbuild_live_metric{metric=name}`` (for a model it fits)."""
    return name in LABEL_METRICS or name in BINARY_METRICS
