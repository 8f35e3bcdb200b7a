"""The metrics history plot keeps scores and error metrics on separate axes."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from mlbuild.metrics import Point, _figure, _plot, table


def points(*metrics: dict[str, float]) -> list[Point]:
    return [Point(f"{i:040x}", {"metrics": m}, "/nix/store/x") for i, m in enumerate(metrics)]


def test_a_regression_history_puts_errors_below_the_scores() -> None:
    fig = _figure("price", points({"mae": 44.2, "rmse": 57.8, "r2": 0.33}, {"mae": 41.0, "rmse": 55.1, "r2": 0.38}))
    axes = fig.get_axes()
    assert [ax.get_ylabel() for ax in axes] == ["score", "error (lower is better)"]
    assert [[line.get_label() for line in ax.get_lines()] for ax in axes] == [["r2"], ["mae", "rmse"]]
    plt.close(fig)


def test_a_classifier_history_is_one_axis() -> None:
    fig = _figure("digits", points({"accuracy": 0.96, "f1_macro": 0.95}))
    assert len(fig.get_axes()) == 1 and fig.get_axes()[0].get_ylabel() == "score"
    plt.close(fig)
    assert _plot("digits", points({"accuracy": 0.96})).startswith(b"\x89PNG")


def test_the_history_table_shows_the_held_out_data_of_each_revision() -> None:
    """A grown test set moved accuracy with the same suite version, and nothing said so."""
    a = Point("a" * 40, {"metrics": {"accuracy": 0.9556}, "suite": {"version": "ec924683aa"}, "n": 45,
                         "dataset": {"sha256": "11112222" + "0" * 56}}, "/nix/store/x")
    b = Point("b" * 40, {"metrics": {"accuracy": 0.98}, "suite": {"version": "ec924683aa"}, "n": 50,
                         "dataset": {"sha256": "33334444" + "0" * 56}}, "/nix/store/y")
    lines = table([a, b])
    assert lines[0].split() == ["revision", "suite", "data", "n", "accuracy"]
    assert lines[1].split() == ["aaaaaaaaaa", "ec924683", "11112222", "45", "0.9556"]
    assert lines[2].split() == ["bbbbbbbbbb", "ec924683", "33334444", "50", "0.9800"]
    assert lines[-1].startswith("note: the held-out data differs between these revisions")
    assert not table([a, a])[-1].startswith("note:")


def test_the_history_table_shows_small_and_large_errors_as_they_are() -> None:
    """Two revisions' MAE of 0.00004 and 0.00008 both read 0.0000: the change went unseen."""
    points = [Point(rev * 40, {"metrics": {"mae": mae, "rmse": rmse, "r2": 0.5}, "n": 9}, "/nix/store/x")
              for rev, mae, rmse in (("a", 0.00004, 2.5e9), ("b", 0.00008, 0.25))]
    lines = table(points)
    assert lines[0].split()[-3:] == ["mae", "r2", "rmse"]
    assert lines[1].split()[-3:] == ["4e-05", "0.5000", "2.5e+09"]
    assert lines[2].split()[-3:] == ["8e-05", "0.5000", "0.2500"]


def test_a_split_whose_training_rows_alone_changed_scores_the_same_samples() -> None:
    """A changed training row changes the split's dataset hash; the note said the held-out data
    differed though test.csv was byte-identical. Reports hash the samples the suite scored."""
    import numpy as np

    from mlbuild.runtime.validate import heldout_hash

    x, y = np.arange(12, dtype=np.float32).reshape(3, 4), np.array([0, 1, 1])
    same = heldout_hash(x, y)
    assert same == heldout_hash(x.copy(), y.copy()) and len(same) == 64
    assert heldout_hash(x + 1, y) != same and heldout_hash(x, y[::-1].copy()) != same
    assert heldout_hash(x.reshape(4, 3), y) != same   # shape is part of it
    a = Point("a" * 40, {"metrics": {"accuracy": 0.9}, "suite": {"version": "v"}, "n": 3,
                         "dataset": {"sha256": "1" * 64}, "heldout": {"sha256": same}}, "/nix/store/x")
    b = Point("b" * 40, {"metrics": {"accuracy": 0.9}, "suite": {"version": "v"}, "n": 3,
                         "dataset": {"sha256": "2" * 64}, "heldout": {"sha256": same}}, "/nix/store/y")
    lines = table([a, b])
    assert lines[1].split()[2] == same[:8] and not lines[-1].startswith("note:")


def test_a_report_from_an_older_mlbuild_with_no_held_out_hash_is_unknown_not_different(tmp_path: Path) -> None:
    """A project whose flake.lock pins an older mlbuild gets reports with no held-out hash (its
    dataset's "sha256" absent or null): `metrics history`/`diff` and the plot said the held-out data
    differed (between the same samples, scored by the same weights), `exp show` printed "None"."""
    from mlbuild.exp import _data
    from mlbuild.metrics import heldout_differs

    new = {"metrics": {"accuracy": 1.0}, "suite": {"version": "v"}, "n": 38, "heldout": {"sha256": "1" * 64}}
    old = {"metrics": {"accuracy": 1.0}, "suite": {"version": "v"}, "n": 38, "dataset": {"name": "s", "path": "/x"}}
    null = {**old, "dataset": {"name": "s", "sha256": None}}
    for report in (old, null):
        lines = table([Point("a" * 40, new, "/nix/store/x"), Point("b" * 40, report, "/nix/store/y")])
        assert lines[2].split()[2] == "-" and not lines[-1].startswith("note:")
        assert not heldout_differs(new, report)
        fig = _figure("iris", [Point("a" * 40, new, "/x"), Point("b" * 40, report, "/y")])
        assert not [line for line in fig.get_axes()[0].get_lines() if line.get_linestyle() == ":"]
        plt.close(fig)
    assert heldout_differs(new, {**new, "heldout": {"sha256": "2" * 64}})
    (tmp_path / "provenance.json").write_text('{"datasets": {"iris-split": {"path": "/nix/store/x", "sha256": null}}}')
    assert _data(tmp_path) == "?"


def test_the_plot_breaks_its_lines_where_the_held_out_data_changes() -> None:
    """One continuous line joined metrics computed on different samples (45, then 55 rows)."""
    def at(rev: str, acc: float, data: str) -> Point:
        return Point(rev * 40, {"metrics": {"accuracy": acc}, "heldout": {"sha256": data * 64}}, "/nix/store/x")

    fig = _figure("wine", [at("a", 0.95, "1"), at("b", 0.96, "1"), at("c", 0.98, "2")])
    lines = fig.get_axes()[0].get_lines()
    segments = [list(line.get_xdata()) for line in lines if line.get_linestyle() != ":"]
    assert segments == [[0, 1], [2]]
    assert [line.get_label() for line in lines if line.get_linestyle() == ":"] == ["held-out data changed"]
    plt.close(fig)


def test_metrics_show_does_not_write_over_the_history_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mlbuild.metrics import write_reports

    history = write_reports("wine", points({"accuracy": 0.9}, {"accuracy": 0.95}), tmp_path)
    before = {k: p.read_bytes() for k, p in history.items()}
    shown = write_reports("wine", points({"accuracy": 0.97}), tmp_path, worktree=True)
    assert {p.name for p in shown.values()} == {"wine-worktree.png", "wine-worktree.html", "wine-worktree.prom"}
    assert {k: p.read_bytes() for k, p in history.items()} == before


def test_the_history_and_worktree_prom_files_give_a_collector_distinct_series(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A textfile collector reads every .prom of the folder: for a clean HEAD the worktree's point
    is HEAD's, and the two files gave the same series twice (node-exporter fails that scrape)."""
    from prometheus_client.parser import text_string_to_metric_families

    from mlbuild.metrics import write_reports

    same = points({"accuracy": 0.9})
    both = write_reports("wine", same, tmp_path)["prom"].read_text() \
        + write_reports("wine", same, tmp_path, worktree=True)["prom"].read_text()
    series = [(s.name, tuple(sorted(s.labels.items()))) for f in text_string_to_metric_families(both) for s in f.samples]
    assert len(series) == 4 and len(set(series)) == 4
    assert {dict(labels)["source"] for _, labels in series} == {"history", "worktree"}


def test_the_html_report_keeps_a_gap_and_a_note_in_one_cell(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A revision that could not be validated (other than "build failed") and the held-out data
    # note were split at every space into a row of one-word cells.
    from mlbuild.metrics import write_reports

    pts = [Point("a" * 40, {"metrics": {"accuracy": 0.9}, "heldout": {"sha256": "1" * 64}}, "/nix/store/x"),
           Point("b" * 40, {}, "", "mlbuild.lock is stale; run `mlbuild lock`"),
           Point("c" * 40, {"metrics": {"accuracy": 0.95}, "heldout": {"sha256": "2" * 64}}, "/nix/store/y")]
    page = write_reports("wine", pts, tmp_path)["html"].read_text()
    assert "<tr><td colspan='99'>bbbbbbbbbb: mlbuild.lock is stale; run `mlbuild lock`</td></tr>" in page
    assert "<tr><td colspan='99'>note: the held-out data differs between these revisions" in page
    assert "<td>note:</td>" not in page and "<td>stale;</td>" not in page


def test_a_figure_drawn_before_comes_from_the_cache_and_any_input_draws_it_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `metrics show` and `metrics history` imported matplotlib and drew the figure again
    (~1 s, most of the command when nothing was built). The same figure comes from the cache now,
    byte for byte what drawing gives; a changed value, revision, held-out set, model name or
    matplotlibrc draws it again."""
    import mlbuild.metrics as m

    monkeypatch.setenv("MLBUILD_STATE", str(tmp_path / "state"))
    monkeypatch.delenv("MATPLOTLIBRC", raising=False)
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mplconfig"))
    monkeypatch.chdir(tmp_path)
    drawn: list[str] = []
    plot = m._plot

    def counted(model: str, pts: list[Point]) -> bytes:
        drawn.append(model)
        return plot(model, pts)

    monkeypatch.setattr(m, "_plot", counted)
    base = points({"accuracy": 0.96, "f1_macro": 0.95}, {"accuracy": 0.97, "f1_macro": 0.96})
    first = m.write_reports("digits", base, tmp_path / "out")["png"].read_bytes()
    again = m.write_reports("digits", base, tmp_path / "out")["png"].read_bytes()
    assert drawn == ["digits"] and again == first == plot("digits", base)
    held = [Point(p.rev, {**p.report, "heldout": {"sha256": str(i) * 64}}, p.path) for i, p in enumerate(base)]
    for model, pts in (("digits", points({"accuracy": 0.96, "f1_macro": 0.95}, {"accuracy": 0.971, "f1_macro": 0.96})),
                       ("digits", [Point("f" * 40, base[0].report, ""), base[1]]), ("digits", held), ("cancer", base)):
        drawn.clear()
        assert m.write_reports(model, pts, tmp_path / "out")["png"].read_bytes() == plot(model, pts)
        assert drawn == [model]
    (tmp_path / "matplotlibrc").write_text("axes.facecolor: yellow\n")   # matplotlib reads the working folder's
    drawn.clear()
    m.write_reports("digits", base, tmp_path / "out")   # (read by matplotlib at its import: in the next command)
    assert drawn == ["digits"]
    (tmp_path / "matplotlibrc").unlink()
    (tmp_path / "mplconfig").mkdir()
    (tmp_path / "mplconfig" / "matplotlibrc").write_text("axes.facecolor: yellow\n")
    drawn.clear()
    m.write_reports("digits", base, tmp_path / "out")
    assert drawn == ["digits"]


def test_a_cached_figure_cut_short_is_drawn_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached figure cut short (a crash or a disk error after it was written) still began like a PNG,
    so every later `metrics show` copied the broken image into its PNG and HTML report, for good."""
    import mlbuild.metrics as m

    monkeypatch.setenv("MLBUILD_STATE", str(tmp_path / "state"))
    base = points({"accuracy": 0.96})
    whole = m.write_reports("digits", base, tmp_path / "out")["png"].read_bytes()
    assert whole.endswith(b"IEND\xaeB`\x82")
    (cached,) = (tmp_path / "state" / "plots").glob("*.png")
    cached.write_bytes(whole[: len(whole) // 2])
    assert m.write_reports("digits", base, tmp_path / "out")["png"].read_bytes() == whole
    assert cached.read_bytes() == whole


def test_the_plot_cache_keeps_the_newest_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlbuild.metrics as m

    monkeypatch.setenv("MLBUILD_STATE", str(tmp_path / "state"))
    monkeypatch.setattr(m, "PLOTS_KEPT", 3)
    for i in range(5):
        m.write_reports("digits", points({"accuracy": i / 10}), tmp_path / "out")
    assert len(list((tmp_path / "state" / "plots").glob("*.png"))) == 3
    (tmp_path / "state" / "plots").chmod(0o500)   # a cache that cannot be written is skipped
    try:
        assert m.write_reports("digits", points({"accuracy": 0.77}), tmp_path / "out")["png"].exists()
    finally:
        (tmp_path / "state" / "plots").chmod(0o700)


def test_metrics_show_and_validate_print_the_report_s_notes(tree, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The notes (a class without held-out samples, an undefined roc_auc) were in the build log
    only, which a build that passes does not show."""
    from click.testing import CliRunner

    import mlbuild.metrics as m
    from mlbuild.cli.main import cli

    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[models.m]\nscript = "m.py"\n'
                                 '[models.m.validation]\nsuite = "v.py"\ndataset = "d"\n'
                                 'thresholds = { accuracy = 0.9 }\n', "m.py": "", "v.py": ""})
    report = {"metrics": {"accuracy": 1.0}, "n": 3, "suite": {"version": "s"},
              "notes": ["class '9' has no held-out samples and is never predicted: left out of the macro averages"],
              "undefined": {"roc_auc": "the held-out targets hold one class only ('1'), and ROC-AUC needs both"},
              "gate": {"checks": [{"metric": "accuracy", "value": 1.0, "op": ">=", "threshold": 0.9, "ok": True}]}}
    point = m.Point("worktree", report, "/nix/store/x")
    monkeypatch.setattr(m, "show", lambda *a, **k: point)
    monkeypatch.setattr(m, "validate", lambda *a, **k: point)
    monkeypatch.chdir(root)
    notes = ["note: class '9' has no held-out samples and is never predicted: left out of the macro averages",
             "note: roc_auc is left out: the held-out targets hold one class only ('1'), and ROC-AUC needs both"]
    shown = CliRunner().invoke(cli, ["metrics", "show", "m", "--out", str(root / "reports")])
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines()[-3:] == [*notes, "gate: pass"]
    validated = CliRunner().invoke(cli, ["validate", "m"])
    assert validated.exit_code == 0, validated.output
    assert validated.output.splitlines()[-2:] == notes


def test_a_gate_failing_on_an_undefined_metric_says_to_change_the_data_or_threshold() -> None:
    """`mlbuild validate` said "improve the model" for a roc_auc that no model has on one-class
    held-out data."""
    from mlbuild.metrics import gate_advice

    tail = ("mlbuild: validation of cancer failed (roc_auc); suite version c7c9a41c811505bd:\n"
            "  roc_auc               missing   >= 0.97     FAILED\n"
            "  roc_auc: undefined for this held-out data: the held-out targets hold one class only ('benign'), and "
            "ROC-AUC needs both")
    assert gate_advice("cancer", tail) == (
        "\ncancer's roc_auc has no value on its held-out data, whatever the model (the reason is above): give the "
        "suite held-out data it is defined on (load() in [models.cancer.validation].suite), or drop that threshold "
        "from [models.cancer.validation].thresholds in mlbuild.toml")
    assert gate_advice("cancer", tail.split("\n  roc_auc:")[0]).startswith(
        "\ncancer does not meet its thresholds ([models.cancer.validation].thresholds in mlbuild.toml): improve")


def test_a_gate_failing_on_a_metric_the_suite_does_not_report_says_to_name_one_it_does() -> None:
    """A regression model gated on `accuracy` (a classifier's metric) was told to "improve the model"
    and compare variants, which no variant can pass."""
    from mlbuild.metrics import gate_advice

    tail = ("mlbuild: validation of price failed (accuracy); suite version bf6f799b47fa7676:\n"
            "  accuracy              missing   >= 0.9      FAILED\n"
            "  accuracy: no such metric in the report; the suite reports mae, r2, rmse (fix the name in "
            "[models.price.validation].thresholds)")
    assert gate_advice("price", tail) == (
        "\nprice's suite reports no accuracy, whatever the model: name a metric it reports (mae, r2, rmse) in "
        "[models.price.validation].thresholds in mlbuild.toml")
    # a classifier's misspelt metric was told "a regression model's are mae, rmse and r2"
    typo = ("mlbuild: validation of digits failed (acuracy); suite version bf6f799b47fa7676:\n"
            "  acuracy               missing   >= 0.9      FAILED\n"
            "  acuracy: no such metric in the report; the suite reports accuracy, f1_macro, log_loss (fix the name in "
            "[models.digits.validation].thresholds)")
    assert gate_advice("digits", typo) == (
        "\ndigits's suite reports no acuracy, whatever the model: name a metric it reports (accuracy, f1_macro, "
        "log_loss) in [models.digits.validation].thresholds in mlbuild.toml")
    both = tail.replace("failed (accuracy)", "failed (r2, accuracy)")   # and a metric a better model could meet
    assert gate_advice("price", both).startswith("\nprice does not meet its thresholds")


def test_validate_and_exp_run_show_a_gated_metric_with_the_digits_that_decide_it(tree, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The gate's table showed 0.94996 (FAILED against 0.95) in full, but `mlbuild validate` printed
    a passing accuracy of 0.95004 as "0.9500  > 0.95", and `exp run` a failing 0.94996 as
    "accuracy 0.9500 (n 3); gate: FAIL (accuracy >= 0.95)"."""
    import json

    from click.testing import CliRunner

    import mlbuild.exp as experiments
    import mlbuild.metrics as m
    from mlbuild.cli.main import cli

    def project(rule: str) -> Path:
        return tree({"mlbuild.toml": '[project]\nname = "p"\n[models.m]\nscript = "m.py"\n'
                                     '[models.m.validation]\nsuite = "v.py"\ndataset = "d"\n'
                                     f'thresholds = {{ accuracy = {rule}, mae = "<= 0.3" }}\n', "m.py": "", "v.py": ""})

    checks = [{"metric": "accuracy", "value": 0.95004, "op": ">", "threshold": 0.95, "ok": True},
              {"metric": "mae", "value": 0.29996, "op": "<=", "threshold": 0.3, "ok": True}]
    point = m.Point("worktree", {"metrics": {"accuracy": 0.95004, "mae": 0.29996}, "n": 3, "suite": {"version": "s"},
                                 "gate": {"checks": checks}}, "/nix/store/x")
    monkeypatch.setattr(m, "validate", lambda *a, **k: point)
    monkeypatch.chdir(project('"> 0.95"'))
    validated = CliRunner().invoke(cli, ["validate", "m"])
    assert validated.exit_code == 0, validated.output
    assert validated.output.splitlines()[1:3] == ["  accuracy             0.95004  > 0.95", "  mae                  0.3000  <= 0.3"]

    root = project("0.95")
    (root / "r").mkdir()
    (root / "r" / "metrics.json").write_text(json.dumps({"metrics": {"accuracy": 0.94996, "mae": 0.30004}, "n": 3}))
    monkeypatch.setattr(experiments, "run", lambda *a, **k: (None, {"overrides": {}, "status": "built", "path": "/x",
                                                                    "report": str(root / "r")}))
    monkeypatch.chdir(root)
    ran = CliRunner().invoke(cli, ["exp", "run", "m"])
    assert ran.exit_code == 0, ran.output
    assert ran.output.splitlines()[-1] == ("  test: accuracy 0.94996, mae 0.30004 (n 3); "
                                           "gate: FAIL (accuracy >= 0.95, mae <= 0.3)")


def test_metrics_diff_keeps_its_columns_apart_for_long_values(tree, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """An RMSE of 123456.7890 against 23456.7890 printed as "123456.7890 23456.7890 -100000.0000"
    under headers ten wide: the columns ran together and no longer lined up."""
    from click.testing import CliRunner

    import mlbuild.metrics as m
    from mlbuild.cli.main import cli

    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[models.m]\nscript = "m.py"\n', "m.py": ""})
    a = m.Point("a" * 40, {"metrics": {"rmse": 123456.789, "mae": 0.00004, "r2": -12.5}, "suite": {"version": "s"}}, "/x")
    b = m.Point("b" * 40, {"metrics": {"rmse": 23456.789, "mae": 0.00008}, "suite": {"version": "s"}}, "/x")
    monkeypatch.setattr(m, "diff", lambda *a_, **k: (a, b))
    monkeypatch.chdir(root)
    out = CliRunner().invoke(cli, ["metrics", "diff", "m", "HEAD~1", "HEAD"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()[:4]
    assert [line.split() for line in lines] == [["metric", "HEAD~1", "HEAD", "change"], ["mae", "4e-05", "8e-05", "+4e-05"],
                                                ["r2", "-12.5000", "-", "-"],
                                                ["rmse", "123456.7890", "23456.7890", "-100000.0000"]]
    assert len({len(line) for line in lines}) == 1   # right-aligned columns: every row ends where the header does
    ends = [[cell.end() for cell in re.finditer(r"\S+", line)] for line in lines]
    assert all(e[1:] == ends[0][1:] for e in ends), lines
