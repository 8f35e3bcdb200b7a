"""The validation's metric and threshold logic (pure functions of the runtime)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from mlbuild.runtime.serve.live import label_metrics

from mlbuild.runtime.validate import (_example_threshold, check_thresholds, class_count, class_targets, compute_metrics, format_checks, gate_main, shown,
                                      parse_threshold)


def test_binary_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    proba = np.clip(y * 0.6 + rng.random(200) * 0.5, 0, 1)
    pred = (proba > 0.5).astype(int)
    r = compute_metrics("classification", y, pred, np.column_stack([1 - proba, proba]), ["neg", "pos"])
    assert r["metrics"]["f1"] == skm.f1_score(y, pred)
    assert r["metrics"]["roc_auc"] == skm.roc_auc_score(y, proba)
    assert r["metrics"]["recall_macro"] == skm.recall_score(y, pred, average="macro")
    assert r["per_class"]["pos"]["support"] == int((y == 1).sum())
    assert r["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()


@given(st.data(), st.sampled_from([2, 3, 10]), st.booleans())
@settings(max_examples=300, deadline=None)
def test_label_metrics_are_scikit_learn_s_defaults_and_the_server_s(data: st.DataObject, classes: int,
                                                                    named: bool) -> None:
    """Every label metric of the report is what scikit-learn computes by default on the same
    predictions (the classes that occur in either), and what the server's live metrics give for the
    same feedback, whichever classes the held-out data lacks (a perfect model's recall_macro was
    0.9 where one of 10 classes had no held-out sample)."""
    values = st.integers(min_value=0, max_value=classes - 1)
    y = data.draw(st.lists(values, min_size=1, max_size=40))
    p = data.draw(st.lists(values, min_size=len(y), max_size=len(y)))
    labels = [f"c{i}" for i in range(classes)] if named else None
    got = compute_metrics("classification", np.array(y), np.array(p), None, labels, classes)["metrics"]
    want = {"accuracy": skm.accuracy_score(y, p)}
    for avg in ("macro", "weighted"):
        pr, rc, f1, _ = skm.precision_recall_fscore_support(y, p, average=avg, zero_division=0)
        want.update({f"precision_{avg}": pr, f"recall_{avg}": rc, f"f1_{avg}": f1})
    if classes == 2:
        pr, rc, f1, _ = skm.precision_recall_fscore_support(y, p, labels=[1], average=None, zero_division=0)
        want.update(precision=pr[0], recall=rc[0], f1=f1[0])
    assert got == pytest.approx(want, abs=1e-12)
    assert got == pytest.approx(label_metrics(np.array(y), np.array(p), classes), abs=1e-12)


def test_a_class_the_held_out_data_lacks_is_noted_not_scored_zero() -> None:
    y = np.arange(90) % 9   # class 9 has no held-out sample; the model is perfect
    r = compute_metrics("classification", y, y, None, [str(i) for i in range(10)])
    assert r["metrics"]["recall_macro"] == r["metrics"]["f1_macro"] == r["metrics"]["precision_macro"] == 1.0
    assert r["per_class"]["9"]["support"] == 0 and len(r["confusion_matrix"]) == 10
    assert r["notes"] == ["class '9' has no held-out samples and is never predicted: left out of the macro "
                          "averages (scikit-learn's default); give held-out data of every class for their recall"]
    r = compute_metrics("classification", np.array([0, 1, 0, 1, 2]), np.array([0, 0, 0, 0, 2]), None, ["a", "b", "c"])
    assert r["notes"] == ["class 'b' has held-out samples but is never predicted: precision 0 (undefined, "
                          "zero_division=0)"]
    assert r["metrics"]["precision_macro"] == pytest.approx(0.5)


def test_a_model_without_class_names_is_scored_over_its_own_classes() -> None:
    # a 3-class model whose held-out data holds classes 0 and 2: "pos_label=1 is not a valid label"
    # (a traceback); with 0 and 1 only, it was scored as a binary model, ROC-AUC of column 1 and all
    assert class_count(None, [{"name": "label", "shape": [-1]}, {"name": "probabilities", "shape": [-1, 3]}]) == 3
    assert class_count(["a", "b"], []) == 2 and class_count(None, [{"name": "label", "shape": [-1]}]) is None
    proba = np.full((4, 3), 1 / 3)
    for y, p in (([0, 2, 0, 2], [0, 2, 2, 2]), ([0, 1, 0, 1], [0, 1, 2, 1])):
        r = compute_metrics("classification", np.array(y), np.array(p), proba, None, 3)
        assert not {"precision", "recall", "f1", "roc_auc"} & set(r["metrics"])
        assert r["labels"] == ["0", "1", "2"] and len(r["confusion_matrix"]) == 3
        assert r["metrics"]["f1_macro"] == pytest.approx(skm.f1_score(y, p, average="macro"))


def test_roc_auc_of_held_out_data_with_one_class_is_left_out_not_nan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    r = compute_metrics("classification", np.array([1, 1, 1, 1]), np.array([1, 0, 1, 1]),
                        np.array([[0.2, 0.8]] * 4), ["malignant", "benign"])
    assert "roc_auc" not in r["metrics"] and r["positive_class"] == "benign"
    assert r["undefined"] == {"roc_auc": "the held-out targets hold one class only ('benign'), and ROC-AUC needs both"}
    assert r["metrics"]["precision"] == 1.0 and r["metrics"]["recall"] == 0.75
    json.loads(json.dumps(r), parse_constant=lambda c: pytest.fail(f"{c} in the report"))
    report = tmp_path / "report"
    report.mkdir()
    (report / "metrics.json").write_text(json.dumps({**r, "suite": {"version": "abc"}}))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"version": 1, "name": "cancer", "report": str(report),
                                "thresholds": {"roc_auc": 0.9, "accuracy": 0.5}}))
    monkeypatch.setenv("specPath", str(spec))
    monkeypatch.setenv("out", str(tmp_path / "out"))
    with pytest.raises(SystemExit):
        gate_main()
    err = capsys.readouterr().err
    assert ("roc_auc: undefined for this held-out data: the held-out targets hold one class only ('benign'), "
            "and ROC-AUC needs both") in err
    assert "no such metric" not in err


LABELS = ["horizontal bar", "vertical bar", "diagonal ✓"]


def test_a_suite_may_give_class_names_as_feedback_may() -> None:
    # scikit-learn raised "Mix of label input types (string and number)", a traceback in the build
    names = np.array(["diagonal ✓", "horizontal bar", "vertical bar", "diagonal ✓"])
    r = compute_metrics("classification", names, np.array([2, 0, 1, 1]), None, LABELS)
    assert r["metrics"]["accuracy"] == 0.75 and r["per_class"]["diagonal ✓"]["support"] == 2
    assert class_targets(np.array([0.0, 2.0]), LABELS).tolist() == [0, 2]


@pytest.mark.parametrize(("targets", "labels", "classes", "message"), [
    # numbered from 1: scored a silent accuracy of 0 (or worse, a plausible one for many classes)
    ([1, 2, 3], LABELS, None, "target 3, which is not one of the model's 3 classes; give class indices 0..2 "
                              "(numbered from 0) or the class names"),
    ([0, -1], None, 3, "target -1, which is not one of the model's 3 classes; give class indices 0..2"),
    (["diagonal"], LABELS, None, "target 'diagonal', which is not one of the model's classes ('horizontal bar', "
                                 "'vertical bar', 'diagonal ✓'); give class indices 0..2 or the class names"),
    (["a"], None, None, "target 'a', a class name, but the model declares none (ctx.describe(labels=[...]) in "
                        "training); give class indices 0..K-1"),
    ([0.0, 1.5], LABELS, None, "target 1.5, which is not a class index; give class indices 0..2"),
])
def test_targets_the_model_cannot_have_are_named(targets: list, labels: list | None, classes: int | None,
                                                 message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        class_targets(np.array(targets), labels, classes)


def test_regression_metrics() -> None:
    y, p = np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 2.0])
    r = compute_metrics("regression", y, p)["metrics"]
    assert r["mae"] == skm.mean_absolute_error(y, p) and r["r2"] == skm.r2_score(y, p)
    assert r["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, p)))


def test_thresholds() -> None:
    checks = check_thresholds({"accuracy": 0.96, "rmse": 0.4}, {"accuracy": 0.95, "rmse": "<= 0.3", "f1": 0.9})
    by = {c["metric"]: c for c in checks}
    assert by["accuracy"]["ok"] and not by["rmse"]["ok"] and not by["f1"]["ok"]
    text = format_checks(checks)
    assert "rmse" in text and "<= 0.3" in text and "FAILED" in text and "missing" in text
    with pytest.raises(SystemExit, match="threshold"):
        check_thresholds({"a": 1.0}, {"a": "~ 3"})


@pytest.mark.parametrize("rule, parsed", [(0.9, (">=", 0.9)), (1, (">=", 1.0)), ("<= 0.3", ("<=", 0.3)),
                                          ("<=0.3", ("<=", 0.3)), (" > 1e-3 ", (">", 0.001)), ("<.5", ("<", 0.5))])
def test_threshold_forms(rule: object, parsed: tuple[str, float]) -> None:
    assert parse_threshold("m", rule) == parsed


@pytest.mark.parametrize("rule", ["high", ">= abc", "=< 0.3", "0.9", True, [0.9], ""])
def test_a_bad_threshold_is_named_not_a_traceback(rule: object) -> None:
    # "high" and "<=0.3" raised IndexError, ">= abc" ValueError, from inside the gate's build
    with pytest.raises(ValueError, match=r"threshold m = .*use a number"):
        parse_threshold("m", rule)
    with pytest.raises(SystemExit, match=r"mlbuild: threshold m = "):
        check_thresholds({"m": 1.0}, {"m": rule})


def _failing_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metrics: dict[str, float],
                  thresholds: dict[str, object]) -> None:
    """Run the gate of model iris over a report of ``metrics``; it must fail (SystemExit)."""
    report = tmp_path / "report"
    report.mkdir()
    (report / "metrics.json").write_text(json.dumps({"metrics": metrics, "suite": {"version": "abc"}}))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"version": 1, "name": "iris", "report": str(report), "thresholds": thresholds}))
    monkeypatch.setenv("specPath", str(spec))
    monkeypatch.setenv("out", str(tmp_path / "out"))
    with pytest.raises(SystemExit):
        gate_main()


def test_the_gate_names_a_threshold_for_a_metric_the_suite_does_not_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _failing_gate(tmp_path, monkeypatch, {"accuracy": 0.97, "f1_macro": 0.96}, {"acuracy": 0.9})
    err = capsys.readouterr().err
    assert "acuracy: no such metric in the report; the suite reports accuracy, f1_macro" in err
    assert "[models.iris.validation].thresholds" in err
    assert not (tmp_path / "out").exists()


def test_a_gate_without_thresholds_fails_naming_the_metrics(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`thresholds = { }` (or none) would pass any model and let its image build."""
    _failing_gate(tmp_path, monkeypatch, {"accuracy": 0.2, "f1_macro": 0.1}, {})
    err = capsys.readouterr().err
    assert "validation of iris has no thresholds, so it would pass any model" in err
    assert "[models.iris.validation], e.g. thresholds = { accuracy = 0.2 } (this model's accuracy" in err
    assert "The suite reports: accuracy, f1_macro" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("metrics, example", [
    ({"mae": 1.875, "r2": 0.912, "rmse": 2.3}, "r2 = 0.912"),          # a score before the error metrics
    ({"mae": 1.875, "rmse": 2.3}, 'mae = "<= 1.88"'),                  # an error metric: "<=", not a bare number
    ({"f1_macro": 0.5, "precision_macro": 0.4}, "f1_macro = 0.5"),
    ({"accuracy": 0.9689}, "accuracy = 0.968"),                        # rounded down: 0.969 failed the model
    ({"r2": -0.20913}, "r2 = -0.21"),                                  # down, below zero too
    ({"mae": 1234.5}, 'mae = "<= 1240"'),                              # an error rounds up
    ({"accuracy": 1.0}, "accuracy = 1"),
])
def test_the_empty_gate_example_is_a_threshold_the_gate_accepts(metrics: dict[str, float], example: str) -> None:
    """The example for a regression model was `mae = 0.9`, which the gate itself refuses (a bare
    number for an error metric); then `accuracy = 0.969` for a model of 0.9689, which it fails."""
    text = _example_threshold(metrics)
    assert text.startswith(f"thresholds = {{ {example} }}")
    name, _, rule = example.partition(" = ")
    assert parse_threshold(name, json.loads(rule))[1] == pytest.approx(float(rule.strip('"<= ')))
    assert all(c["ok"] for c in check_thresholds(metrics, {name: json.loads(rule)}))   # the model passes it


@pytest.mark.parametrize("rule", [1.5, ">= 1.01", "> 1", 90])
def test_an_r2_above_one_is_refused(rule: object) -> None:
    with pytest.raises(ValueError, match=r"r2 is at most 1 \(a perfect fit\), so no model can reach it"):
        parse_threshold("r2", rule)
    assert parse_threshold("r2", 1) == (">=", 1.0) and parse_threshold("r2", -0.5) == (">=", -0.5)
    assert parse_threshold("r2", "<= 1.5") == ("<=", 1.5)


@pytest.mark.parametrize("name", ["mae", "rmse", "log_loss"])
def test_a_bare_number_for_an_error_metric_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=rf'threshold {name} = 60: a bare number means {name} >= 60, but {name} is '
                                         rf'better lower; write {name} = "<= 60"'):
        parse_threshold(name, 60)
    assert parse_threshold(name, "<= 60") == ("<=", 60.0)
    assert parse_threshold("r2", 0.5) == (">=", 0.5)


@pytest.mark.parametrize("name, rule", [("accuracy", 90), ("f1_macro", "> 95"), ("precision", 85), ("roc_auc", ">= 80")])
def test_a_percent_for_a_fraction_metric_is_refused(name: str, rule: object) -> None:
    with pytest.raises(ValueError, match=rf"{name} is a fraction from 0 to 1, so no model can reach it; write {name} = 0\.[89]"):
        parse_threshold(name, rule)
    assert parse_threshold(name, 0.9) == (">=", 0.9) and parse_threshold("mae", "<= 90") == ("<=", 90.0)
    assert parse_threshold(name, "<= 1") == ("<=", 1.0)


def test_the_suite_s_inputs_are_checked_and_cast_as_the_server_takes_a_request() -> None:
    """Validation ran the model on the suite's arrays as they came: a CNN fed [N, 64] rows gave a
    torch traceback, and float rows for an INT64 model passed though the server refuses them."""
    import numpy as np

    from mlbuild.runtime.serve.package import TensorSpec
    from mlbuild.runtime.validate import served_rows

    cnn = TensorSpec("input", "FP32", (-1, 1, 8, 8))
    with pytest.raises(SystemExit) as e:
        served_rows(np.zeros((5, 64)), cnn, "mlbuild: validation of cnn", "validate.py")
    assert str(e.value.code) == (
        "mlbuild: validation of cnn: load() in validate.py gives inputs of shape [5, 64], but the model takes "
        "'input' of shape [-1, 1, 8, 8] (-1: any size), and the server refuses requests of that shape (a 400): "
        "make load() return rows of the model's shape (e.g. x.reshape(len(x), 1, 8, 8)), or fix "
        "ctx.describe(input_shape=...) in training")
    rows = served_rows(np.zeros((5, 1, 8, 8)), cnn, "v", "validate.py")
    assert rows.dtype == np.float32 and rows.shape == (5, 1, 8, 8)   # float64 -> the server's FP32
    tokens = TensorSpec("tokens", "INT64", (-1, -1))
    with pytest.raises(SystemExit, match=r"gives inputs of float32, but the model takes 'tokens' as INT64, which "
                                         r"needs integers.*x\.astype\(numpy\.int64\)"):
        served_rows(np.zeros((2, 6), np.float32), tokens, "v", "validate.py")
    assert served_rows(np.arange(12, dtype=np.int32).reshape(2, 6), tokens, "v", "validate.py").dtype == np.int64
    assert served_rows(np.ones((2, 1, 8, 8), np.int64), cnn, "v", "validate.py").dtype == np.float32
    # token ids of several lengths: numpy's "inhomogeneous shape" traceback
    with pytest.raises(SystemExit, match=re.escape(
            "v: load() in validate.py gives rows of different lengths (row 0 has 3 values, row 2 has 5), but the "
            "suite's rows go to the model in batches, as one request's rows, which must be one length: pad them")):
        served_rows([np.arange(3), np.arange(3), np.arange(5)], tokens, "v", "validate.py")
    # a fixed-width model's row of another width was told to pad the rows, feeding the model made-up values
    flat = TensorSpec("input", "FP32", (-1, 4))
    with pytest.raises(SystemExit) as e:
        served_rows([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0]], flat, "v", "validate.py")
    assert str(e.value.code) == ("v: load() in validate.py gives rows of different lengths (row 0 has 4 values, row 1 "
                                 "has 3), but the model takes 'input' rows of shape [4]: fix or drop the rows of "
                                 "another shape in load()")
    with pytest.raises(SystemExit, match=re.escape("(row 0 has 4 values, row 1 has one number)")):
        served_rows([[1.0, 2.0, 3.0, 4.0], 5.0], flat, "v", "validate.py")
    # an integer out of the datatype's range would wrap (300 as INT8 is 44): the server refuses it
    with pytest.raises(SystemExit, match=r"gives inputs out of range for INT8 \(-128\.\.127\): 300; the server "
                                         r"refuses such rows"):
        served_rows(np.array([[1, 300]]), TensorSpec("t", "INT8", (-1, 2)), "v", "validate.py")
    with pytest.raises(SystemExit, match=r"out of range for UINT8 \(0\.\.255\): -1"):
        served_rows(np.array([[-1, 3]]), TensorSpec("t", "UINT8", (-1, 2)), "v", "validate.py")
    # a value beyond FP16's range becomes infinity, which the server refuses: so does validation
    half = TensorSpec("input", "FP16", (-1, 4))
    x = np.zeros((3, 4))
    x[2, 1] = 1e5
    with pytest.raises(SystemExit, match=r"holding NaN or infinity \(or a number beyond FP16's range, which becomes "
                                         r"infinity\), first in row 2; the server refuses such rows"):
        served_rows(x, half, "v", "validate.py")


def test_held_out_rows_preprocess_refuses_are_named_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """They were "the package cannot serve: preprocess refused the input: " (an empty message),
    though the package serves: the suite's rows are what the server would refuse."""
    from mlbuild.runtime.validate import main
    from tests.unit.conftest_serve import MLP_SOURCE, build_package, validation_spec

    source = MLP_SOURCE + "\n\ndef preprocess(x):\n    if (x > 1).any():\n        raise ValueError()\n" \
                          "    return torch.from_numpy(x).float()\n"
    pkg = build_package(tmp_path / "pkg", source=source, train_steps=0)
    spec = validation_spec(tmp_path, pkg, "x = np.zeros((300, 64), np.float32)\nx[280, 3] = 5\n"
                                          "return x, np.zeros(300, int)")
    monkeypatch.setenv("specPath", str(spec))
    monkeypatch.setenv("out", str(tmp_path / "out"))
    with pytest.raises(SystemExit) as e:
        main()
    assert str(e.value.code) == (
        "mlbuild: validation of digits: preprocess refuses row 280 of the held-out inputs (load() in "
        "validate.py), as the server would with a 400: ValueError; make load() return inputs preprocess takes, "
        "or let preprocess take them")


def test_outputs_holding_nan_are_refused_naming_the_rows() -> None:
    # A diverged training (lr too high): scikit-learn's roc_auc (binary) or mae (regression) failed
    # the report with a bare "ValueError: Input contains NaN." under its traceback.
    from mlbuild.runtime.validate import check_finite

    proba = np.full((143, 2), 0.5, np.float32)
    proba[[3, 7]] = np.nan
    with pytest.raises(SystemExit, match=r"^mlbuild: validation of cancer: the model's output 'probabilities' holds "
                                         r"NaN or infinity for 2 of 143 held-out rows, so it has no metrics: a "
                                         r"training that diverged"):
        check_finite({"label": np.zeros(143, np.int64), "probabilities": proba}, "cancer")
    with pytest.raises(SystemExit, match=r"output 'prediction' holds NaN or infinity for 1 of 2 held-out rows"):
        check_finite({"prediction": np.array([1.0, np.inf])}, "price")
    check_finite({"label": np.zeros(3, np.int64), "probabilities": np.full((3, 2), 0.5)}, "cancer")


def test_a_check_shows_the_digits_that_decide_it() -> None:
    # "accuracy 0.9500 >= 0.95 FAILED": four decimals hid why
    table = format_checks(check_thresholds({"accuracy": 0.94996, "rmse": 0.30004, "mae": 0.00004},
                                           {"accuracy": 0.95, "rmse": "<= 0.3", "mae": "<= 0.001"}))
    assert re.search(r"accuracy +0\.94996 +>= 0\.95 +FAILED", table), table
    assert re.search(r"rmse +0\.30004 +<= 0\.3 +FAILED", table), table
    assert re.search(r"mae +4e-05 +<= 0\.001 +ok", table), table
    assert shown(0.123456) == "0.1235" and shown(0.00004) == "4e-05" and shown(1.5e9) == "1.5e+09" and shown(0) == "0.0000"


def test_regression_targets_of_another_width_than_the_predictions_are_named() -> None:
    """A suite giving all three targets ([N, 3]) of a one-target model failed the validation with
    numpy's "gives cannot reshape array of size 150 into shape (150,3)"."""
    y = np.arange(12.0).reshape(4, 3)
    with pytest.raises(ValueError, match=re.escape(
            "targets of shape [4, 3], but the model predicts one value a row (shape [4]); give one target a row "
            "(y[:, j] for target j: mlbuild serves one target a model, so train a model per target)")):
        compute_metrics("regression", y, np.arange(4.0))
    with pytest.raises(ValueError, match=re.escape(
            "targets of shape [4], but the model predicts 3 values a row (shape [4, 3]); give 3 targets a row")):
        compute_metrics("regression", np.arange(4.0), y)
    assert compute_metrics("regression", y, y + 1)["metrics"]["mae"] == pytest.approx(1.0)


def test_regression_targets_that_are_not_numbers_are_named() -> None:
    # scikit-learn's "Input contains NaN." was the build's last line
    with pytest.raises(ValueError, match=re.escape("target nan in row 1, which is not a finite number; a regression "
                                                   "model's targets are finite numbers: drop or fix such rows in load()")):
        compute_metrics("regression", np.array([1.0, np.nan, 2.0]), np.array([1.0, 2.0, 2.0]))
    with pytest.raises(ValueError, match=re.escape("target inf in row 0 (and 1 more rows)")):
        compute_metrics("regression", np.array([[np.inf], [-np.inf]]), np.array([1.0, 2.0]))


def test_r2_is_never_nan_and_constant_targets_are_noted() -> None:
    one = compute_metrics("regression", np.array([3.0]), np.array([2.0]))   # r2 was NaN: metrics.json not JSON
    assert one["metrics"] == {"mae": 1.0, "rmse": 1.0} and "r2" in one["undefined"]
    json.loads(json.dumps(one), parse_constant=lambda c: pytest.fail(f"{c} in the report"))
    flat = compute_metrics("regression", np.array([2.0] * 4), np.array([2.0, 2.1, 1.9, 2.0]))
    assert flat["metrics"]["r2"] == skm.r2_score([2.0] * 4, [2.0, 2.1, 1.9, 2.0]) == 0.0
    assert flat["notes"] == ["every held-out target is 2.0: R2 is undefined (no variance); scikit-learn's 0 is "
                             "reported (1 only for exact predictions)"]
    column = compute_metrics("regression", np.array([[1.0], [2.0], [3.0]]), np.array([1.0, 2.0, 2.5]))["metrics"]
    assert column["r2"] == pytest.approx(skm.r2_score([1, 2, 3], [1, 2, 2.5]))


def test_the_report_names_undefined_metrics_and_as_many_targets_as_rows_are_needed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from mlbuild.runtime.validate import main
    from tests.unit.conftest_serve import build_package, validation_spec

    pkg = build_package(tmp_path / "pkg", train_steps=0)
    monkeypatch.setenv("out", str(tmp_path / "out"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    spec = validation_spec(tmp_path / "a", pkg, "return np.zeros((30, 64), np.float32), np.zeros(29, int)")
    monkeypatch.setenv("specPath", str(spec))
    with pytest.raises(SystemExit) as e:   # scikit-learn's "inconsistent numbers of samples", after inference
        main()
    assert str(e.value.code) == ("mlbuild: validation of digits: load() in validate.py gives 30 input rows but 29 "
                                 "targets; give one target per row")
    spec = validation_spec(tmp_path / "b", pkg, "return np.zeros((30, 64), np.float32), np.arange(30) % 9")
    monkeypatch.setenv("specPath", str(spec))
    monkeypatch.setenv("out", str(tmp_path / "out-b"))
    main()
    report = json.loads((tmp_path / "out-b" / "metrics.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"{c} in the report"))
    assert any("class '9' has no held-out samples" in n for n in report["notes"])
    assert "mlbuild: validation of digits: note: class '9' has no held-out samples" in capsys.readouterr().err


def test_one_hot_targets_are_named() -> None:
    # scikit-learn: "Classification metrics can't handle a mix of multilabel-indicator and multiclass targets"
    with pytest.raises(ValueError, match=re.escape("targets of shape [3, 3], but a classifier's are one class index "
                                                   "or name a row (one-hot rows: return y.argmax(axis=1))")):
        compute_metrics("classification", np.eye(3, dtype=int), np.array([0, 1, 2]), None, ["a", "b", "c"])
    # multi-hot rows (multi-label targets): argmax would keep the first label of each row
    with pytest.raises(ValueError, match=re.escape(
            "targets of shape [3, 3] whose rows mark several classes or none (row 1: [1, 1, 0]): multi-label "
            "targets, but a classifier served by mlbuild gives one class a row; train a binary classifier per "
            "label (its targets one column, y[:, j]), or give one class index or name a row")):
        compute_metrics("classification", np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]]), np.array([0, 1, 2]), None,
                        ["a", "b", "c"])
    column = compute_metrics("classification", np.array([[0], [1], [2]]), np.array([0, 1, 1]), None, ["a", "b", "c"])
    assert column["metrics"]["accuracy"] == pytest.approx(2 / 3)


def test_a_metric_at_its_threshold_up_to_rounding_meets_it() -> None:
    """Recalls of 17/20 and 19/20 average to 0.9, which scikit-learn gives as 0.8999999999999999:
    "recall_macro 0.8999999999999999 >= 0.9 FAILED" for a model exactly at its threshold."""
    from sklearn.metrics import recall_score

    y, p = [0] * 20 + [1] * 20, [0] * 17 + [1] * 3 + [1] * 19 + [0]
    got = recall_score(y, p, average="macro")
    assert got != 0.9   # the float rounding this is about
    checks = check_thresholds({"recall_macro": got, "accuracy": 0.9, "mae": 0.1 + 0.2},
                              {"recall_macro": 0.9, "accuracy": "> 0.9", "mae": "<= 0.3"})
    assert [c["ok"] for c in checks] == [False, True, True]   # accuracy, mae, recall_macro: equal is not > 0.9
    assert re.search(r"recall_macro +0\.9000 +>= 0\.9 +ok", format_checks(checks)), format_checks(checks)
    assert [c["ok"] for c in check_thresholds({"accuracy": 0.8999999}, {"accuracy": 0.9})] == [False]


def test_a_model_without_class_names_is_counted_by_its_probabilities() -> None:
    """train.py declares a model without labels= with probabilities of shape [-1, -1], so the
    package gives no class count: a 10-class model whose held-out data held classes 0 and 1 was
    scored as binary, class 1's precision and the ROC-AUC of column 1 of ten."""
    outputs = [{"name": "probabilities", "shape": [-1, -1]}, {"name": "label", "shape": [-1]}]
    assert class_count(None, outputs) is None
    y, p = np.array([0, 1, 0, 1]), np.array([0, 1, 1, 1])
    r = compute_metrics("classification", y, p, np.full((4, 10), 0.1), None, class_count(None, outputs))
    assert not {"precision", "recall", "f1", "roc_auc"} & set(r["metrics"]) and "positive_class" not in r
    assert r["labels"] == [str(c) for c in range(10)] and len(r["confusion_matrix"]) == 10
    assert r["metrics"]["f1_macro"] == skm.f1_score(y, p, average="macro", zero_division=0)
    two = compute_metrics("classification", y, p, np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]), None, None)
    assert two["metrics"]["precision"] == skm.precision_score(y, p) and two["positive_class"] == "1"
    assert two["metrics"]["roc_auc"] == skm.roc_auc_score(y, [0.1, 0.8, 0.4, 0.7])


def test_a_suite_that_loads_no_rows_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load() giving no rows (a filter that kept none, an empty test.csv) ended the validation in a
    traceback: KeyError 'label' for a classifier, StopIteration for a regression model."""
    from mlbuild.runtime.validate import main
    from tests.unit.conftest_serve import build_package, validation_spec

    pkg = build_package(tmp_path / "pkg", train_steps=0)
    monkeypatch.setenv("out", str(tmp_path / "out"))
    (tmp_path / "a").mkdir()
    monkeypatch.setenv("specPath", str(validation_spec(tmp_path / "a", pkg,
                                                       "return np.zeros((0, 64), np.float32), np.zeros(0, int)")))
    with pytest.raises(SystemExit) as e:
        main()
    assert str(e.value.code) == ("mlbuild: validation of digits: load() in validate.py gives no rows; the metrics "
                                 "need held-out rows and their targets")
