"""Validation with real Nix: sklearn metrics, the threshold gate, suite versions, history."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from mlbuild.runtime.hashing import tree_digest, tree_hashes
from tests.conftest import build_path, run_cli
from tests.integration.conftest import commit_all, git

pytestmark = [pytest.mark.integration, pytest.mark.torch]


def built(root: Path, target: str, *extra: str) -> str:
    return run_cli("build", *extra, target, cwd=root).stdout.split("\t")[1].split("\n")[0]


def test_metrics_equal_sklearn(digits_repo: Path) -> None:
    report = Path(built(digits_repo, "digits.validation.report"))
    r = json.loads((report / "metrics.json").read_text())
    pred = np.load(report / "predictions.npy")
    split = build_path(digits_repo, "datasets.digits-split")
    assert r["dataset"] == {"name": "digits-split", "sha256": tree_digest(tree_hashes(split)), "of": "files"}
    y = np.loadtxt(split / "test.csv", delimiter=",", dtype=np.int64)[:, -1]
    assert r["n"] == len(y) == len(pred)
    assert r["metrics"]["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=0)
    assert r["metrics"]["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=0)
    assert r["metrics"]["precision_weighted"] == pytest.approx(skm.precision_score(y, pred, average="weighted"), abs=0)
    assert r["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert r["per_class"]["3"]["recall"] == pytest.approx(skm.recall_score(y, pred, average=None)[3], abs=0)
    # the report is computed on the package, the way the server loads it
    pkg = built(digits_repo, "digits")
    assert r["package"] == pkg
    assert r["metrics"]["accuracy"] >= 0.95


def test_raised_threshold_fails_with_the_table(digits_repo: Path) -> None:
    toml = digits_repo / "mlbuild.toml"
    original = toml.read_text()
    report_before = built(digits_repo, "digits.validation.report")
    toml.write_text(original.replace("thresholds = { accuracy = 0.95, f1_macro = 0.95 }",
                                     "thresholds = { accuracy = 0.999, f1_macro = 0.95 }"))
    commit_all(digits_repo, "strict")
    try:
        proc = run_cli("validate", "digits", cwd=digits_repo, check=False)
        assert proc.returncode == 1 and "validation of digits failed (accuracy)" in proc.stderr
        assert ">= 0.999" in proc.stderr and "FAILED" in proc.stderr and "f1_macro" in proc.stderr
        # and what to do about it (it ended at the table)
        assert proc.stderr.rstrip().endswith(
            "digits does not meet its thresholds ([models.digits.validation].thresholds in mlbuild.toml): improve the "
            "model and compare variants on the held-out data (`mlbuild exp run digits --set KEY=VALUE`, then "
            "`mlbuild exp show digits`), or lower a threshold that asks more than the task allows; every metric: "
            "`mlbuild metrics show digits`"), proc.stderr
        # the metrics themselves are not recomputed for a threshold change
        assert built(digits_repo, "digits.validation.report") == report_before
        # `metrics show` still shows them (the report builds), and now says the gate fails
        shown = run_cli("metrics", "show", "digits", cwd=digits_repo).stdout
        assert "gate: FAIL (accuracy >= 0.999)" in shown, shown
    finally:
        toml.write_text(original)
        commit_all(digits_repo, "thresholds back")
    ok = run_cli("validate", "digits", cwd=digits_repo)
    assert "validation passed" in ok.stdout
    assert run_cli("metrics", "show", "digits", cwd=digits_repo).stdout.splitlines()[-1] == "gate: pass"


def test_suite_change_changes_validation_not_model(digits_repo: Path) -> None:
    model, report = built(digits_repo, "digits.model"), built(digits_repo, "digits.validation.report")
    suite = digits_repo / "validate.py"
    original = suite.read_text()
    suite.write_text(original + "\n# suite v2: same data\n")
    commit_all(digits_repo, "suite v2")
    try:
        assert built(digits_repo, "digits.model") == model
        new = built(digits_repo, "digits.validation.report")
        assert new != report
        a = json.loads((Path(report) / "metrics.json").read_text())["suite"]["version"]
        b = json.loads((Path(new) / "metrics.json").read_text())["suite"]["version"]
        assert a != b
    finally:
        suite.write_text(original)
        commit_all(digits_repo, "suite v1")


def test_history_and_diff_across_commits(digits_repo: Path, tmp_path: Path) -> None:
    first = git(digits_repo, "rev-parse", "HEAD").strip()
    toml = digits_repo / "mlbuild.toml"
    original = toml.read_text()
    toml.write_text(original.replace("epochs = 30", "epochs = 12"))
    second = commit_all(digits_repo, "shorter training")
    try:
        out = run_cli("metrics", "history", "digits", "--out", str(tmp_path), cwd=digits_repo).stdout
        assert first[:10] in out and second[:10] in out
        html = (tmp_path / "digits-report.html").read_text()
        assert "data:image/png;base64," in html and first[:10] in html
        assert (tmp_path / "digits-history.png").read_bytes()[:4] == b"\x89PNG"
        prom = (tmp_path / "digits-metrics.prom").read_text()
        assert 'mlbuild_validation_metric{model="digits"' in prom and 'metric="accuracy"' in prom
        d = run_cli("metrics", "diff", "digits", first, second, cwd=digits_repo).stdout
        assert "accuracy" in d and first[:10] in d
        # the same held-out samples on both sides (only the epochs changed): said, without the note
        assert re.search(r"^held-out data: ([0-9a-f]{8}) \(n 450\) -> \1 \(n 450\)$", d, re.M), d
        assert "note:" not in d and "note:" not in out
    finally:
        toml.write_text(original)
        commit_all(digits_repo, "back to 30 epochs")


def test_build_check_of_a_validation_checks_the_metrics_too(digits_repo: Path) -> None:
    """`build --check digits.validation` rebuilt only the gate (thresholds against the report's
    metrics), never the report that computes them: a suite sampling the held-out rows unseeded
    was called reproducible."""
    suite = digits_repo / "validate.py"
    original = suite.read_text()
    suite.write_text(original + "\n\n_load = load\n\n\ndef load(data):   # an unseeded sample of the held-out rows\n"
                     "    x, y = _load(data)\n    keep = np.random.default_rng().random(len(y)) < 0.9\n"
                     "    return x[keep], y[keep]\n")
    commit_all(digits_repo, "a suite that samples")
    try:
        proc = run_cli("build", "--check", "digits.validation", cwd=digits_repo, check=False)
        assert proc.returncode == 1, proc.stdout
        assert "digits.validation.report is not reproducible: built again, it gave other bytes in metrics.json" \
            in proc.stderr, proc.stderr[-2000:]
    finally:
        suite.write_text(original)
        commit_all(digits_repo, "the suite again")
    out = run_cli("build", "--check", "models.digits.validation", cwd=digits_repo).stdout
    assert "reproducible: models.digits.validation.report, models.digits.validation (built again" in out
    out = run_cli("build", "--check", "digits.validation", "digits.validation.report", cwd=digits_repo).stdout
    assert "reproducible: digits.validation, digits.validation.report (built again" in out   # once
