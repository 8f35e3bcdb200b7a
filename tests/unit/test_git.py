"""mlbuild/git.py's queries against a real git repository."""

from __future__ import annotations

import os
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


def test_log_revisions_keeps_both_sides_of_a_merge(tmp_path: Path) -> None:
    """`metrics history` after merging a branch into a main whose own changes to the files came to
    nothing (a bad lr and its revert): the merge's files equal the branch's, git's default history
    simplification followed the branch alone, and the bad commit and its revert were not listed."""
    def run(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout.strip()

    run("init", "-q", "-b", "main")
    (tmp_path / "mlbuild.toml").write_text("lr = 0.003\nhidden = 64\n")
    (tmp_path / "other.txt").write_text("")
    run("add", "-A")
    run("commit", "-qm", "root")
    run("checkout", "-qb", "wide")
    (tmp_path / "mlbuild.toml").write_text("lr = 0.003\nhidden = 32\n")
    run("commit", "-qam", "hidden 32")
    run("checkout", "-q", "main")
    (tmp_path / "mlbuild.toml").write_text("lr = 0.00001\nhidden = 64\n")
    run("commit", "-qam", "bad lr")
    run("revert", "--no-edit", "HEAD")
    (tmp_path / "other.txt").write_text("x\n")
    run("commit", "-qam", "not the project's files")
    run("merge", "-q", "--no-edit", "wide")
    subjects = [run("log", "-1", "--format=%s", rev) for rev in git.log_revisions(tmp_path, ["mlbuild.toml"])]
    # the merge's mlbuild.toml is hidden 32's: that row already (its metrics a second time, else)
    assert subjects[0] == "root" and sorted(subjects[1:]) == ['Revert "bad lr"', "bad lr", "hidden 32"]
    assert subjects.index("bad lr") < subjects.index('Revert "bad lr"')
    # a pull request's merge (--no-ff, main untouched): the branch's commit, not the merge too
    run("checkout", "-qb", "deep")
    (tmp_path / "mlbuild.toml").write_text("lr = 0.003\nhidden = 128\n")
    run("commit", "-qam", "hidden 128")
    run("checkout", "-q", "main")
    run("merge", "-q", "--no-ff", "--no-edit", "deep")
    # a merge of two sides that each changed the files holds what neither had: a row of its own
    run("checkout", "-qb", "slow", "HEAD~1")
    (tmp_path / "mlbuild.toml").write_text("lr = 0.001\nhidden = 32\n")
    run("commit", "-qam", "lr 0.001")
    run("checkout", "-q", "main")
    (tmp_path / "mlbuild.toml").write_text("lr = 0.003\nhidden = 128\nepochs = 3\n")
    run("commit", "-qam", "epochs 3")
    merge = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "merge", "-q", "--no-edit", "slow"],
                           cwd=tmp_path, capture_output=True, text=True)   # a conflict (with no identity, git
    assert "CONFLICT" in merge.stdout, merge.stdout + merge.stderr           # refused before merging at all)
    (tmp_path / "mlbuild.toml").write_text("lr = 0.001\nhidden = 128\nepochs = 3\n")
    run("commit", "-qam", "merge slow")
    subjects = [run("log", "-1", "--format=%s", rev) for rev in git.log_revisions(tmp_path, ["mlbuild.toml"])]
    assert sorted(subjects) == sorted(['Revert "bad lr"', "bad lr", "epochs 3", "hidden 128", "hidden 32", "lr 0.001",
                                       "merge slow", "root"])
    # parents before children (git orders independent lines by date: within one second, either way)
    for parent, child in [("hidden 32", "hidden 128"), ("hidden 32", "lr 0.001"), ("hidden 128", "epochs 3"),
                          ("bad lr", 'Revert "bad lr"'), ('Revert "bad lr"', "lr 0.001")]:
        assert subjects.index(parent) < subjects.index(child), (parent, child, subjects)
    assert subjects[-1] == "merge slow"


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(cwd), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


def test_data_inside_a_repository_of_its_own_is_refused(tmp_path: Path) -> None:
    """Data in a submodule: `data add` wrote its ignore line into the outer .gitignore, which git
    does not apply inside the submodule, so the submodule stayed modified and builds refused it."""
    _git(tmp_path, "init", "-q")
    (tmp_path / "mlbuild.toml").write_text('[project]\nname = "p"\n')
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "x")
    lib = tmp_path / "lib"
    lib.mkdir()
    _git(lib, "init", "-q")
    (lib / "a.csv").write_text("1\n")
    with pytest.raises(git.GitError) as e:
        git.ignore_entry(tmp_path, lib / "a.csv")
    assert str(e.value).startswith(f"{lib / 'a.csv'} is inside {lib}, a git repository of its own (a submodule?)")
    assert not (tmp_path / ".gitignore").exists()
    (tmp_path / "b.csv").write_text("1\n")   # beside it, as before
    assert git.ignore_entry(tmp_path, tmp_path / "b.csv") == (tmp_path / ".gitignore", "/b.csv")


def test_data_in_a_repository_of_its_own_that_git_ignores_is_left_alone(tmp_path: Path) -> None:
    """Data in a clone inside a folder the project ignores (init's /data/), or that the clone's own
    .gitignore ignores: nothing to add, and nothing keeps the project dirty; it was refused, and
    the fix it gave (a folder git ignores there) was refused too."""
    _git(tmp_path, "init", "-q")
    (tmp_path / "mlbuild.toml").write_text('[project]\nname = "p"\n')
    (tmp_path / ".gitignore").write_text("/data/\n*.csv\n")   # *.csv: git does not apply it inside lib/ below
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "x")
    ext = tmp_path / "data" / "ext"
    ext.mkdir(parents=True)
    _git(ext, "init", "-q")
    (ext / "a.csv").write_text("1\n")
    assert git.ignore_entry(tmp_path, ext / "a.csv") is None
    lib = tmp_path / "lib"   # a clone the project does not ignore, whose own .gitignore ignores the data
    (lib / "raw").mkdir(parents=True)
    _git(lib, "init", "-q")
    (lib / ".gitignore").write_text("/raw/\n")
    (lib / "raw" / "a.csv").write_text("1\n")
    assert git.ignore_entry(tmp_path, lib / "raw" / "a.csv") is None
    assert git.ignore_entry(tmp_path, lib / "raw") is None
    (lib / "b.csv").write_text("1\n")   # lib ignores it not, and the project's *.csv does not reach inside
    with pytest.raises(git.GitError, match="a git repository of its own"):
        git.ignore_entry(tmp_path, lib / "b.csv")
    assert (tmp_path / ".gitignore").read_text() == "/data/\n*.csv\n"


def test_a_repository_whose_path_is_not_utf8_is_read(tmp_path: Path) -> None:
    """A project under a folder named in Latin-1 (b'caf\\xe9'): git prints the path, and decoding it
    as UTF-8 failed with a UnicodeDecodeError traceback in every build, validate and data add."""
    root = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / "mlbuild.toml").write_text('[project]\nname = "p"\n')
    assert git.repo_root(root) == root
    assert git.dirty_files(root, ["mlbuild.toml"]).untracked == ["mlbuild.toml"]
