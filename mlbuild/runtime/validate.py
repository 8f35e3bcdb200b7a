"""Builders of the validation: a metrics report on the *package*, and the threshold gate.

The report loads the model the way the server does (``serve.package.load_package`` and
``serve.model.load_model``: same weights check, same pre- and post-processing), runs the
project's suite over the held-out dataset and computes metrics with scikit-learn:
accuracy, precision, recall and F1 (macro, weighted and per class), the confusion matrix,
ROC-AUC for binary models; MAE, RMSE and R2 for regression. The suite's content hash is its
version, so a metric change caused by a suite change is visible as such.

The suite (project code) defines::

    def load(data: pathlib.Path) -> tuple[numpy.ndarray, numpy.ndarray]
        # held-out inputs, as the server receives them, and the true targets

The gate reads the report and fails the build, listing every metric with its value and
threshold, when one is not met. Thresholds live only in the gate, so changing a threshold never
recomputes the metrics.
"""

from __future__ import annotations

import decimal
import hashlib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from .hashing import dataset_hash, tree_digest, tree_hashes
from .stagespec import load_spec

__all__ = ["main", "gate_main", "compute_metrics", "class_count", "class_targets", "check_finite", "check_thresholds", "format_checks", "check_text", "shown"]


def class_targets(y: Any, labels: list[str] | None, classes: int | None = None) -> Any:
    """A classifier's true targets as class indices 0..K-1, as the model's ``label`` output gives
    them: class names (``labels``, as feedback takes them) become their indices. ValueError, naming
    the value, for a name or index the model does not have (scikit-learn raised "Mix of label input
    types" for names; an index off by one scored a silent 0)."""
    import numpy as np

    a = np.asarray(y)
    k = len(labels) if labels else classes
    indices = f"class indices 0..{k - 1}" if k else "class indices 0..K-1"
    values = a.ravel().tolist()
    if a.dtype.kind in "US" or (a.dtype.kind == "O" and values and all(isinstance(v, str) for v in values)):
        if not labels:
            raise ValueError(f"target {values[0]!r}, a class name, but the model declares none "
                             f"(ctx.describe(labels=[...]) in training); give {indices}")
        index = {name: i for i, name in reversed(list(enumerate(labels)))}
        bad = [v for v in values if v not in index]
        if bad:
            shown = ", ".join(map(repr, labels[:10])) + (", ..." if len(labels) > 10 else "")
            raise ValueError(f"target {bad[0]!r}, which is not one of the model's classes ({shown}); give "
                             f"{indices} or the class names ctx.describe(labels=...) declared")
        return np.array([index[v] for v in values], dtype=np.int64).reshape(a.shape)
    if a.dtype.kind == "f" and a.size:
        whole = np.isfinite(a) & (a == np.round(a))
        if not whole.all():
            raise ValueError(f"target {float(a[~whole].ravel()[0])!r}, which is not a class index; give {indices}")
        a = a.astype(np.int64)
    if a.dtype.kind in "iu" and k and a.size and (a.min() < 0 or a.max() >= k):
        raise ValueError(f"target {int(a.min() if a.min() < 0 else a.max())}, which is not one of the model's {k} "
                         f"classes; give {indices} (numbered from 0) or the class names")
    return a


def class_count(labels: Any, outputs: Any) -> int | None:
    """A classifier's number of classes, as the server counts them: its class names, else the
    fixed width of its ``probabilities`` output (``outputs``: config.json's ``{name, shape}``
    objects or the package's TensorSpecs); None if neither says."""
    if labels:
        return len(labels)
    for o in outputs or ():
        name, shape = (o.get("name"), o.get("shape")) if isinstance(o, dict) else (o.name, o.shape)
        if name == "probabilities" and isinstance(shape, (list, tuple)) and len(shape) == 2 and shape[1] > 0:
            return int(shape[1])
    return None


def compute_metrics(task: str, y_true: Any, y_pred: Any, proba: Any = None,
                    labels: list[str] | None = None, classes: int | None = None) -> dict[str, Any]:
    """Every metric of the report, computed by scikit-learn. ``classes``: the model's number of
    classes where it declares no names (its ``probabilities`` output's width), else None.

    The macro and weighted averages are scikit-learn's defaults: over the classes that occur in
    the targets or the predictions (a class with neither has no precision, recall or F1: counted
    as 0, a perfect model's recall_macro was 0.9 on held-out data without one of its 10 classes),
    as the server's live metrics are. A class never predicted has precision 0, one never true
    recall 0 (``zero_division=0``, scikit-learn's value): ``notes`` says which. With two classes
    (the model's), plain ``precision``, ``recall``, ``f1`` are the positive class's, class 1 (the
    second name), ``positive_class`` in the report; ``roc_auc`` needs both classes in the targets,
    else it is left out (``undefined`` says why) rather than NaN."""
    import numpy as np
    from sklearn import metrics as m

    if task == "regression":
        return _regression(y_true, y_pred)
    k = len(labels) if labels else classes
    width: tuple[int, ...] = np.shape(proba) if proba is not None else ()
    if not k and len(width) == 2 and width[1] > 0:
        # a model without labels= declares probabilities of shape [-1, -1]: their width is its class count.
        # Without it a 10-class model whose held-out data held classes 0 and 1 was scored as binary
        # (class 1's precision, roc_auc of column 1)
        k = int(width[1])
    y_true = np.asarray(class_targets(y_true, labels, k))
    if y_true.ndim > 1 and y_true.size != len(y_true):   # scikit-learn: "a mix of multilabel-indicator and multiclass"
        rows = y_true.reshape(len(y_true), -1)
        if y_true.ndim == 2 and np.isin(rows, (0, 1)).all() and (rows.sum(1) != 1).any():
            # y.argmax(axis=1), which the one-hot advice named, keeps the first of a row's labels only
            bad = int(np.flatnonzero(rows.sum(1) != 1)[0])
            raise ValueError(f"targets of shape {list(y_true.shape)} whose rows mark several classes or none (row "
                             f"{bad}: {rows[bad].tolist()[:10]}): multi-label targets, but a classifier served by "
                             "mlbuild gives one class a row; train a binary classifier per label (its targets one "
                             "column, y[:, j]), or give one class index or name a row")
        raise ValueError(f"targets of shape {list(y_true.shape)}, but a classifier's are one class index or name a "
                         "row (one-hot rows: return y.argmax(axis=1))")
    y_true = y_true.reshape(len(y_true))
    y_pred = np.asarray(y_pred).ravel()
    present = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    every = list(range(k)) if k else present
    names = labels or [str(c) for c in every]
    out: dict[str, Any] = {"metrics": {"accuracy": float(m.accuracy_score(y_true, y_pred))}}
    for avg in ("macro", "weighted"):
        p, r, f, _ = m.precision_recall_fscore_support(y_true, y_pred, labels=present, average=avg, zero_division=0)
        out["metrics"].update({f"precision_{avg}": float(p), f"recall_{avg}": float(r), f"f1_{avg}": float(f)})
    p, r, f, s = m.precision_recall_fscore_support(y_true, y_pred, labels=every, zero_division=0)
    out["per_class"] = {names[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                                   "support": int(s[i])} for i in range(len(every))}
    out["confusion_matrix"] = m.confusion_matrix(y_true, y_pred, labels=every).tolist()
    out["labels"] = names
    predicted, support = set(y_pred.tolist()), dict(zip(every, s.tolist()))
    notes = []
    for has_samples, is_predicted, says in (   # the classes whose precision or recall is undefined
            (False, False, "no held-out samples and {is_} never predicted: left out of the macro averages "
                           "(scikit-learn's default); give held-out data of every class for their recall"),
            (False, True, "no held-out samples but {is_} predicted: recall 0 (undefined, zero_division=0) in the "
                          "macro averages"),
            (True, False, "held-out samples but {is_} never predicted: precision 0 (undefined, zero_division=0)")):
        them = [names[i] for i, c in enumerate(every)
                if bool(support[c]) == has_samples and (c in predicted) == is_predicted]
        if them:
            notes.append(f"{_classes(them)} {'has' if len(them) == 1 else 'have'} "
                         + says.format(is_="is" if len(them) == 1 else "are"))
    binary = k == 2 if k else present == [0, 1]
    if binary:
        p1, r1, f1, _ = m.precision_recall_fscore_support(y_true, y_pred, labels=[1], average=None, zero_division=0)
        out["metrics"].update({"precision": float(p1[0]), "recall": float(r1[0]), "f1": float(f1[0])})
        out["positive_class"] = names[1] if len(names) > 1 else "1"
        if proba is not None:
            if len(set(y_true.tolist())) == 2:
                out["metrics"]["roc_auc"] = float(m.roc_auc_score(y_true, np.asarray(proba)[:, 1]))
            else:
                out["undefined"] = {"roc_auc": f"the held-out targets hold one class only ({names[int(y_true[0])]!r}), "
                                               "and ROC-AUC needs both" if len(y_true) else "no held-out targets"}
    if notes:
        out["notes"] = notes
    return out


def _regression(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """MAE, RMSE and R2. Targets that are not finite numbers are a ValueError naming the first
    (scikit-learn's was a bare "Input contains NaN"); R2 of fewer than two targets is undefined and
    left out (scikit-learn's was NaN, which metrics.json cannot hold as JSON); R2 of constant targets
    is scikit-learn's 0 (1 for exact predictions), and a note says it is undefined."""
    import numpy as np
    from sklearn import metrics as m

    y_true = np.asarray(y_true, float)
    if y_true.ndim > 1 and y_true.size == len(y_true):   # a column of targets
        y_true = y_true.reshape(len(y_true))
    bad = np.flatnonzero(~np.isfinite(y_true.reshape(len(y_true), -1)).all(axis=1)) if y_true.size else np.array([], int)
    if len(bad):
        row = y_true.reshape(len(y_true), -1)[bad[0]].tolist()
        more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
        raise ValueError(f"target {row[0] if len(row) == 1 else row!r} in row {int(bad[0])}{more}, which is not a "
                         "finite number; a regression model's targets are finite numbers: drop or fix such rows in load()")
    y_pred = np.asarray(y_pred, float)
    if y_pred.size != y_true.size:   # numpy's "cannot reshape array of size 150 into shape (150,3)"
        per_row = y_pred.size // max(len(y_pred), 1)
        what = "one value a row" if per_row == 1 else f"{per_row} values a row"
        fix = ("give one target a row (y[:, j] for target j: mlbuild serves one target a model, so train a model "
               "per target)" if per_row == 1 else f"give {per_row} targets a row, one per predicted value")
        raise ValueError(f"targets of shape {list(y_true.shape)}, but the model predicts {what} "
                         f"(shape {list(y_pred.shape)}); {fix}")
    y_pred = y_pred.reshape(y_true.shape)
    out: dict[str, Any] = {"metrics": {"mae": float(m.mean_absolute_error(y_true, y_pred)),
                                       "rmse": float(np.sqrt(m.mean_squared_error(y_true, y_pred)))}}
    if len(y_true) < 2:
        out["undefined"] = {"r2": f"{len(y_true)} held-out target(s): R2 needs two or more"}
    else:
        out["metrics"]["r2"] = float(m.r2_score(y_true, y_pred))
        if (y_true == y_true.flat[0]).all():
            out["notes"] = [f"every held-out target is {float(y_true.flat[0])!r}: R2 is undefined (no variance); "
                            f"scikit-learn's {out['metrics']['r2']:g} is reported (1 only for exact predictions)"]
    return out


def _classes(names: list[str]) -> str:
    """``class '9'`` or ``classes '8', '9'`` (ten at most shown)."""
    shown = ", ".join(map(repr, names[:10])) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return f"class {shown}" if len(names) == 1 else f"classes {shown}"


def main() -> None:
    spec = load_spec()
    out = Path(os.environ["out"])
    out.mkdir()
    import numpy as np

    from .prepare import load_module
    from .serve.model import InputRefused, load_model
    from .serve.package import ServeError, load_package

    suite = load_module(spec["suite"], spec["script"])
    x, y = suite.load(Path(spec["dataset"]["path"]))
    if len(x) != len(y):   # scikit-learn's "inconsistent numbers of samples", or a reshape error, after inference
        raise SystemExit(f"mlbuild: validation of {spec['name']}: load() in {spec['script']} gives {len(x)} input "
                         f"rows but {len(y)} targets; give one target per row")
    if not len(y):   # no outputs to score: KeyError 'label' (StopIteration for a regression model)
        raise SystemExit(f"mlbuild: validation of {spec['name']}: load() in {spec['script']} gives no rows; the metrics "
                         "need held-out rows and their targets")
    outputs: dict[str, list[Any]] = {}
    try:   # the server's own loading and inference: what fails here would fail the server too
        pkg = load_package(spec["package"])
        if pkg.task == "classification":
            try:
                y = class_targets(y, list(pkg.labels) if pkg.labels else None, class_count(pkg.labels, pkg.outputs))
            except ValueError as e:
                raise SystemExit(f"mlbuild: validation of {spec['name']}: load() in {spec['script']} gives {e}") from None
        rows = served_rows(x, pkg.input, f"mlbuild: validation of {spec['name']}", spec["script"])
        model = load_model(pkg, threads=1)
        for i in range(0, len(rows), 256):
            for k, v in model.run(rows[i:i + 256]).items():
                outputs.setdefault(k, []).append(v)
    except InputRefused as e:   # the package serves; the suite's rows are what the server would refuse
        row = next((j for j in range(i, min(i + 256, len(rows))) if _refused(model, rows[j:j + 1])), i)
        raise SystemExit(f"mlbuild: validation of {spec['name']}: preprocess refuses row {row} of the held-out "
                         f"inputs (load() in {spec['script']}), as the server would with a 400: "
                         f"{e.message.removeprefix('preprocess refused the input: ')}; make load() return inputs "
                         "preprocess takes, or let preprocess take them") from None
    except ServeError as e:
        raise SystemExit(f"mlbuild: validation of {spec['name']}: the package cannot serve: {e}") from None
    merged = {k: np.concatenate(v) for k, v in outputs.items()}
    check_finite(merged, spec["name"])
    task = pkg.task
    labels = list(pkg.labels) if pkg.labels else None
    try:
        if task == "classification":
            report = compute_metrics(task, y, merged["label"], merged.get("probabilities"), labels,
                                     class_count(pkg.labels, pkg.outputs))
        else:
            report = compute_metrics(task, y, next(iter(merged.values())))
    except ValueError as e:
        raise SystemExit(f"mlbuild: validation of {spec['name']}: load() in {spec['script']} gives {e}") from None
    for note in report.get("notes", []) + [f"{k} is left out: {v}" for k, v in report.get("undefined", {}).items()]:
        print(f"mlbuild: validation of {spec['name']}: note: {note}", file=sys.stderr)
    code = tree_hashes(Path(spec["suite"]))
    report.update({
        "model": spec["name"], "task": task, "n": int(len(y)),
        "heldout": {"sha256": heldout_hash(x, y)},   # the samples scored (the dataset may hold more)
        "package": spec["package"], "model_hash": pkg.hashes.get("model"),
        "dataset": {"name": spec["dataset_name"], **_dataset_hash(pkg.manifest, spec)},
        "suite": {"script": spec["script"], "files": code,
                  "version": tree_digest(code)[:16]},
    })
    (out / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    np.save(out / "predictions.npy", np.asarray(merged.get("label", next(iter(merged.values())))), allow_pickle=False)


def check_finite(outputs: dict[str, Any], name: str) -> None:
    """Refuse outputs holding NaN or infinity (a training that diverged): scikit-learn's metrics
    fail on them with a bare "Input contains NaN", or, for a label taken from NaN scores, score a
    guess; the message says how many rows and where to look."""
    import numpy as np

    for key, values in sorted(outputs.items()):
        a = np.asarray(values)
        if a.dtype.kind not in "fc" or not a.size:
            continue
        bad = int((~np.isfinite(a.reshape(len(a), -1))).any(axis=1).sum())
        if bad:
            raise SystemExit(f"mlbuild: validation of {name}: the model's output {key!r} holds NaN or infinity for "
                             f"{bad} of {len(a)} held-out rows, so it has no metrics: a training that diverged (its "
                             "loss in the training log, metrics.json) or a model that overflows; fix the training "
                             "(a lower learning rate, say) or the model")


def _refused(model: Any, row: Any) -> bool:
    from .serve.model import InputRefused

    try:
        model.run(row)
    except InputRefused:
        return True
    except Exception:   # another failure: not this one
        return False
    return False


def served_rows(x: Any, spec: Any, who: str, script: str) -> Any:
    """The suite's inputs as the server would take them (``spec``: the package's input): a shape or
    kind of value a request could not have is refused as the server refuses it (a 400), naming
    both sides; the rest is cast to the input's datatype, as the server casts a request's data."""
    import numpy as np

    try:
        arr = np.asarray(x)
    except ValueError:   # numpy's "inhomogeneous shape": rows of token ids of several lengths, say
        lengths = [len(r) if hasattr(r, "__len__") else None for r in x]
        other = next((i for i, n in enumerate(lengths) if n != lengths[0]), None)
        if other is None:
            raise
        first, then = lengths[0], lengths[other]   # None: a number, not a row ("row 1 has None")
        rows = (f"row 0 has {'one number' if first is None else f'{first} values'}, row {other} has "
                f"{'one number' if then is None else then}")
        if -1 not in list(spec.shape)[1:]:   # a fixed width: padding would feed the model made-up values
            raise SystemExit(f"{who}: load() in {script} gives rows of different lengths ({rows}), but the model takes "
                             f"{spec.name!r} rows of shape {list(spec.shape)[1:]}: fix or drop the rows of another "
                             f"shape in load()") from None
        raise SystemExit(f"{who}: load() in {script} gives rows of different lengths ({rows}), but the suite's rows go "
                         f"to the model in batches, as one request's rows, which must be one length: pad them to one "
                         f"length in load() (a padding id the model ignores, such as an Embedding's padding_idx)") from None
    want, got = list(spec.shape), list(arr.shape)
    if len(got) != len(want) or any(w != -1 and w != g for w, g in zip(want[1:], got[1:])):
        raise SystemExit(f"{who}: load() in {script} gives inputs of shape {got}, but the model takes {spec.name!r} "
                         f"of shape {want} (-1: any size), and the server refuses requests of that shape (a 400): "
                         f"make load() return rows of the model's shape (e.g. x.reshape(len(x), "
                         f"{', '.join(str(d) for d in want[1:])})), or fix ctx.describe(input_shape=...) in training")
    from .serve.protocol import accepted_kinds

    allowed, needs = accepted_kinds(spec.datatype)
    if arr.dtype.kind not in allowed:
        raise SystemExit(f"{who}: load() in {script} gives inputs of {arr.dtype}, but the model takes {spec.name!r} "
                         f"as {spec.datatype}, which needs {needs}, and the server refuses such data (a 400): "
                         f"return {spec.datatype} values from load() (e.g. x.astype(numpy.{np.dtype(spec.dtype).name})), "
                         f"or fix ctx.describe(datatype=...) in training")
    if np.dtype(spec.dtype).kind in "iu" and arr.size:   # 300 as INT8 would wrap to 44: the server refuses it
        info = np.iinfo(spec.dtype)
        low, high = arr.min(), arr.max()
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise SystemExit(f"{who}: load() in {script} gives inputs out of range for {spec.datatype} "
                             f"({info.min}..{info.max}): {bad}; the server refuses such rows (a 400): fix them in "
                             f"load(), or declare a wider datatype in ctx.describe")
    with np.errstate(all="ignore"):
        cast = arr.astype(spec.dtype, copy=False)
    if cast.dtype.kind == "f" and not np.isfinite(cast).all():   # the server refuses such a request (400)
        row = int(np.flatnonzero(~np.isfinite(cast.reshape(len(cast), -1)).all(axis=1))[0])
        raise SystemExit(f"{who}: load() in {script} gives inputs holding NaN or infinity (or a number beyond "
                         f"{spec.datatype}'s range, which becomes infinity), first in row {row}; the server refuses "
                         "such rows (a 400): drop or fix them in load()")
    return cast


def heldout_hash(x: Any, y: Any) -> str:
    """sha256 of the held-out samples the suite loaded: each array's dtype, shape and bytes. The
    split's dataset hash changes with its training rows too; this one only with what is scored."""
    import numpy as np

    h = hashlib.sha256()
    for a in (np.ascontiguousarray(x), np.ascontiguousarray(y)):
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes() if a.dtype != object else repr(a.tolist()).encode())
    return h.hexdigest()


def _dataset_hash(manifest: dict[str, Any], spec: dict[str, Any]) -> dict[str, str]:
    """The held-out dataset's hash: the training's record of it when the model trained on the
    same dataset (the usual split: same project, same evaluation, same store path), which saves
    reading the whole split again; else computed."""
    known = manifest.get("datasets", {}).get(spec["dataset_name"])
    if isinstance(known, dict) and set(known) == {"sha256", "of"}:
        return {"sha256": str(known["sha256"]), "of": str(known["of"])}
    return dataset_hash(spec["dataset"])


_OPS = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, ">": lambda v, t: v > t, "<": lambda v, t: v < t}
# Relative difference below which a metric equals its threshold: a mean of k fractions is off by at
# most ~k ulps (1e-13 for a thousand classes), two different fractions of a million samples by 1e-12.
EQUAL_WITHIN = 1e-12
_RULE = re.compile(r"\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*")


# Error metrics, better lower: a bare number (">= it") as their threshold would pass every model
# worse than it and fail the better ones, so it is refused (nix/project.nix keeps the same list).
LOWER_IS_BETTER = ("mae", "rmse", "mse", "mape", "loss", "log_loss")
# Metrics that are fractions 0..1: a threshold above 1 (`accuracy = 90`, a percent) fails every model.
FRACTIONS = ("accuracy", "balanced_accuracy", "roc_auc")
FRACTION_PREFIXES = ("precision", "recall", "f1")
# Scores whose best is 1 but that may be negative (r2): a threshold above 1 fails every model too.
AT_MOST_ONE = ("r2",)


def is_fraction(name: str) -> bool:
    return name in FRACTIONS or name.split("_", 1)[0] in FRACTION_PREFIXES


def parse_threshold(name: str, rule: Any) -> tuple[str, float]:
    """``0.95`` -> (">=", 0.95); ``"<= 0.3"`` -> ("<=", 0.3); anything else, or a bare number for
    a metric that is better lower: ValueError naming it (nix/project.nix refuses the same values
    when it reads mlbuild.toml)."""
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        if name in LOWER_IS_BETTER:
            raise ValueError(f"threshold {name} = {rule}: a bare number means {name} >= {rule}, but {name} is "
                             f"better lower; write {name} = \"<= {rule}\"")
        op, value = ">=", float(rule)
    else:
        match = _RULE.fullmatch(rule) if isinstance(rule, str) else None
        if match is None:
            raise ValueError(f"threshold {name} = {rule!r}: use a number (the metric must be >= it) or "
                             f"a string '<op> number' with op one of {', '.join(_OPS)} (e.g. '<= 0.3')")
        op, value = match[1], float(match[2])
    if is_fraction(name) and op in (">=", ">") and value > 1:
        raise ValueError(f"threshold {name} = {rule!r}: {name} is a fraction from 0 to 1, so no model can "
                         f"reach it; write {name} = {value / 100:g} for {value:g}%")
    if name in AT_MOST_ONE and (op == ">=" and value > 1 or op == ">" and value >= 1):
        raise ValueError(f"threshold {name} = {rule!r}: {name} is at most 1 (a perfect fit), so no model can "
                         f"reach it; use a value below 1, e.g. {name} = 0.9")
    return op, value


def check_thresholds(metrics: dict[str, float], thresholds: dict[str, Any]) -> list[dict[str, Any]]:
    """``{"accuracy": 0.95, "rmse": "<= 0.3"}`` -> one check per metric (a bare number means >=)."""
    checks = []
    for name, rule in sorted(thresholds.items()):
        try:
            op, value = parse_threshold(name, rule)
        except ValueError as e:
            raise SystemExit(f"mlbuild: {e}") from None
        got = metrics.get(name)
        # a metric that is the threshold up to float rounding is the threshold: recalls 17/20 and 19/20
        # average to 0.9, which scikit-learn's mean gives as 0.8999999999999999 (the gate failed >= 0.9)
        ok = got is not None and (op in (">=", "<=") if math.isclose(got, value, rel_tol=EQUAL_WITHIN, abs_tol=1e-15)
                                  else _OPS[op](got, value))
        checks.append({"metric": name, "value": got, "op": op, "threshold": value, "ok": ok})
    return checks


def shown(value: float, digits: int = 4) -> str:
    """A metric for a table: ``digits`` decimals, or as many significant digits where decimals
    would hide it (an MAE of 0.00004 read 0.0000) or run long (an RMSE of 1.2e9)."""
    v = float(value)
    if v == 0 or not math.isfinite(v) or 1e-3 <= abs(v) < 1e6:
        return f"{v:.{digits}f}"
    return f"{v:.{digits}g}"


def check_text(c: dict[str, Any]) -> str:
    """A check's value with the digits that show why it passed or failed: 0.94996 read 0.9500 in
    the table, "0.9500 >= 0.95 FAILED" (and in `mlbuild validate` and `exp run`, which show checks too)."""
    for digits in range(4, 18):
        text = shown(c["value"], digits)
        if _OPS[c["op"]](float(text), c["threshold"]) == c["ok"]:
            return text
    return repr(float(c["value"]))


def format_checks(checks: list[dict[str, Any]]) -> str:
    lines = [f"  {'metric':<20} {'value':>8}   threshold"]
    for c in checks:
        value = "missing" if c["value"] is None else check_text(c)
        lines.append(f"  {c['metric']:<20} {value:>8}   {c['op']} {c['threshold']:<8} {'ok' if c['ok'] else 'FAILED'}")
    return "\n".join(lines)


def _example_threshold(metrics: dict[str, float]) -> str:
    """A threshold line that this report's suite can be gated on, in the form its direction needs:
    accuracy, else the first score, else the first error metric, at this model's own value."""
    scores = sorted(k for k in metrics if k not in LOWER_IS_BETTER)
    first = "accuracy" if "accuracy" in metrics else (scores or sorted(metrics))[0]
    # three significant digits, rounded the way the model still passes: down for a score, up for an error
    exact = decimal.Decimal(repr(float(metrics[first])))
    if exact.is_finite() and exact != 0:
        step = decimal.Decimal(1).scaleb(exact.adjusted() - 2)
        exact = exact.quantize(step, rounding=decimal.ROUND_CEILING if first in LOWER_IS_BETTER else decimal.ROUND_FLOOR)
    value = format(exact.normalize(), "f")
    rule = f'"<= {value}"' if first in LOWER_IS_BETTER else value
    return f"thresholds = {{ {first} = {rule} }} (this model's {first}; set the value the model must reach)"


def gate_main() -> None:
    spec = load_spec()
    report = json.loads((Path(spec["report"]) / "metrics.json").read_text())
    if not spec["thresholds"]:
        # A gate with nothing to check would pass every model, and the image depends on it passing.
        print(f"mlbuild: validation of {spec['name']} has no thresholds, so it would pass any model; set at "
              f"least one in [models.{spec['name']}.validation], e.g. {_example_threshold(report['metrics'])}. "
              f"The suite reports: {', '.join(sorted(report['metrics']))}", file=sys.stderr)
        raise SystemExit(1)
    checks = check_thresholds(report["metrics"], spec["thresholds"])
    table = format_checks(checks)
    if not all(c["ok"] for c in checks):
        failed = ", ".join(c["metric"] for c in checks if not c["ok"])
        missing = [c["metric"] for c in checks if c["value"] is None]
        undefined = report.get("undefined", {})
        unknown = [name for name in missing if name not in undefined]
        hint = "".join(f"\n  {name}: undefined for this held-out data: {undefined[name]}"
                       for name in missing if name in undefined)
        hint += (f"\n  {', '.join(unknown)}: no such metric in the report; the suite reports "
                 f"{', '.join(sorted(report['metrics']))} (fix the name in [models.{spec['name']}.validation].thresholds)"
                 if unknown else "")
        print(f"mlbuild: validation of {spec['name']} failed ({failed}); suite version "
              f"{report['suite']['version']}:\n{table}{hint}", file=sys.stderr)
        raise SystemExit(1)
    print(f"mlbuild: validation of {spec['name']} passed:\n{table}", file=sys.stderr)
    out = Path(os.environ["out"])
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({**report, "gate": {"passed": True, "checks": checks}},
                                                 indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
