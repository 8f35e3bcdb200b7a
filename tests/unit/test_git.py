"""mlbuild/git.py's queries against a real git repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mlbuild import git


def test_show_says_a_bad_revision_is_not_a_commit(tmp_path: Path) -> None:
    """`data diff NAME nosuchrev` said "mlbuild.lock does not exist at revision 'nosuchrev'"."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "mlbuild.lock").write_text("{}\n")
    with pytest.raises(git.GitError, match="'HEAD' is not a commit of the git repository"):   # no commit yet
        git.show(tmp_path, "HEAD", "mlbuild.lock")
    subprocess.run(["git", "-C", str(tmp_path), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    assert git.show(tmp_path, "HEAD", "mlbuild.lock") == "{}\n"
    with pytest.raises(git.GitError, match="'nosuchrev' is not a commit of the git repository"):
        git.show(tmp_path, "nosuchrev", "mlbuild.lock")
    with pytest.raises(git.GitError, match="other.lock does not exist at revision 'HEAD'"):
        git.show(tmp_path, "HEAD", "other.lock")
