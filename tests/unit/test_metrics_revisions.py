"""metrics diff/history at git revisions that cannot be built: refused or skipped before any build."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mlbuild import metrics as m
from mlbuild.config import load_project
from mlbuild.errors import MlbuildError

TOML = '[project]\nname = "p"\n\n[models.m]\nscript = "m.py"\n\n[models.m.validation]\nsuite = "v.py"\n' \
       'dataset = "d"\nthresholds = { accuracy = 0.5 }\n'


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                   capture_output=True)


def test_a_revision_from_before_mlbuild_toml_is_refused_by_diff_and_skipped_by_history(tmp_path: Path) -> None:
    # The model's code was committed before the project file: history counted that commit as a
    # failed point, and diff said "no mlbuild.toml in /tmp/mlbuild-rev-.../rev or any folder above
    # it; ... pass --project PATH" (a temporary folder, and a fix that is none).
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    (root / "m.py").write_text("x = 1\n")
    _git(root, "add", "m.py")
    _git(root, "commit", "-qm", "code first")
    (root / "mlbuild.toml").write_text(TOML)
    _git(root, "add", "mlbuild.toml")
    _git(root, "commit", "-qm", "project")
    project = load_project(root)
    with pytest.raises(MlbuildError, match=r"^revision 'HEAD~1' has no mlbuild.toml \(the project is not in that "
                                           r"commit\); give one that has it \(`git log --oneline -- mlbuild.toml`"):
        m.diff(project, "m", "HEAD~1", "HEAD")
    assert m._report_at(project, "m", "HEAD~1", required=False) is None


def test_history_before_the_first_commit_says_to_commit(tmp_path: Path) -> None:
    # It showed git's own failure: "`git log --format=%H ...` failed: fatal: your current branch
    # 'master' does not have any commits yet"
    _git(tmp_path, "init", "-q")
    (tmp_path / "mlbuild.toml").write_text(TOML)
    (tmp_path / "m.py").write_text("x = 1\n")
    with pytest.raises(MlbuildError, match=r"^no commits touch mlbuild.toml, m.py; commit the project first$"):
        m.history(load_project(tmp_path), "m")
