"""Live quality: feedback against remembered predictions, rolling metrics, input drift (PSI)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from mlbuild.runtime.serve.live import FeedbackError, LiveQuality, macro_prf, psi


def reference(x: np.ndarray, bins: int = 10) -> dict:
    edges = np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1], axis=0).T
    fractions = [(np.bincount(np.searchsorted(edges[j], x[:, j], side="right"), minlength=bins) / len(x)).tolist()
                 for j in range(x.shape[1])]
    return {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "edges": edges.tolist(), "fractions": fractions}


def sample(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_feedback_metrics() -> None:
    reg = CollectorRegistry()
    live = LiveQuality("m", None, ["a", "b"], reg)
    live.observe("r1", np.zeros((3, 2)), np.array([0, 1, 1]))
    live.observe("r2", np.zeros((1, 2)), np.array([0]))
    out = live.add_feedback({"feedback": [{"id": "r1", "labels": [0, 1, 0]}, {"id": "r2", "labels": ["a"]},
                                          {"id": "gone", "labels": [1]}]})
    assert out == {"matched_rows": 4, "unknown_ids": 1}
    assert sample(reg, "mlbuild_live_metric", model="m", metric="accuracy") == 0.75
    assert sample(reg, "mlbuild_live_feedback_samples", model="m") == 4
    assert sample(reg, "mlbuild_feedback_total", model="m", outcome="unknown_id") == 1
    assert b"mlbuild_live_metric" in generate_latest(reg)


@pytest.mark.parametrize("body,match", [
    ({}, "expected"), ({"feedback": [{"labels": [1]}]}, "id"), ({"feedback": [{"id": "r", "labels": [1, 2]}]}, "row"),
    ({"feedback": [{"id": "r", "labels": ["zebra"]}]}, "not one of"), ({"feedback": [{"id": "r", "labels": [None]}]}, "index"),
])
def test_bad_feedback(body: dict, match: str) -> None:
    live = LiveQuality("m", None, ["a", "b"], CollectorRegistry())
    live.observe("r", np.zeros((1, 2)), np.array([0]))
    with pytest.raises(FeedbackError, match=match):
        live.add_feedback(body)


def test_drift() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(5000, 3))
    reg = CollectorRegistry()
    live = LiveQuality("m", reference(train), None, reg, drift_window=1000)
    live.observe("a", rng.normal(size=(1000, 3)), None)
    live.refresh(force=True)
    assert sample(reg, "mlbuild_input_drift_psi_max", model="m") < 0.05
    shifted = rng.normal(size=(1000, 3))
    shifted[:, 1] += 2.0
    live.observe("b", shifted, None)
    live.refresh(force=True)
    assert sample(reg, "mlbuild_input_drift_psi", model="m", feature="1") > 0.5
    assert sample(reg, "mlbuild_input_drift_mean_shift_max", model="m") > 1.5


labels = st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=60)


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_macro_prf_is_scikit_learns(data: st.DataObject) -> None:
    """The live metrics must be the validation build's metrics (scikit-learn's, zero_division=0)."""
    from sklearn.metrics import precision_recall_fscore_support

    y = data.draw(labels)
    p = data.draw(st.lists(st.integers(min_value=0, max_value=6), min_size=len(y), max_size=len(y)))
    want = precision_recall_fscore_support(y, p, average="macro", zero_division=0)[:3]
    assert macro_prf(np.array(y), np.array(p)) == pytest.approx(want, abs=1e-12)


def psi_loop(x: np.ndarray, edges: np.ndarray, expected: np.ndarray, eps: float = 1e-4) -> list[float]:
    """The per-feature definition: numpy's searchsorted into each feature's edges."""
    out = []
    for j in range(x.shape[1]):
        idx = np.searchsorted(edges[j], x[:, j], side="right")
        actual = np.bincount(idx, minlength=len(expected[j])) / len(x)
        e, a = np.clip(expected[j], eps, None), np.clip(actual, eps, None)
        out.append(float(np.sum((a - e) * np.log(a / e))))
    return out


@given(st.integers(min_value=1, max_value=50), st.integers(min_value=1, max_value=5),
       st.integers(min_value=0, max_value=6), st.integers(min_value=0, max_value=2**32 - 1), st.booleans())
@settings(max_examples=200, deadline=None)
def test_psi_is_the_per_feature_definition(rows: int, features: int, n_edges: int, seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=(rows, features)).astype(np.float64) if ties else rng.normal(size=(rows, features))
    x[rng.random(x.shape) < 0.05] = np.nan
    edges = np.sort(rng.integers(-3, 4, size=(features, n_edges)).astype(np.float64) if ties
                    else rng.normal(size=(features, n_edges)), axis=1)
    expected = rng.dirichlet(np.ones(n_edges + 1), size=features)
    assert psi(x, edges, expected).tolist() == pytest.approx(psi_loop(x, edges, expected), rel=1e-12, abs=1e-12)
