"""A stage's script importing what its build lacks ends with what to do, under its traceback:
a distribution the lock does not pin (``pandas``, ``sklearn`` as ``scikit-learn``) or a project
module left out of the stage's ``code``. Before, the build log ended at ``ModuleNotFoundError``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mlbuild.runtime.prepare import load_module, missing_module_hint


@pytest.mark.parametrize(("source", "named", "dist"), [
    ("import mlbuild_no_such_dist\n", "'mlbuild_no_such_dist'", "'mlbuild_no_such_dist' to [python].requirements"),
    ("import sklearn_nope.sub\n", "'sklearn_nope'", "'sklearn_nope' to"),
    ("from helpers_not_listed import util\n", "'helpers_not_listed'", "helpers_not_listed.py or helpers_not_listed/"),
])
def test_a_missing_module_says_what_to_add(tmp_path: Path, source: str, named: str, dist: str) -> None:
    (tmp_path / "prep_stage.py").write_text("x = 1\n" + source)
    with pytest.raises(SystemExit) as stopped:
        load_module(str(tmp_path), "prep_stage.py")
    message = str(stopped.value.code)
    assert "ModuleNotFoundError" in message and 'prep_stage.py", line 2' in message   # the traceback first
    last = message.splitlines()[-1]
    assert last.startswith(f"mlbuild: no module named {named} in this build") and dist in last
    assert "`mlbuild lock` and `mlbuild prefetch`" in last and "`code = [...]`" in last
    sys.path.remove(str(tmp_path))


def test_import_names_map_to_their_distribution() -> None:
    hint = missing_module_hint(ModuleNotFoundError("No module named 'sklearn'", name="sklearn"))
    assert hint is not None and "add 'scikit-learn' to [python].requirements" in hint


def test_no_hint_for_what_is_not_a_missing_distribution(tmp_path: Path) -> None:
    # a submodule the installed version lacks: the distribution is there, its traceback says more
    assert missing_module_hint(ModuleNotFoundError("No module named 'json.nope'", name="json.nope")) is None
    assert missing_module_hint(ValueError("x")) is None
    (tmp_path / "other_stage.py").write_text("import json.nope\n")
    with pytest.raises(ModuleNotFoundError):
        load_module(str(tmp_path), "other_stage.py")
    sys.path.remove(str(tmp_path))


def test_the_driver_names_a_project_module_left_out_of_code(tmp_path: Path) -> None:
    from mlbuild.build import _own_module

    hint = missing_module_hint(ModuleNotFoundError("No module named 'helpers'", name="helpers"))
    tail = ["ModuleNotFoundError: No module named 'helpers'", str(hint)]
    assert _own_module(tmp_path, tail) == []   # not in the project: the runtime's hint is all
    (tmp_path / "helpers").mkdir()
    assert _own_module(tmp_path, tail) == [
        'mlbuild: helpers/ is in the project but not in the build: add "helpers/" to the failing stage\'s '
        "`code = [...]` in mlbuild.toml (its script and those files are all a stage sees)"]
