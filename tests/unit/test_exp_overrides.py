"""`mlbuild exp run --set`: values are TOML, in the types of the configured params."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlbuild.errors import ConfigError
from mlbuild.exp import parse_sets, split_sets, typed_overrides

PARAMS = {"lr": 0.003, "epochs": 30, "name": "mlp", "augment": False, "sizes": [64, 64]}


def overrides(*sets: str) -> dict[str, Any]:
    return typed_overrides("digits", PARAMS, parse_sets(sets), split_sets(sets))


def test_matching_types_pass_and_ints_become_floats_where_a_number_is_configured() -> None:
    got = overrides("lr=1", "epochs=5", "name=123", "augment=true", "sizes=[32, 16]")
    assert got == {"lr": 1.0, "epochs": 5, "name": "123", "augment": True, "sizes": [32, 16]}
    assert type(got["lr"]) is float
    assert overrides('name="wide"') == overrides("name=wide") == {"name": "wide"}


@pytest.mark.parametrize(("item", "message"), [
    ("lr=abc", r"--set lr=abc: \[models.digits.params\].lr is a number \(0.003 in mlbuild.toml\), not a string; "
               r"give a number, e.g. --set lr=0.003"),
    ("epochs=1.5", r"epochs is an integer \(30 in mlbuild.toml\), not a number"),
    ("epochs=true", r"epochs is an integer .* not a boolean"),
    ("augment=1", r"augment is a boolean \(true or false\) .* not an integer"),
    ("sizes=64", r"sizes is a list .* not an integer; give a list, e.g. --set sizes=\[64, 64\]"),
])
def test_mismatched_types_name_the_param_and_its_type(item: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        overrides(item)


@pytest.mark.parametrize("item", ["lr=nan", "lr=inf", "lr=-inf", "sizes=[1.0, nan]"])
def test_nan_and_infinity_are_refused(item: str) -> None:
    # TOML reads them; they reached Nix as JSON NaN: "[json.exception.parse_error.101] ... last read: '"lr": N'"
    with pytest.raises(ConfigError, match=r"NaN and infinity are not parameter values; give a finite number"):
        overrides(item)
    assert overrides('name="nan"') == {"name": "nan"}


def test_a_param_given_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"--set lr is given twice \(0.02 and 0.03\); give it once"):
        overrides("lr=0.02", "lr=0.03")


def test_values_are_shown_as_set_takes_them() -> None:
    from mlbuild.exp import describe, format_value
    assert [format_value(v) for v in (True, "mlp", [64, 64], 0.004, 5)] == ["true", '"mlp"', "[64, 64]", "0.004", "5"]
    assert describe({"lr": 0.004, "augment": False}) == "augment=false lr=0.004"
    assert describe({}) == "(as configured)"
    for value in (True, "mlp", [64, 64], 0.004, 5, "a b"):  # what is shown is what --set reads back
        assert parse_sets([f"k={format_value(value)}"]) == {"k": value}


def test_a_set_equal_to_the_configured_value_changes_nothing() -> None:
    from mlbuild.exp import changed_params

    params = {"lr": 0.003, "epochs": 30, "shuffle": True, "name": "a"}
    typed = typed_overrides("m", params, {"lr": 0.0030, "epochs": 31, "shuffle": True}, {"lr": "0.0030", "epochs": "31",
                                                                                          "shuffle": "true"})
    assert changed_params(params, typed) == {"epochs": 31}
    assert changed_params({"n": 1.0}, {"n": 1}) == {"n": 1}   # another type is another value in the derivation



def test_a_model_without_params_runs_as_configured_and_names_none(tmp_path: Any) -> None:
    # `exp run m` of a model with no [models.m.params] table ended in KeyError: 'params'
    from mlbuild.config import load_project
    from mlbuild.exp import variant_overrides

    (tmp_path / "mlbuild.toml").write_text('[project]\nname = "p"\n\n[models.m]\nscript = "m.py"\n')
    project = load_project(tmp_path)
    assert variant_overrides(project, "m", []) == {}
    with pytest.raises(ConfigError, match=r"^--set names lr, which \[models.m.params\] does not have; it has none$"):
        variant_overrides(project, "m", ["lr=0.1"])


def test_a_torn_line_in_the_experiment_log_is_left_out_and_the_next_run_is_kept(tmp_path: Any) -> None:
    # A run killed while writing its line (or a full disk) left half a line: `exp show` ended in a
    # JSONDecodeError from then on, and the next run's record was glued to the torn line and lost.
    import json

    from mlbuild.config import load_project
    from mlbuild.exp import _append, _log, show

    (tmp_path / "mlbuild.toml").write_text('[project]\nname = "p"\n\n[models.m]\nscript = "m.py"\n'
                                           '[models.m.params]\nlr = 0.1\n')
    project = load_project(tmp_path)

    def record(path: str) -> dict[str, Any]:
        return {"model": "m", "overrides": {}, "params": {"lr": 0.1}, "path": path, "status": "built"}

    log = _log(project, "m")
    _append(log, record("/nix/store/a"))
    with open(log, "a") as f:
        f.write('{"model": "m", "overr')
    _append(log, record("/nix/store/b"))
    assert [json.loads(line)["path"] for line in log.read_text().splitlines() if line.endswith("}")] == \
        ["/nix/store/a", "/nix/store/b"]
    notes: list[str] = []
    assert [v.path for v in show(project, "m", notes)] == ["/nix/store/a", "/nix/store/b"]
    assert notes == [f"note: {log} line 2 is not a record of a run (torn or edited), left out"]


@pytest.mark.parametrize("kind", ["file", "dangling link"])
def test_an_experiments_folder_that_is_no_folder_is_named(tmp_path: Path, kind: str) -> None:
    """.mlbuild/experiments a file (or a link to nothing): `exp run` built the variant, then ended in a
    FileExistsError traceback. It names the folder and the fix; the run is not lost (a cache hit)."""
    from mlbuild.config import load_project
    from mlbuild.errors import ConfigError
    from mlbuild.exp import _append, _log

    (tmp_path / "mlbuild.toml").write_text('[project]\nname = "p"\n\n[models.m]\nscript = "m.py"\n')
    log = _log(load_project(tmp_path), "m")
    if kind == "file":
        log.parent.write_text("x\n")
    else:
        log.parent.symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError) as e:
        _append(log, {"model": "m", "path": "/nix/store/a"})
    assert str(e.value) == (f"{log.parent} is not a folder, so the run (built: /nix/store/a) cannot be recorded there "
                            f"for `mlbuild exp show`; move it away (`mv {log.parent} {log.parent}.old`) and run the "
                            f"same `mlbuild exp run` again (a cache hit, then recorded)")


@pytest.mark.parametrize("item", ["epochs=99999999999999999999", "sizes=[1, -9223372036854775809]"])
def test_an_integer_beyond_64_bits_is_refused(item: str) -> None:
    # Nix read it as a float: `range(1, p["epochs"] + 1)` failed in the training with
    # "'float' object cannot be interpreted as an integer"
    with pytest.raises(ConfigError, match=r"is beyond the 64-bit integers Nix has \(it would reach the training as "
                                          r"the float -?[0-9.e+]+\); give an integer from -2\*\*63 to 2\*\*63-1"):
        overrides(item)
    assert overrides("epochs=9223372036854775807") == {"epochs": 2**63 - 1}


def test_digits_beyond_64_bits_are_text_or_a_float_where_the_param_is() -> None:
    # refused as integers beyond 64 bits: a string param keeps the digits, a number param a float
    got = overrides("name=99999999999999999999", "lr=100000000000000000000")
    assert got == {"name": "99999999999999999999", "lr": 1e20} and type(got["lr"]) is float


@pytest.mark.parametrize("item", ["when=1979-05-27", "when=07:32:00", "when=[1979-05-27T07:32:00Z]"])
def test_a_toml_date_is_refused(item: str) -> None:
    # TOML reads it as a datetime, which json.dumps could not write: a TypeError traceback
    with pytest.raises(ConfigError, match=r"a TOML date or time is not a parameter value Nix can read; quote it"):
        parse_sets([item])
    assert parse_sets(['when="1979-05-27"']) == {"when": "1979-05-27"}


def test_exp_show_of_a_model_renamed_since_shows_its_recorded_runs(tmp_path: Path) -> None:
    """A team renames a model: `exp show OLD` refused ("'old' is not a model of p ...; declare
    [models.old]"), though .mlbuild/experiments/old.jsonl holds its runs, and `exp show NEW` has
    none: the sweep's table was gone. It shows the recorded runs (no "*": there are no configured
    params to differ from), with a note; a name with no log is still refused."""
    from tests.conftest import run_cli, write_tree

    root = write_tree(tmp_path / "p", {"mlbuild.toml": '[project]\nname = "p"\n[models.new]\nscript = "m.py"\n'
                                                         '[models.new.params]\nlr = 0.1\n'})
    record = {"model": "old", "overrides": {"lr": 0.2}, "params": {"lr": 0.2}, "status": "built", "time": 0.0,
              "path": f"/nix/store/{'a' * 32}-old-model", "git_rev": None, "dirty": False}
    write_tree(root, {".mlbuild": {"experiments": {"old.jsonl": json.dumps(record) + "\n"}}})
    proc = run_cli("exp", "show", "old", cwd=root)
    assert proc.stdout.splitlines()[1].split()[:2] == ["0.2", "-"], proc.stdout
    assert proc.stderr == (f"note: mlbuild.toml no longer declares [models.old] (renamed or removed): these are the "
                           f"runs {root / '.mlbuild' / 'experiments' / 'old.jsonl'} recorded; a renamed model's later "
                           f"runs are under its new name\n")
    proc = run_cli("exp", "show", "gone", cwd=root, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("Error: 'gone' is not a model of p (models: new)")


def test_exp_show_reads_no_log_outside_the_experiments_folder(tmp_path: Path) -> None:
    """`exp show ../x` of a name no model has: refused as an unknown model, not read from
    <project>/.mlbuild/x.jsonl (a log outside .mlbuild/experiments, shown as a model's runs)."""
    from tests.conftest import run_cli, write_tree

    root = write_tree(tmp_path / "p", {"mlbuild.toml": '[project]\nname = "p"\n[models.new]\nscript = "m.py"\n'})
    record = {"model": "x", "overrides": {}, "params": {}, "status": "built", "time": 0.0,
              "path": f"/nix/store/{'a' * 32}-x-model", "git_rev": None, "dirty": False}
    write_tree(root, {".mlbuild": {"x.jsonl": json.dumps(record) + "\n", "experiments": {}}})
    for name in ("../x", ".hidden"):
        proc = run_cli("exp", "show", name, cwd=root, check=False)
        assert proc.returncode == 1 and proc.stderr.startswith(f"Error: {name!r} is not a model of p"), proc.stderr


def test_exp_show_reads_a_variant_s_files_where_a_runner_s_own_store_keeps_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With NIX_CONFIG="store = /tmp/machine-b" (a CI runner's own store) `exp show` read the
    training metrics and held-out metrics there (97371fb) but the model's provenance.json in
    /nix/store: its data column was '-' for every variant, as if no dataset had been recorded."""
    from mlbuild.config import load_project
    from mlbuild.exp import show
    from tests.conftest import write_tree

    root = write_tree(tmp_path / "p", {"mlbuild.toml": '[project]\nname = "p"\n[models.m]\nscript = "m.py"\n'
                                                         '[models.m.params]\nlr = 0.1\n'})
    model, report = f"/nix/store/{'a' * 32}-m-model", f"/nix/store/{'b' * 32}-m-validation-report"
    record = {"model": "m", "overrides": {"lr": 0.2}, "params": {"lr": 0.2}, "status": "built", "time": 0.0,
              "path": model, "report": report, "git_rev": None, "dirty": False}
    write_tree(root, {".mlbuild": {"experiments": {"m.jsonl": json.dumps(record) + "\n"}}})
    chroot = tmp_path / "machine-b"
    write_tree(chroot / model.lstrip("/"), {
        "metrics.json": json.dumps({"final": {"loss": 0.5}}),
        "provenance.json": json.dumps({"datasets": {"raw": {"sha256": "f33c4f51" + "0" * 56}}})})
    write_tree(chroot / report.lstrip("/"), {"metrics.json": json.dumps({"metrics": {"accuracy": 0.9}})})
    monkeypatch.delenv("NIX_REMOTE", raising=False)
    monkeypatch.setenv("NIX_CONFIG", f"store = {chroot}")
    [variant] = show(load_project(root), "m")
    assert (variant.metrics, variant.held_out, variant.data) == ({"loss": 0.5}, {"accuracy": 0.9}, "f33c4f51")
