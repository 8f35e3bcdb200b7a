"""mlbuild/git.py's queries against a real git repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mlbuild import git
from tests.conftest import run_cli


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


def another_users(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` a repository git refuses as this user ("dubious ownership"): owned by nobody
    where we are root, else git's own switch for that check."""
    if os.getuid() == 0:
        subprocess.run(["chown", "-R", "65534:65534", str(path)], check=True)
    else:
        monkeypatch.setenv("GIT_TEST_ASSUME_DIFFERENT_OWNER", "1")


def test_a_repository_another_user_owns_is_named_with_the_fix(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout another user owns (a team's /srv/ml, a CI workspace): git refuses it, and
    repo_root took that for no repository, so an uncommitted change built as clean and `data add`
    added no .gitignore line. Now every query names the repository and safe.directory."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))   # no safe.directory of the user's
    repo = tmp_path / "team repo"
    (repo / "ml").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "ml" / "model.py").write_text("x = 1\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    (repo / "ml" / "model.py").write_text("x = 2\n")   # uncommitted
    another_users(repo, monkeypatch)
    fix = f"git config --global --add safe.directory '{repo}'"
    with pytest.raises(git.GitError, match=f"another user owns it .*{re.escape(fix)}"):
        git.dirty_files(repo / "ml")
    with pytest.raises(git.GitError, match=re.escape(fix)):
        git.ignore_entry(repo / "ml", repo / "ml" / "data.csv")
    subprocess.run(["git", "config", "--global", "--add", "safe.directory", str(repo)], check=True)
    assert git.dirty_files(repo / "ml").modified == ["ml/model.py"]


def test_no_repository_is_still_none(tmp_path: Path) -> None:
    assert git.repo_root(tmp_path) is None
    assert not git.dirty_files(tmp_path)


def _monorepo(tmp_path: Path) -> Path:
    """A repository with a committed project in ml/ (examples/cancer's files, no data) and
    other code beside it; ml/model.py then changed and not committed."""
    repo = tmp_path / "mono"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "app.py").write_text("print(1)\n")
    shutil.copytree(Path(__file__).parents[2] / "examples" / "cancer", repo / "ml")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    with open(repo / "ml" / "model.py", "a") as f:
        f.write("# not committed\n")
    return repo


def test_a_relative_git_dir_is_relative_to_the_current_folder(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`GIT_DIR=../../.git GIT_WORK_TREE=../.. mlbuild build` in ml/sub/: git ran in the project's
    folder ml/, where ../../.git is no repository, which read as none: the uncommitted model.py
    trained, marked clean. pin_environment makes them mean what they mean where they were set."""
    repo = _monorepo(tmp_path)
    (repo / "ml" / "sub").mkdir()
    monkeypatch.chdir(repo / "ml" / "sub")
    monkeypatch.setenv("GIT_DIR", "../../.git")
    monkeypatch.setenv("GIT_WORK_TREE", "../..")
    git.pin_environment()
    assert (os.environ["GIT_DIR"], os.environ["GIT_WORK_TREE"]) == (str(repo / ".git"), str(repo))
    assert git.dirty_files(repo / "ml").modified == ["ml/model.py"]


def test_a_git_dir_alone_gets_the_work_tree_git_gives_it_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _monorepo(tmp_path)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("GIT_DIR", ".git")
    monkeypatch.setenv("GIT_WORK_TREE", "")   # recorded, so that the one pin_environment sets is undone after
    monkeypatch.delenv("GIT_WORK_TREE")
    git.pin_environment()
    assert os.environ["GIT_WORK_TREE"] == str(repo)   # git's rule for a GIT_DIR alone: this folder is its top
    assert git.dirty_files(repo / "ml").modified == ["ml/model.py"]


def test_a_git_dir_that_names_no_repository_is_an_error(tmp_path: Path) -> None:
    """`GIT_DIR=.git mlbuild -C ml build` (as `git -C ml`, relative to ml/, where there is no .git):
    taken for no repository, the uncommitted model.py trained, marked clean."""
    repo = _monorepo(tmp_path)
    env = {"GIT_DIR": ".git", "MLBUILD_STATE": str(tmp_path / "state")}
    proc = run_cli("-C", "ml", "build", "cancer", cwd=repo, env=env, check=False)
    assert proc.returncode == 1 and f"GIT_DIR={repo / 'ml' / '.git'} in the environment names no git repository" \
        in proc.stderr and "unset GIT_DIR" in proc.stderr, proc.stderr
    (repo / "ml" / "sub").mkdir()
    env = {"GIT_DIR": "../../.git", "GIT_WORK_TREE": "../..", "MLBUILD_STATE": str(tmp_path / "state")}
    proc = run_cli("build", "cancer", cwd=repo / "ml" / "sub", env=env, check=False)
    assert proc.returncode == 1 and "modified:  ml/model.py" in proc.stderr, proc.stderr


def test_code_checked_out_with_other_line_ends_than_committed_is_dirty(tmp_path: Path) -> None:
    """A clone with core.autocrlf=true: model.py is committed with LF and checked out with CRLF.
    git status calls it clean, and `mlbuild build` (which reads the folder) trained the CRLF bytes,
    in no commit, marked clean: another store path than `nix build` and every other clone built."""
    origin = tmp_path / "origin"
    (origin / "ml").mkdir(parents=True)
    (origin / "ml" / "model.py").write_text("x = 1\ny = 2\n")
    (origin / "ml" / "notes.txt").write_text("not code\n")
    subprocess.run(["git", "init", "-q", str(origin)], check=True)
    subprocess.run(["git", "-C", str(origin), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(origin), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "-c", "core.autocrlf=true", "clone", "-q", str(origin), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "config", "core.autocrlf", "true"], check=True)
    assert (clone / "ml" / "model.py").read_bytes() == b"x = 1\r\ny = 2\r\n"
    dirty = git.dirty_files(clone / "ml", ["model.py"])
    assert dirty and dirty.converted == ["ml/model.py"] and not dirty.modified   # notes.txt: no code
    subprocess.run(["git", "-C", str(clone), "config", "core.autocrlf", "input"], check=True)
    (clone / "ml" / "model.py").unlink()
    subprocess.run(["git", "-C", str(clone), "checkout", "--", "ml/model.py"], check=True)
    assert not git.dirty_files(clone / "ml", ["model.py"])


def test_a_file_a_sparse_checkout_leaves_out_is_named(tmp_path: Path) -> None:
    """A sparse checkout without ml/validate.py: the build said only that validate.py does not
    exist in the folder, though git has it; now the failure says how to bring it."""
    from mlbuild.build import _sparse

    repo = _monorepo(tmp_path)
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "--", "ml/model.py"], check=True)
    subprocess.run(["git", "-C", str(repo), "sparse-checkout", "set", "--no-cone", "/ml/", "!/ml/validate.py"],
                   check=True, capture_output=True)
    assert not (repo / "ml" / "validate.py").exists() and (repo / "ml" / "model.py").exists()
    assert git.sparse_excluded(repo / "ml" / "validate.py") == "ml/validate.py"
    assert git.sparse_excluded(repo / "ml" / "model.py") is None   # there
    assert git.sparse_excluded(repo / "ml" / "nosuch.py") is None   # not in git either
    said = "error: \x1b[35;1mmlbuild: [models.cancer.validation].suite names validate.py, which does not exist in " \
        f"{repo / 'ml'}\x1b[0m"
    assert _sparse(repo / "ml", [said]) == [
        "mlbuild: ml/validate.py is in git, but this sparse checkout leaves it out of the folder the build reads: "
        "`git sparse-checkout add /ml/validate.py` (in cone mode, its folder: `git sparse-checkout add ml`)"]


def test_line_ends_are_read_only_of_files_whose_size_differs_from_the_commit(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The line-end check ran `git ls-files --eol` on every code file, which reads each one whole in
    the work tree and in the index: a tracked 200 MB file in `code` (a tokenizer, small weights)
    added 1.3 s to every `mlbuild build`, one with nothing to build included. Only a file whose size
    differs from its blob's can have other line ends: only those are read now, and a converted one
    beside a big file is still found."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "model.py").write_text("x = 1\ny = 2\n")
    (repo / "weights.bin").write_bytes(bytes(range(256)) * 4096)
    (repo / ".gitattributes").write_text("model.py eol=crlf\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    read: list[list[str]] = []
    real = git._git
    monkeypatch.setattr(git, "_git", lambda cwd, *args, **kw: (read.append([*args]) if "--eol" in args else None)
                        or real(cwd, *args, **kw))
    assert not git.dirty_files(repo, ["model.py", "weights.bin"]) and read == []   # as committed: nothing read
    (repo / "model.py").unlink()
    subprocess.run(["git", "-C", str(repo), "checkout", "--", "model.py"], check=True)   # CRLF now
    assert git.dirty_files(repo, ["model.py", "weights.bin"]).converted == ["model.py"]
    assert len(read) == 1 and not any("weights.bin" in a for a in read[0])


def test_the_worktree_check_writes_nothing_into_the_repository(tmp_path: Path) -> None:
    """`git status` refreshes the index's stat facts of files touched since and writes it back
    (.git/index.lock, then a rename): with the project's disk full every build and `data add` stopped
    at the worktree check ("fatal: sha1 file '.git/index.lock' write error. Out of diskspace"), before
    anything it would have built or written. The check only reads now."""
    repo = tmp_path / "p"
    (repo / "data").mkdir(parents=True)
    (repo / "model.py").write_text("x = 1\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    os.utime(repo / "model.py", ns=(10**18, 10**18))   # same bytes, other stat facts than the index holds
    index = repo / ".git" / "index"
    before = (index.read_bytes(), index.stat().st_mtime_ns, index.stat().st_ino)
    assert not git.dirty_files(repo, ["model.py"])
    assert (index.read_bytes(), index.stat().st_mtime_ns, index.stat().st_ino) == before
