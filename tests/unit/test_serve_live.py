"""Live quality: feedback against remembered predictions, rolling metrics, input drift (PSI)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from mlbuild.runtime.serve.live import FeedbackError, LiveQuality, label_metrics, psi, regression_metrics
from mlbuild.runtime.serve.names import BINARY_METRICS, LABEL_METRICS


def reference(x: np.ndarray, bins: int = 10) -> dict:
    edges = np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1], axis=0).T
    fractions = [(np.bincount(np.searchsorted(edges[j], x[:, j], side="right"), minlength=bins) / len(x)).tolist()
                 for j in range(x.shape[1])]
    return {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "edges": edges.tolist(), "fractions": fractions}


def sample(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_feedback_metrics() -> None:
    reg = CollectorRegistry()
    live = LiveQuality("m", None, ["a", "b"], reg, min_feedback_rows=1)
    live.observe("r1", np.zeros((3, 2)), np.array([0, 1, 1]))
    live.observe("r2", np.zeros((1, 2)), np.array([0]))
    out = live.add_feedback({"feedback": [{"id": "r1", "labels": [0, 1, 0]}, {"id": "r2", "labels": ["a"]},
                                          {"id": "gone", "labels": [1]}]})
    assert out == {"matched_rows": 4, "repeated_rows": 0, "unknown_ids": 1}
    assert sample(reg, "mlbuild_live_metric", model="m", metric="accuracy") == 0.75
    assert sample(reg, "mlbuild_live_feedback_samples", model="m") == 4
    assert sample(reg, "mlbuild_feedback_total", model="m", outcome="unknown_id") == 1
    assert b"mlbuild_live_metric" in generate_latest(reg)


@pytest.mark.parametrize("body,match", [
    ({}, "expected"), ({"feedback": [{"labels": [1]}]}, "id"), ({"feedback": [{"id": "r", "labels": [1, 0]}]}, "row"),
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
    live = LiveQuality("m", reference(train), None, reg, drift_window=1000, min_drift_rows=1000)
    live.observe("a", rng.normal(size=(1000, 3)), None)
    live.refresh(force=True)
    assert sample(reg, "mlbuild_input_drift_psi_max", model="m") < 0.05
    shifted = rng.normal(size=(1000, 3))
    shifted[:, 1] += 2.0
    live.observe("b", shifted, None)
    live.refresh(force=True)
    assert sample(reg, "mlbuild_input_drift_psi", model="m", feature="1") > 0.5
    assert sample(reg, "mlbuild_input_drift_mean_shift_max", model="m") > 1.5


@given(st.data(), st.sampled_from([2, 7]))
@settings(max_examples=300, deadline=None)
def test_label_metrics_are_scikit_learns(data: st.DataObject, classes: int) -> None:
    """The live metrics must be the validation build's metrics (scikit-learn's, zero_division=0)."""
    from sklearn import metrics as m

    values = st.integers(min_value=0, max_value=classes - 1)
    y = data.draw(st.lists(values, min_size=1, max_size=60))
    p = data.draw(st.lists(values, min_size=len(y), max_size=len(y)))
    got = label_metrics(np.array(y), np.array(p), classes)
    want = {"accuracy": m.accuracy_score(y, p)}
    for avg in ("macro", "weighted"):
        pr, rc, f1, _ = m.precision_recall_fscore_support(y, p, average=avg, zero_division=0)
        want.update({f"precision_{avg}": pr, f"recall_{avg}": rc, f"f1_{avg}": f1})
    if classes == 2:
        want.update(precision=m.precision_score(y, p, zero_division=0), recall=m.recall_score(y, p, zero_division=0),
                    f1=m.f1_score(y, p, zero_division=0))
    assert got == pytest.approx(want, abs=1e-12)
    assert set(got) == set(LABEL_METRICS) | (set(BINARY_METRICS) if classes == 2 else set())


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


def ten_classes(reg: CollectorRegistry | None = None, **kw: int) -> LiveQuality:
    """A 10-class model (class names "0".."9", as the digits package), one request "r" of 2 rows."""
    live = LiveQuality("m", None, [str(i) for i in range(10)], reg or CollectorRegistry(), min_feedback_rows=1, **kw)
    live.observe("r", np.zeros((2, 2)), np.array([3, 4]))
    return live


@pytest.mark.parametrize("label", [99, -3, 10, "-3", "10", 10**23, -(10**23), "\u00b2", "3.0", 3.0, True, None, [3]])
def test_labels_must_be_the_models_classes(label: object) -> None:
    reg = CollectorRegistry()
    live = ten_classes(reg)
    with pytest.raises(FeedbackError) as err:
        live.add_feedback({"feedback": [{"id": "r", "labels": [3, label]}]})
    message = str(err.value)
    assert repr(label)[:20] in message and "0..9" in message, message
    assert sample(reg, "mlbuild_live_feedback_samples", model="m") == 0   # nothing was added
    live.refresh(force=True)   # and nothing broke: 10**23 made refresh() raise OverflowError
    assert b"mlbuild_live_feedback_samples" in generate_latest(reg)


def test_labels_by_index_or_name() -> None:
    reg = CollectorRegistry()
    live = LiveQuality("m", None, ["cat", "dog", "eel"], reg, min_feedback_rows=1)
    live.observe("r", np.zeros((3, 2)), np.array([0, 1, 2]))
    assert live.add_feedback({"feedback": [{"id": "r", "labels": [0, "dog", "2"]}]})["matched_rows"] == 3
    assert sample(reg, "mlbuild_live_metric", model="m", metric="accuracy") == 1.0
    with pytest.raises(FeedbackError, match=r"'ant'.*0\.\.2 or a class name.*'cat', 'dog', 'eel'"):
        live.add_feedback({"feedback": [{"id": "r", "labels": [0, 1, "ant"]}]})


def test_labels_without_class_names() -> None:
    live = LiveQuality("m", None, None, CollectorRegistry(), classes=3, min_feedback_rows=1)
    live.observe("r", np.zeros((1, 2)), np.array([2]))
    with pytest.raises(FeedbackError, match=r"3 .*0\.\.2"):
        live.add_feedback({"feedback": [{"id": "r", "labels": [3]}]})
    assert live.add_feedback({"feedback": [{"id": "r", "labels": ["2"]}]})["matched_rows"] == 1
    unknown = LiveQuality("m", None, None, CollectorRegistry(), min_feedback_rows=1)  # class count unknown
    unknown.observe("r", np.zeros((1, 2)), np.array([2]))
    with pytest.raises(FeedbackError, match="100000000000000000000000"):
        unknown.add_feedback({"feedback": [{"id": "r", "labels": [10**23]}]})
    assert unknown.add_feedback({"feedback": [{"id": "r", "labels": [7]}]})["matched_rows"] == 1


def test_feedback_is_all_or_nothing() -> None:
    reg = CollectorRegistry()
    live = ten_classes(reg)
    live.observe("s", np.zeros((1, 2)), np.array([5]))
    bad = {"feedback": [{"id": "s", "labels": [5]}, {"id": "r", "labels": [3]}]}   # r has 2 rows
    with pytest.raises(FeedbackError, match=r"feedback\[1\].*'r' had 2 row"):
        live.add_feedback(bad)
    bad = {"feedback": [{"id": "s", "labels": [5]}, {"id": "unknown", "labels": [11]}]}
    with pytest.raises(FeedbackError, match="11"):
        live.add_feedback(bad)
    assert sample(reg, "mlbuild_live_feedback_samples", model="m") == 0
    assert sample(reg, "mlbuild_feedback_total", model="m", outcome="matched") in (None, 0)
    assert live.add_feedback({"feedback": [{"id": "s", "labels": [5]}]})["matched_rows"] == 1


def test_feedback_for_a_request_counts_once() -> None:
    """Retries (the same feedback posted again) are not counted again; new labels replace old ones."""
    reg = CollectorRegistry()
    live = ten_classes(reg)
    body = {"feedback": [{"id": "r", "labels": [3, 0]}]}
    assert live.add_feedback(body) == {"matched_rows": 2, "repeated_rows": 0, "unknown_ids": 0}
    for _ in range(4):
        assert live.add_feedback(body) == {"matched_rows": 0, "repeated_rows": 2, "unknown_ids": 0}
    assert sample(reg, "mlbuild_live_feedback_samples", model="m") == 2
    assert sample(reg, "mlbuild_live_metric", model="m", metric="accuracy") == 0.5
    live.add_feedback({"feedback": [{"id": "r", "labels": [3, 4]}]})   # corrected labels replace the old
    assert sample(reg, "mlbuild_live_feedback_samples", model="m") == 2
    assert sample(reg, "mlbuild_live_metric", model="m", metric="accuracy") == 1.0
    assert sample(reg, "mlbuild_feedback_total", model="m", outcome="repeated") == 10
    # the same id twice in one body: the last labels win, the rows count once
    live.observe("t", np.zeros((1, 2)), np.array([1]))
    out = live.add_feedback({"feedback": [{"id": "t", "labels": [0]}, {"id": "t", "labels": [1]}]})
    assert out == {"matched_rows": 1, "repeated_rows": 1, "unknown_ids": 0}
    assert sample(reg, "mlbuild_live_feedback_samples", model="m") == 3
    assert sample(reg, "mlbuild_live_metric", model="m", metric="accuracy") == 1.0


def test_repeated_feedback_is_not_counted_after_it_left_the_window() -> None:
    reg = CollectorRegistry()
    live = LiveQuality("m", None, ["a", "b"], reg, window=4, min_feedback_rows=1)
    for i in range(6):
        live.observe(f"r{i}", np.zeros((1, 2)), np.array([0]))
        live.add_feedback({"feedback": [{"id": f"r{i}", "labels": [0 if i < 2 else 1]}]})
    assert sample(reg, "mlbuild_live_feedback_samples", model="m") == 4
    assert sample(reg, "mlbuild_live_metric", model="m", metric="accuracy") == 0.0   # r2..r5: all wrong
    assert live.add_feedback({"feedback": [{"id": "r0", "labels": [0]}]})["repeated_rows"] == 1
    assert sample(reg, "mlbuild_live_metric", model="m", metric="accuracy") == 0.0   # r0 did not come back
    # an id reused by a later request is that request's id: its feedback is new
    live.observe("r0", np.zeros((1, 2)), np.array([1]))
    assert live.add_feedback({"feedback": [{"id": "r0", "labels": [1]}]})["matched_rows"] == 1
    assert sample(reg, "mlbuild_live_metric", model="m", metric="accuracy") == 0.25


def test_live_metrics_wait_for_enough_feedback() -> None:
    """One feedback row is accuracy 0 or 1: no metric (so no alert) until min_feedback_rows."""
    reg = CollectorRegistry()
    live = LiveQuality("m", None, ["a", "b"], reg, min_feedback_rows=100)
    live.observe("one", np.zeros((1, 2)), np.array([0]))
    live.add_feedback({"feedback": [{"id": "one", "labels": [1]}]})
    assert sample(reg, "mlbuild_live_feedback_samples", model="m") == 1
    assert sample(reg, "mlbuild_live_metric", model="m", metric="accuracy") is None
    assert "mlbuild_live_metric{" not in generate_latest(reg).decode()
    live.observe("many", np.zeros((99, 2)), np.zeros(99, dtype=np.int64))
    live.add_feedback({"feedback": [{"id": "many", "labels": [0] * 99}]})
    assert sample(reg, "mlbuild_live_metric", model="m", metric="accuracy") == 0.99
    assert LiveQuality("m", None, None, CollectorRegistry()).min_feedback_rows == 100   # the default


def test_ids_are_length_limited() -> None:
    live = ten_classes()
    with pytest.raises(FeedbackError, match="257 characters.*256"):
        live.add_feedback({"feedback": [{"id": "x" * 257, "labels": [1]}]})
    with pytest.raises(FeedbackError, match="id must be a string"):
        live.add_feedback({"feedback": [{"id": 5, "labels": [1]}]})


def digits_reference() -> tuple[dict, np.ndarray]:
    """Digits scaled to [0, 1] (several pixels are always 0 in training), its reference, held-out rows."""
    from tests.unit.conftest_serve import digits_split

    x_train, _, x_test, _ = digits_split()
    return reference(x_train.astype(np.float64)), x_test


def test_drift_waits_for_enough_rows() -> None:
    """PSI of a handful of in-distribution rows is noise (5 rows: ~7, 38 rows: ~1, against an alert
    threshold of 0.2); the drift gauges appear once the window holds min_drift_rows rows."""
    ref, x_test = digits_reference()
    reg = CollectorRegistry()
    live = LiveQuality("m", ref, None, reg)
    assert live.min_drift_rows == 500
    live.observe("a", x_test[:38], None)
    live.refresh(force=True)
    text = generate_latest(reg).decode()
    assert "mlbuild_input_drift_psi_max{" not in text and "mlbuild_input_drift_psi{" not in text
    assert "mlbuild_input_drift_mean_shift_max{" not in text
    assert sample(reg, "mlbuild_input_drift_rows", model="m") == 38
    rows = np.concatenate([x_test, x_test])[38:500]
    live.observe("b", rows, None)
    live.refresh(force=True)
    assert sample(reg, "mlbuild_input_drift_rows", model="m") == 500
    assert sample(reg, "mlbuild_input_drift_psi_max", model="m") < 0.2   # held-out digits: no drift


def test_mean_shift_skips_features_constant_in_training() -> None:
    """A pixel that is always 0 in training has no spread: its std floored at 1e-6 made any live
    value a shift of ~1e5..1e7 standard deviations. Such features are left out of the mean shift."""
    ref, x_test = digits_reference()
    assert 0.0 in ref["std"]
    reg = CollectorRegistry()
    live = LiveQuality("m", ref, None, reg, min_drift_rows=1)
    x = x_test.astype(np.float64).copy()
    x[:, int(np.argmin(ref["std"]))] = 0.0625   # one unit of the 0..16 pixel scale
    live.observe("a", x, None)
    live.refresh(force=True)
    assert sample(reg, "mlbuild_input_drift_mean_shift_max", model="m") < 1.0
    shifted = x.copy()
    shifted[:, 20] += 3 * ref["std"][20]
    live.observe("b", np.concatenate([shifted] * 6), None)   # the window is then mostly shifted rows
    live.refresh(force=True)
    assert sample(reg, "mlbuild_input_drift_mean_shift_max", model="m") > 2.0


def test_a_feature_constant_in_training_that_moves_is_drift() -> None:
    """A digits pixel that is 0 in every training row sat in the top PSI bin with every value above
    it: live rows lit there were invisible to the PSI (and the mean shift leaves it out). Its PSI
    is over two bins, the training value and any other."""
    ref, x_test = digits_reference()
    j = int(np.argmin(ref["std"]))
    assert ref["std"][j] == 0.0
    x = np.concatenate([x_test] * 2)[:600].astype(np.float64)
    x[:, j] = ref["mean"][j]
    reg = CollectorRegistry()
    live = LiveQuality("m", ref, None, reg, drift_window=600, min_drift_rows=600)
    live.observe("a", x, None)
    live.refresh(force=True)
    assert sample(reg, "mlbuild_input_drift_psi", model="m", feature=str(j)) == pytest.approx(0.0, abs=1e-9)
    lit = x.copy()
    lit[:60, j] = 16.0   # 10% of the window, above everything training saw there
    live.observe("b", lit, None)
    live.refresh(force=True)
    assert sample(reg, "mlbuild_input_drift_psi", model="m", feature=str(j)) > 0.5
    assert sample(reg, "mlbuild_input_drift_psi_max", model="m") > 0.5


@pytest.mark.parametrize(("share", "low", "high"), [(0.03, 0.15, 0.2), (0.04, 0.2, 0.26)])
def test_constant_feature_psi_is_the_two_bin_definition(share: float, low: float, high: float) -> None:
    edges = np.zeros((1, 9))
    expected = np.array([[0.0] * 9 + [1.0]])
    x = np.zeros((1000, 1))
    x[: int(share * 1000), 0] = 1.0
    assert psi(x, edges, expected).item() == pytest.approx(0.0)             # without: unseen
    assert low < psi(x, edges, expected, constant=np.array([0.0])).item() < high
    x[:5, 0] = np.nan
    assert psi(x, edges, expected, constant=np.array([np.nan])).item() == pytest.approx(0.0)  # not constant


@given(st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)), min_size=2, max_size=60))
@settings(max_examples=200, deadline=None)
def test_regression_metrics_are_scikit_learns(pairs: list[tuple[float, float]]) -> None:
    from sklearn import metrics as m

    y, p = (np.array(v, dtype=np.float64) for v in zip(*pairs))
    want = {"mae": m.mean_absolute_error(y, p), "rmse": np.sqrt(m.mean_squared_error(y, p)), "r2": m.r2_score(y, p)}
    assert regression_metrics(y, p) == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_regression_feedback_gives_live_mae_rmse_r2() -> None:
    reg = CollectorRegistry()
    live = LiveQuality("price", None, None, reg, regression=True, output="value", min_feedback_rows=4)
    live.observe("a", np.zeros((3, 2)), np.array([[1.0], [2.0], [3.0]]))
    live.observe("b", np.zeros((1, 2)), np.array([[5.0]]))
    assert live.add_feedback({"feedback": [{"id": "a", "values": [1.5, 2.0, 2.0]}]})["matched_rows"] == 3
    assert "mlbuild_live_metric{" not in generate_latest(reg).decode()   # 3 rows: under the minimum
    assert live.add_feedback({"feedback": [{"id": "b", "labels": [5]}]})["matched_rows"] == 1   # "labels" too
    assert sample(reg, "mlbuild_live_metric", model="price", metric="mae") == pytest.approx(0.375)
    assert sample(reg, "mlbuild_live_metric", model="price", metric="rmse") == pytest.approx(np.sqrt(1.25 / 4))
    assert sample(reg, "mlbuild_live_metric", model="price", metric="r2") == pytest.approx(
        1 - 1.25 / float(((np.array([1.5, 2, 2, 5]) - 2.625) ** 2).sum()))
    assert sample(reg, "mlbuild_live_metric", model="price", metric="accuracy") is None


@pytest.mark.parametrize(("value", "shown"), [("2.5", "'2.5'"), (True, "True"), (None, "None"),
                                              (float("nan"), "nan"), (float("inf"), "inf")])
def test_regression_feedback_refuses_what_is_not_a_finite_number(value: Any, shown: str) -> None:
    live = LiveQuality("price", None, None, CollectorRegistry(), regression=True, output="value")
    live.observe("a", np.zeros((2, 2)), np.array([1.0, 2.0]))
    with pytest.raises(FeedbackError, match=rf"feedback\[0\]: value {re.escape(shown)} is not a finite number"):
        live.add_feedback({"feedback": [{"id": "a", "values": [1.0, value]}]})
    with pytest.raises(FeedbackError, match=r'"values": \[<true value per row>\]'):
        live.add_feedback({"feedback": []})
    assert live.add_feedback({"feedback": [{"id": "a", "values": [1, 2.5]}]})["matched_rows"] == 2  # nothing was kept
    # both keys: one was silently ignored
    with pytest.raises(FeedbackError, match=r"feedback\[0\] gives both values and labels; give values alone"):
        live.add_feedback({"feedback": [{"id": "a", "values": [1, 2], "labels": [3, 4]}]})


def test_a_model_without_a_per_row_prediction_takes_no_feedback() -> None:
    live = LiveQuality("multi", None, None, CollectorRegistry(), regression=True, output=None)
    with pytest.raises(FeedbackError, match="model multi has no output with one value per row"):
        live.add_feedback({"feedback": [{"id": "a", "values": [1.0]}]})


def test_remembered_predictions_are_bounded_by_rows_too() -> None:
    """10,000 remembered requests of 32,000 rows each held gigabytes."""
    live = LiveQuality("m", None, ["a", "b"], CollectorRegistry(), remember=100, remember_rows=1000)
    big = np.zeros(400, np.int64)
    for i in range(10):
        live.observe(f"r{i}", np.zeros((400, 2)), big)
    assert list(live.predictions) == ["r8", "r9"] and live.remembered_rows == 800
    live.observe("r9", np.zeros((1, 2)), np.array([1]))     # an id used again: replaced, counted once
    assert live.remembered_rows == 401
    assert live.add_feedback({"feedback": [{"id": "r9", "labels": ["b"]}]})["matched_rows"] == 1
    huge = np.zeros(5000, np.int64)     # one request over the bound: still remembered, alone
    live.observe("big", np.zeros((5000, 2)), huge)
    assert list(live.predictions) == ["big"] and live.remembered_rows == 5000
