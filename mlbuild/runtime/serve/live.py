"""Live quality of a served model: ground-truth feedback and input drift, as Prometheus metrics.

Feedback: each inference response carries the request's ``id`` (the client's, or one the server
assigns). The server remembers the predicted labels of recent requests (a bounded map); a client
that learns the true labels later posts them::

    POST /v2/models/{name}/feedback
    {"feedback": [{"id": "req-1", "labels": [3, 7]}, ...]}      (one label per row of that request)

and the server keeps a rolling window of (true, predicted) pairs, from which it exports
``mlbuild_live_metric{model,metric}`` (the validation report's metrics that labels give, as
scikit-learn computes them: accuracy, precision/recall/F1 macro and weighted, and for two-class
models class 1's precision/recall/F1; see :mod:`.names`; a regression model's feedback gives true
values, ``{"id": "req-1", "values": [2.5]}``, against its first output: MAE, RMSE, R2) and
``mlbuild_live_feedback_samples{model}``. A body is checked in full before anything is added (a label is a class index 0..K-1 or a class name; one label per row of the
request); a bad one is refused whole. Feedback for a request counts once: a repeat (a client's
retry) replaces that request's labels while they are in the window and is never counted again
(``repeated_rows`` in the answer). The metrics appear only once the window holds
``min_feedback_rows`` rows (100: the accuracy of one row is 0 or 1; of 100, its standard error
is at most 0.05), so that an alert on them does not fire on a handful of rows.

Drift: the inputs of recent requests (a rolling window) are compared with the training data's
statistics saved in the package (``model/reference.json``: per-feature mean, std, decile edges and
fractions): ``mlbuild_input_drift_psi{model,feature}`` (population stability index per feature),
``mlbuild_input_drift_psi_max`` and ``mlbuild_input_drift_mean_shift_max`` (in training standard
deviations), once the window holds ``min_drift_rows`` rows (``mlbuild_input_drift_rows`` says how
many it holds). PSI over few rows is noise: an in-distribution sample of n rows has a PSI of about
(bins - 1) / n per feature (a chi-square over n), and its maximum over 64 features about 21 / n,
so the held-out digits gave a maximum of ~7 at 5 rows and ~1 at 38, against the alert threshold
of 0.2; at 500 rows, ~0.04 (at most 0.07 in 200 draws). Features with no spread in training
(std under 1e-6, reference.json's precision: a constant, such as a digits pixel that is always 0)
are left out of the mean shift, which has no scale for them (the std floored at 1e-6 made any
nonzero live value there a shift of millions of standard deviations); their PSI is over two bins,
the training value and any other (see :func:`psi`): 3% of live rows off that value is a PSI
of ~0.17, 4% ~0.24 (the alert threshold is 0.2).

Both windows are recomputed at most once a second, off the request path, but on
the event loop, so every request in flight waits for it: both are whole-array numpy steps
(:func:`label_metrics`, :func:`psi`), ~2 ms for 1,000 feedback rows and 2,000 input rows of 64
features, where scikit-learn and a loop over the features took ~6 ms.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import uuid
from collections import OrderedDict, deque
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from .protocol import MAX_ID_LENGTH

__all__ = ["LiveQuality", "FeedbackError", "label_metrics", "regression_metrics", "psi", "MIN_FEEDBACK_ROWS", "MIN_DRIFT_ROWS"]

MIN_FEEDBACK_ROWS = 100   # feedback rows before the live metrics are published (see above)
MIN_DRIFT_ROWS = 500      # input rows before the drift gauges are published (see above)
MIN_STD = 1e-6            # a training std below this (reference.json's precision) is no spread


def label_metrics(y: np.ndarray, p: np.ndarray, classes: int | None = None) -> dict[str, float]:
    """The metrics of predictions ``p`` against labels ``y`` (class indices) that labels alone
    give (:data:`.names.LABEL_METRICS`, and :data:`.names.BINARY_METRICS` when ``classes`` is 2),
    as scikit-learn computes them with ``zero_division=0``, which the validation build uses (the
    tests hold the two equal). Macro and weighted averages are over the classes present in ``y``
    or ``p`` (weighted by their count in ``y``); a class never predicted has precision 0, one never
    true recall 0; F1 is 2 tp / (predicted + true). Binary precision, recall and F1 are class 1's."""
    present, inverse = np.unique(np.concatenate([y, p]), return_inverse=True)
    k = len(present)
    yi, pi = inverse[:len(y)], inverse[len(y):]
    tp = np.bincount(yi[yi == pi], minlength=k).astype(np.float64)
    predicted = np.bincount(pi, minlength=k).astype(np.float64)
    true = np.bincount(yi, minlength=k).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(true > 0, tp / true, 0.0)
        f1 = np.where(predicted + true > 0, 2 * tp / (predicted + true), 0.0)
    weights = true / true.sum()
    out = {"accuracy": float(tp.sum() / len(y))}
    for name, per_class in (("precision", precision), ("recall", recall), ("f1", f1)):
        out[f"{name}_macro"] = float(per_class.mean())
        out[f"{name}_weighted"] = float(per_class @ weights)
    if classes == 2:
        one = np.flatnonzero(present == 1)   # class 1 need not be in the window
        for name, per_class in (("precision", precision), ("recall", recall), ("f1", f1)):
            out[name] = float(per_class[one[0]]) if one.size else 0.0
    return out


def regression_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R2 of predictions ``p`` against true values ``y``, as scikit-learn computes
    them for the validation report (R2 of a constant ``y``: 1 if every prediction is exact, else 0)."""
    err = y - p
    ss_res = float(err @ err)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt(ss_res / len(y))), "r2": r2}


def psi(x: np.ndarray, edges: np.ndarray, expected: np.ndarray, eps: float = 1e-4,
        constant: np.ndarray | None = None) -> np.ndarray:
    """Population stability index of each column of ``x`` (rows: samples) against the training
    bins: ``edges[j]`` (sorted, k per feature) cut feature j into k + 1 bins whose training
    fractions are ``expected[j]``. Bin of a value: how many edges are <= it (``searchsorted``
    with side="right"; NaN in the last bin, as there); fractions are clipped at ``eps``.

    ``constant`` (optional; NaN where a feature varied) gives the value of each feature that was
    the same in every training row. Such a feature's training rows all sit in the last bin, with
    every value above them, so a shift up would go unseen: its live values are binned as equal to
    it (the last bin) or not (bin 0, empty in training), a PSI over those two bins."""
    n, f = x.shape
    bins = edges.shape[1] + 1
    idx = np.zeros(x.shape, dtype=np.int64)
    below = np.empty(x.shape, dtype=bool)
    for k in range(bins - 1):   # one pass per edge over all features: ~5x faster than a 3-d compare
        np.less_equal(edges[:, k], x, out=below)
        idx += below
    nan = np.isnan(x)
    if nan.any():
        idx[nan] = bins - 1
    if constant is not None and (cols := np.flatnonzero(~np.isnan(constant))).size:
        same = np.isclose(x[:, cols], constant[cols], rtol=MIN_STD, atol=MIN_STD)  # NaN is not the same
        idx[:, cols] = np.where(same, bins - 1, 0)
    idx += np.arange(f) * bins
    counts = np.bincount(idx.ravel(), minlength=f * bins).reshape(f, bins)
    actual = np.clip(counts / n, eps, None)
    e = np.clip(expected, eps, None)
    out: np.ndarray = np.sum((actual - e) * np.log(actual / e), axis=1)
    return out


class FeedbackError(ValueError):
    """A feedback body the server cannot use (the message says why; answered with 400)."""


class _Labelled:
    """A request's predicted labels, once feedback gave its true labels."""

    __slots__ = ("pred", "truth", "in_window")

    def __init__(self, pred: np.ndarray, truth: np.ndarray) -> None:
        self.pred, self.truth, self.in_window = pred, truth, True


def _rows(entry: np.ndarray | _Labelled) -> int:
    return len(entry.pred if isinstance(entry, _Labelled) else entry)


class LiveQuality:
    def __init__(self, model: str, reference: dict[str, Any] | None, labels: list[str] | None,
                 registry: CollectorRegistry, *, classes: int | None = None, window: int = 1000,
                 remember: int = 10000, remember_rows: int = 1_000_000, drift_window: int = 2000,
                 min_feedback_rows: int = MIN_FEEDBACK_ROWS, min_drift_rows: int = MIN_DRIFT_ROWS, regression: bool = False,
                 output: str | None = "label") -> None:
        self.model = model
        # A regression model's feedback gives true values (numbers), compared with its predicted
        # values; a classifier's gives labels. ``output``: the output whose one value per row is
        # the prediction (None: the model has no such output, and feedback is refused).
        self.regression = regression
        self.output = output
        self.reference = reference
        self.features = len(reference.get("mean", [])) if isinstance(reference, dict) else 0
        self.labels = labels
        self.label_index = {name: i for i, name in reversed(list(enumerate(labels or [])))}
        self.classes = classes if classes is not None else len(labels) if labels else None
        self.window_size = window
        self.window: deque[_Labelled] = deque()   # labelled requests, oldest first
        self.window_rows = 0
        # request id -> predicted labels (an array), or a _Labelled once feedback came for it
        self.predictions: OrderedDict[str, np.ndarray | _Labelled] = OrderedDict()
        self.remember = remember
        self.remember_rows = remember_rows
        self.remembered_rows = 0   # rows of the requests in self.predictions
        self.inputs: deque[np.ndarray] = deque()
        self.input_rows = 0
        self.drift_window = drift_window
        self.min_feedback_rows = min_feedback_rows
        self.min_drift_rows = min_drift_rows
        self.lock = threading.Lock()
        self._dirty = False
        self._last = 0.0
        # Ids for requests that bring none: unique within this process (a counter) and between
        # processes (a random prefix); one os.urandom call per request (uuid4) cost ~4% of the loop.
        self._id_prefix = uuid.uuid4().hex[:16]
        self._next_id = itertools.count(1)
        self.metric = Gauge("mlbuild_live_metric", "Rolling metric of predictions against ground-truth feedback.",
                            ["model", "metric"], registry=registry)
        self.samples = Gauge("mlbuild_live_feedback_samples", "Feedback rows in the rolling window.", ["model"],
                             registry=registry)
        self.feedback = Counter("mlbuild_feedback", "Feedback rows received, by outcome.", ["model", "outcome"],
                                registry=registry)
        self.psi = Gauge("mlbuild_input_drift_psi", "Population stability index of a feature against training.",
                         ["model", "feature"], registry=registry)
        self.psi_max = Gauge("mlbuild_input_drift_psi_max", "Largest per-feature PSI against training.", ["model"],
                             registry=registry)
        self.shift_max = Gauge("mlbuild_input_drift_mean_shift_max",
                               "Largest |live mean - training mean| / training std over features.", ["model"],
                               registry=registry)
        self.drift_rows = Gauge("mlbuild_input_drift_rows",
                                "Input rows in the drift window (the drift gauges appear from "
                                f"{min_drift_rows} rows).", ["model"], registry=registry)
        self.samples.labels(model).set(0)
        if reference is not None:
            self.drift_rows.labels(model).set(0)
        self._ref_arrays: tuple[np.ndarray, ...] | None = None   # the reference, as arrays, once
        self._psi_gauges: list[Any] = []

    # -- called by the app -------------------------------------------------------------------
    def request_id(self, given: Any) -> str:
        if isinstance(given, (str, int)) and str(given):
            return str(given)
        return f"{self._id_prefix}-{next(self._next_id)}"

    def observe_response(self, request_id: str, inputs: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
        """:meth:`observe` a served request from its outputs (the one feedback is compared with)."""
        self.observe(request_id, inputs, outputs.get(self.output) if self.output is not None else None)

    def observe(self, request_id: str, inputs: np.ndarray, predicted: np.ndarray | None) -> None:
        """Remember a request's predicted labels (values, for regression) and inputs (cheap: no
        metric computed here). ``predicted``: the request's ``self.output`` output."""
        with self.lock:
            if predicted is not None:
                pred = np.array(predicted).reshape(-1)   # a copy: no view keeps a batch's outputs alive
                old = self.predictions.pop(request_id, None)
                if old is not None:   # a client's id used again: the new request replaces it
                    self.remembered_rows -= _rows(old)
                self.predictions[request_id] = pred
                self.remembered_rows += len(pred)
                # at most `remember` requests and `remember_rows` rows: 10,000 requests of 32,000
                # rows each held gigabytes
                while len(self.predictions) > 1 and (len(self.predictions) > self.remember
                                                     or self.remembered_rows > self.remember_rows):
                    _, gone = self.predictions.popitem(last=False)
                    self.remembered_rows -= _rows(gone)
            # Rows as the reference has them (save_reference flattens each row: a [1, 8, 8] image
            # is 64 features); rows of another width (a variable-length input) have no reference.
            flat = inputs.reshape(len(inputs), -1) if inputs.ndim >= 2 else None
            if self.reference is not None and flat is not None and flat.shape[1] == self.features:
                self.inputs.append(flat)
                self.input_rows += len(inputs)
                while self.input_rows - len(self.inputs[0]) >= self.drift_window:
                    self.input_rows -= len(self.inputs.popleft())
            self._dirty = True
        self.refresh()

    def add_feedback(self, body: Any) -> dict[str, int]:
        """Add a feedback body, all of it or (FeedbackError) none of it: {"matched_rows": rows
        added, "repeated_rows": rows of requests that had feedback already (their labels are
        replaced while still in the window, never counted again), "unknown_ids": ids not
        remembered (too old, or never served)}."""
        key, what = ("values", "true value") if self.regression else ("labels", "true label")
        if self.output is None:
            raise FeedbackError(f"model {self.model} has no output with one {'value' if self.regression else 'label'} "
                                f"per row to compare feedback with, so it takes none")
        items = body.get("feedback") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise FeedbackError(f'expected {{"feedback": [{{"id": "<request id>", "{key}": [<{what} per row>]}}]}}')
        given: list[tuple[str, np.ndarray]] = []
        for i, item in enumerate(items):
            if isinstance(item, dict) and "values" in item and "labels" in item:   # which one is the truth?
                raise FeedbackError(f"feedback[{i}] gives both values and labels; give {key} alone")
            if isinstance(item, dict) and self.regression and "values" not in item and "labels" in item:
                item = {**item, "values": item["labels"]}   # the classifiers' key, also taken
            if not isinstance(item, dict) or "id" not in item or not isinstance(item.get(key), list):
                raise FeedbackError(f"feedback[{i}] needs an id and a {key} list; got {item!r:.200}")
            request_id = item["id"]
            if not isinstance(request_id, str):
                raise FeedbackError(f"feedback[{i}]: id must be a string (an inference response's id), "
                                    f"got {request_id!r:.50}")
            if len(request_id) > MAX_ID_LENGTH:
                raise FeedbackError(f"feedback[{i}]: id is {len(request_id)} characters long; no request id is "
                                    f"longer than {MAX_ID_LENGTH}")
            if self.regression:
                truth = np.array([self._value(v, i) for v in item[key]], dtype=np.float64)
            else:
                truth = np.array([self._label_index(v, i) for v in item[key]], dtype=np.int64)
            given.append((request_id, truth))
        matched = repeated = unknown = 0
        with self.lock:
            for i, (request_id, truth) in enumerate(given):   # every check before any change
                seen = self.predictions.get(request_id)
                rows = len(seen.pred if isinstance(seen, _Labelled) else seen) if seen is not None else len(truth)
                if rows != len(truth):
                    raise FeedbackError(f"feedback[{i}]: request {request_id!r} had {rows} row(s); feedback gives "
                                        f"{len(truth)} {key[:-1]}(s)")
            for request_id, truth in given:
                seen = self.predictions.get(request_id)
                if seen is None:
                    unknown += 1
                elif isinstance(seen, _Labelled):
                    repeated += len(truth)
                    if seen.in_window:
                        seen.truth = truth
                else:
                    labelled = self.predictions[request_id] = _Labelled(seen, truth)
                    self._append(labelled)
                    matched += len(truth)
            self._dirty = True
        for outcome, count in (("matched", matched), ("repeated", repeated), ("unknown_id", unknown)):
            if count:
                self.feedback.labels(self.model, outcome).inc(count)
        self.refresh(force=True)
        return {"matched_rows": matched, "repeated_rows": repeated, "unknown_ids": unknown}

    def _append(self, labelled: _Labelled) -> None:
        """Add to the window; drop the oldest requests while the rest hold ``window_size`` rows."""
        self.window.append(labelled)
        self.window_rows += len(labelled.pred)
        while self.window_rows - len(self.window[0].pred) >= self.window_size:
            old = self.window.popleft()
            old.in_window = False
            self.window_rows -= len(old.pred)

    @staticmethod
    def _value(v: Any, item: int) -> float:
        """A regression model's true value: a finite number."""
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
        raise FeedbackError(f"feedback[{item}]: value {v!r:.50} is not a finite number; give the true value "
                            f"of each row as a JSON number")

    def _label_index(self, v: Any, item: int) -> int:
        """A true label as a class index: an index 0..K-1, or a class name (or an index as a string)."""
        if isinstance(v, str):
            index = self.label_index.get(v)
            if index is not None:
                return index
            # ASCII digits only: "²" is a digit to isdigit() but not to int(); and int() of
            # 4,300 digits or more raises
            value = int(v) if v.isascii() and v.isdigit() and len(v) < 20 else -1
        else:
            value = v if isinstance(v, int) and not isinstance(v, bool) else -1
        if 0 <= value < (self.classes if self.classes is not None else 1 << 63):
            return value
        if self.classes is None:
            valid = "a class index (an integer >= 0)"
        else:
            valid = f"a class index 0..{self.classes - 1}"
        if self.labels:
            names = ", ".join(repr(name) for name in self.labels[:20]) + (", ..." if len(self.labels) > 20 else "")
            valid += f" or a class name ({names})"
        raise FeedbackError(f"feedback[{item}]: label {v!r:.50} is not one of the model's classes; give {valid}")

    # -- metrics -----------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._dirty or (not force and now - self._last < 1.0):
            return
        with self.lock:
            labelled = [(entry.truth, entry.pred) for entry in self.window]
            chunks = list(self.inputs)
            input_rows = self.input_rows
            self._dirty, self._last = False, now
        rows = 0
        if labelled:   # the last window_size rows (the oldest request may reach further back)
            y = np.concatenate([truth for truth, _ in labelled])[-self.window_size:]
            p = np.concatenate([pred for _, pred in labelled])[-self.window_size:]
            rows = len(y)
        self.samples.labels(self.model).set(rows)
        if rows and rows >= self.min_feedback_rows:
            if self.regression:
                metrics = regression_metrics(y, p.astype(np.float64))
            else:
                metrics = label_metrics(y, p.astype(np.int64), self.classes)
            for name, value in metrics.items():
                self.metric.labels(self.model, name).set(value)
        if self.reference is not None:
            self.drift_rows.labels(self.model).set(input_rows)
            if chunks and input_rows >= min(self.min_drift_rows, self.drift_window):
                self._drift(np.concatenate(chunks).astype(np.float64))

    def _drift(self, x: np.ndarray) -> None:
        ref = self.reference
        assert ref is not None
        if self._ref_arrays is None:
            std = np.asarray(ref["std"], dtype=np.float64)
            mean = np.asarray(ref["mean"], dtype=np.float64)
            spread = std >= MIN_STD
            self._ref_arrays = (np.asarray(ref["edges"], dtype=np.float64),
                                np.asarray(ref["fractions"], dtype=np.float64),
                                mean, std, spread, np.where(spread, np.nan, mean))
        edges, expected, mean, std, spread, constant = self._ref_arrays
        if x.shape[1] != len(edges):
            return
        psis = psi(x, edges, expected, constant=constant)
        if len(self._psi_gauges) != len(psis):
            self._psi_gauges = [self.psi.labels(self.model, str(j)) for j in range(len(psis))]
        for gauge, value in zip(self._psi_gauges, psis.tolist()):
            gauge.set(value)
        self.psi_max.labels(self.model).set(float(psis.max()))
        if spread.any():   # features constant in training have no std to measure a shift in
            shift = np.abs(x.mean(0)[spread] - mean[spread]) / std[spread]
            self.shift_max.labels(self.model).set(float(shift.max()))
