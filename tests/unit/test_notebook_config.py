"""[notebooks.NAME] tables, as the driver reads them (mlbuild/notebook/config.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlbuild.config import load_project
from mlbuild.errors import ConfigError
from mlbuild.notebook import NotebookConfigError, notebook_configs, select_notebooks
from tests.conftest import write_tree

BASE = '[project]\nname = "p"\n\n[datasets.raw]\npath = "data/raw"\n\n'


def project(tmp_path: Path, notebooks: str, files: dict[str, Any] | None = None) -> Any:
    write_tree(tmp_path, {"mlbuild.toml": BASE + notebooks, "a.ipynb": "{}", "b.ipynb": "{}", "lib.py": "",
                          **(files or {})})
    return load_project(tmp_path)


def test_defaults_and_values(tmp_path: Path) -> None:
    p = project(tmp_path, '[notebooks.a]\npath = "a.ipynb"\n\n'
                          '[notebooks.b]\npath = "b.ipynb"\ndatasets = ["raw"]\ntest = true\ntimeout = 60\n'
                          'code = ["b.ipynb", "lib.py"]\nparams = { bins = 8 }\n')
    configs = notebook_configs(p)
    a, b = configs["a"], configs["b"]
    assert (a.path, a.datasets, a.code, a.test, a.timeout, a.params) == ("a.ipynb", (), ("a.ipynb",), False, 600, {})
    assert (b.datasets, b.code, b.test, b.timeout, b.params) == (("raw",), ("b.ipynb", "lib.py"), True, 60, {"bins": 8})
    assert b.target == "notebooks.b"


def test_selection(tmp_path: Path) -> None:
    p = project(tmp_path, '[notebooks.a]\npath = "a.ipynb"\n\n[notebooks.b]\npath = "b.ipynb"\ntest = true\n')
    assert [c.name for c in select_notebooks(p)] == ["b"]
    assert [c.name for c in select_notebooks(p, ["a", "b", "a"])] == ["a", "b"]  # named: test or not
    with pytest.raises(NotebookConfigError, match=r"nope: no such notebook .*\(declared: a, b\).*\[notebooks.nope\]"):
        select_notebooks(p, ["nope"])


def test_no_notebooks(tmp_path: Path) -> None:
    assert select_notebooks(project(tmp_path, "")) == []


@pytest.mark.parametrize("table, message", [
    ('path = "a.py"', r"\[notebooks.x\].path is 'a.py'; it must name a .ipynb file"),
    ('path = "gone.ipynb"', r"\[notebooks.x\].path 'gone.ipynb' does not exist"),
    ('path = "a.ipynb"\ndatasets = ["raw", "other"]', r"datasets names \['other'\], which are not datasets; declared: \['raw'\]"),
    ('path = "a.ipynb"\ndatasets = "raw"', r"datasets must be a list of strings, got 'raw'"),
    ('path = "a.ipynb"\ntest = "yes"', r'test is "yes"; use true or false'),
    ('path = "a.ipynb"\ntimeout = 0', r"timeout is 0; use a whole number of seconds > 0"),
    ('path = "a.ipynb"\ntimeout = 1.5', r"timeout is 1.5; use a whole number of seconds > 0 \(timeout = 600, a TOML integer\)"),
    ('path = "a.ipynb"\ntests = true', r"unknown keys \['tests'\]"),
    ('path = "a.ipynb"\ncode = ["a.ipynb", "nolib/"]', r"code names \['nolib/'\], which do not exist"),
    ('path = "a.ipynb"\nparams = 3', r"params must be a table"),
])
def test_mistakes_name_the_value(tmp_path: Path, table: str, message: str) -> None:
    p = project(tmp_path, f"[notebooks.x]\n{table}\n")
    with pytest.raises(NotebookConfigError, match=message) as e:
        notebook_configs(p)
    assert isinstance(e.value, ConfigError)


@pytest.mark.parametrize("table, said", [
    ('path = "../outside.ipynb"', "[notebooks.x].path names '../outside.ipynb', which is outside the project"),
    ('path = "ABS"', "[notebooks.x].path names 'ABS', which is outside the project"),
    ('path = "a.ipynb"\ncode = ["a.ipynb", "../lib"]', "[notebooks.x].code names '../lib', which is outside"),
])
def test_a_file_outside_the_project_is_refused(tmp_path: Path, table: str, said: str) -> None:
    """`path = "../x.ipynb"` passed the check, then the worktree check failed with a screenful of
    `git ls-files ... is outside repository`, for every notebook of the project."""
    write_tree(tmp_path, {"outside.ipynb": "{}", "lib": {"m.py": ""}})
    outside = str(tmp_path / "outside.ipynb")
    p = project(tmp_path / "proj", f'[notebooks.x]\n{table.replace("ABS", outside)}\n')
    with pytest.raises(NotebookConfigError) as e:
        notebook_configs(p)
    assert str(e.value).startswith(said.replace("ABS", outside)) and "move it into the project folder" in str(e.value)


def test_a_link_in_the_project_to_a_file_outside_is_named_as_a_link(tmp_path: Path) -> None:
    # it said the project's own explore.ipynb "is outside the project"
    write_tree(tmp_path, {"outside.ipynb": "{}"})
    p = project(tmp_path / "proj", '[notebooks.x]\npath = "explore.ipynb"\n')
    (tmp_path / "proj" / "explore.ipynb").symlink_to(tmp_path / "outside.ipynb")
    with pytest.raises(NotebookConfigError) as e:
        notebook_configs(p)
    assert str(e.value).startswith(f"[notebooks.x].path names 'explore.ipynb', a link to {tmp_path / 'outside.ipynb'} "
                                   "(a build would see the link, not the file), which is outside the project")
