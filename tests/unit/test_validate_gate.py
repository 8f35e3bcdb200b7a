"""The validation's metric and threshold logic (pure functions of the runtime)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from mlbuild.runtime.validate import (_example_threshold, check_thresholds, class_targets, compute_metrics, format_checks, gate_main,
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
