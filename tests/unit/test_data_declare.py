"""What `data add` writes besides the lock: the path in mlbuild.toml (a text edit that keeps
everything else) and the .gitignore line for a path inside the project's repository."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from mlbuild import git
from mlbuild.data.datasets import toml_with_path
from mlbuild.errors import DataError

CONFIG = Path("/p/mlbuild.toml")
HEAD = '# project\n[project]\nname = "p"   # the name\n'


def test_a_missing_dataset_is_appended() -> None:
    new = toml_with_path(HEAD.rstrip("\n"), "iris-raw", "data/iris.csv", CONFIG)
    assert new == HEAD + '\n[datasets.iris-raw]\npath = "data/iris.csv"\n'


def test_a_dataset_appended_to_a_windows_saved_file_keeps_its_line_ends() -> None:
    # CRLF, as Windows editors save: the new table was appended with LF, leaving mixed line ends
    crlf = HEAD.replace("\n", "\r\n")
    assert toml_with_path(crlf, "iris-raw", "data/iris.csv", CONFIG) == \
        crlf + '\r\n[datasets.iris-raw]\r\npath = "data/iris.csv"\r\n'
    assert toml_with_path(crlf.rstrip("\r\n"), "x", "x.csv", CONFIG) == crlf + '\r\n[datasets.x]\r\npath = "x.csv"\r\n'


@pytest.mark.parametrize(("table", "edited"), [
    ('[datasets.iris-raw]   # from the lab\n# before\npath = "data/iris.csv"   # keep\n# after\n',
     '[datasets.iris-raw]   # from the lab\n# before\npath = "data/b.csv"   # keep\n# after\n'),
    ("[ datasets . 'iris-raw' ]\r\n\"path\"='data/iris.csv'\r\n", "[ datasets . 'iris-raw' ]\r\n\"path\"=\"data/b.csv\"\r\n"),
    ('[datasets.iris-raw]\nnote = """\npath = "text"\n"""\npath = "data/iris.csv"\n',   # the first is text
     '[datasets.iris-raw]\nnote = """\npath = "text"\n"""\npath = "data/b.csv"\n'),
])
def test_only_the_path_line_changes(table: str, edited: str) -> None:
    tail = '\n[datasets.split]\nprepare = "prepare.py"\ninputs = ["iris-raw"]\n'
    assert toml_with_path(HEAD + table + tail, "iris-raw", "data/b.csv", CONFIG) == HEAD + edited + tail


def test_a_path_is_written_as_a_toml_string() -> None:
    odd = '/data/we"ird\\name\t.csv'
    new = toml_with_path(HEAD + '[datasets.x]\npath = "a"\n', "x", odd, CONFIG)
    assert tomllib.loads(new)["datasets"]["x"]["path"] == odd


@pytest.mark.parametrize(("table", "line"), [
    ('[datasets]\niris-raw = { path = "data/iris.csv" }\n', 5),           # an inline table
    ('[datasets]\niris-raw.path = "data/iris.csv"\n', 5),                 # a dotted key
    ('[datasets.iris-raw]\npath = """data/iris.csv"""\n', 4),             # a multi-line string
])
def test_a_declaration_that_cannot_be_rewritten_safely_is_refused_naming_its_line(table: str, line: int) -> None:
    with pytest.raises(DataError) as e:
        toml_with_path(HEAD + table, "iris-raw", "data/b.csv", CONFIG)
    assert str(e.value).startswith(f"{CONFIG}:{line} (`{(HEAD + table).splitlines()[line - 1].strip()}`)")
    assert 'write path = "data/b.csv" there yourself' in str(e.value)


def test_ignored_where_the_path_is(tmp_path: Path) -> None:
    repo, outside = tmp_path / "repo", tmp_path / "elsewhere" / "x.csv"
    project = repo / "proj"
    for f in (project / "data" / "x.csv", repo / "shared" / "d" / "y.csv", outside):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("1\n")
    assert git.ignore_entry(project, project / "data" / "x.csv") is None          # no repository yet
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    assert git.ignore_entry(project, project / "data" / "x.csv") == (project / ".gitignore", "/data/x.csv")
    assert git.ignore_entry(project, project / ".." / "shared" / "d") == (repo / ".gitignore", "/shared/d/")
    assert git.ignore_entry(project, outside) is None                              # not git's to ignore
    assert git.ignore(project, repo / "shared" / "d")
    assert (repo / ".gitignore").read_text() == "/shared/d/\n"
    assert git.ignore_entry(project, repo / "shared" / "d") is None                # ignored already


def test_a_link_in_the_project_to_the_data_is_ignored_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`data add raw data/raw`, data/raw a link to /mnt/raw (or to data/v2): the target was declared
    and ignored, not the link, which git saw as an untracked file: every build refused the tree."""
    import json

    from mlbuild.config import load_project
    from mlbuild.data.datasets import add

    root, outside = tmp_path / "p", tmp_path / "mnt" / "raw"
    outside.mkdir(parents=True)
    (outside / "a.csv").write_text("1\n")
    (root / "data").mkdir(parents=True)
    (root / "data" / "v2").mkdir()
    (root / "data" / "v2" / "b.csv").write_text("2\n")
    (root / "mlbuild.toml").write_text('[project]\nname = "p"\n')
    (root / "mlbuild.lock").write_text(json.dumps({"version": 1, "datasets": {}, "interpreter": {"snapshot": {}}}))
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / "data" / "raw").symlink_to(outside)
    (root / "data" / "cur").symlink_to("v2")
    assert git.ignore_entry(root, root / "data" / "cur", follow=False) == (root / ".gitignore", "/data/cur")
    monkeypatch.chdir(root)
    add(load_project(root), "raw", Path("data/raw"))
    add(load_project(root), "cur", Path("data/cur"))
    assert (root / ".gitignore").read_text().splitlines() == ["/data/raw", "/data/v2/", "/data/cur"]
    untracked = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "-uall"], capture_output=True,
                               text=True, check=True).stdout.splitlines()
    assert sorted(untracked) == ["?? .gitignore", "?? mlbuild.lock", "?? mlbuild.toml"]


def test_a_path_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(DataError, match="not valid UTF-8"):
        toml_with_path(HEAD, "x", "data/caf\udce9.csv", CONFIG)


def test_an_odd_name_is_ignored_alone_and_a_pattern_is_not_taken_for_it(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    odd = ["a[1].csv", "back\\slash.csv", "st*r.csv", "q?.csv", "trailing ", "new\nline.csv"]
    # what a pattern made of those names would match: a file of code, a folder named by half a line
    bystanders = ["a1.csv", "backslash.csv", "stXr.csv", "qq.csv", "trailing", "new", "line.csv"]
    for name in odd + bystanders:
        (repo / name).write_text("1\n")
    subprocess.run(["git", "-C", str(repo), "add", "a1.csv"], check=True)
    assert not git.is_tracked(repo / "a[1].csv")          # a1.csv is tracked, not it
    for name in odd:
        assert git.ignore(repo, repo / name)
        assert git.ignore_entry(repo, repo / name) is None, name   # ignored now
    untracked = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--others", "--exclude-standard"],
                               capture_output=True, text=True, check=True).stdout.split("\0")
    assert sorted(p for p in untracked if p) == sorted([".gitignore", *bystanders[1:]])


def test_a_symlink_to_a_file_outside_the_repository_is_not_tracked(tmp_path: Path) -> None:
    """It was `git ls-files -- /elsewhere/x.csv` in the link's repository: git failed ("outside
    repository") and so did `data add` of a project's data/x.csv linked to a shared disk."""
    repo, far = tmp_path / "repo", tmp_path / "disk" / "x.csv"
    far.parent.mkdir()
    far.write_text("1\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "x.csv").symlink_to(far)
    assert not git.is_tracked(repo / "x.csv")
    subprocess.run(["git", "init", "-q", str(far.parent)], check=True)
    subprocess.run(["git", "-C", str(far.parent), "add", "x.csv"], check=True)
    assert git.is_tracked(repo / "x.csv")                # what it points at is in git


@pytest.mark.parametrize("given", [".", "..", "data/.."])
def test_the_project_folder_or_one_above_it_is_refused_as_a_dataset(tmp_path: Path, given: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`data add all .` in a git project answered "Untrack it first: `git rm -r --cached PROJECT`",
    which untracks the whole project; outside git it imported the code (and .git) as data."""
    from mlbuild.config import load_project
    from mlbuild.data.datasets import add

    root = tmp_path / "p"
    (root / "data").mkdir(parents=True)
    (root / "data" / "x.csv").write_text("1\n")
    (root / "mlbuild.toml").write_text('[project]\nname = "p"\n')
    before = (root / "mlbuild.toml").read_text()
    monkeypatch.chdir(root)
    import re

    with pytest.raises(DataError, match=f"^{re.escape(str(root / given))} holds the project itself "
                                        f"{re.escape(f'({root}/mlbuild.toml)')}"):
        add(load_project(root), "all", Path(given))
    assert (root / "mlbuild.toml").read_text() == before and not (root / "mlbuild.lock").exists()


@pytest.mark.parametrize(("given", "message"), [
    ("mlbuild.toml", "is the project's own mlbuild.toml, not data: data add would write it into .gitignore"),
    ("flake.nix", "is the project's own flake.nix, not data"),
    ("mlbuild.lock", "is the project's own mlbuild.lock, not data"),
    (".git", "is git's own folder, not data; give the file or folder that holds the data"),
    (".git/objects", "is in git's own folder ("),
    (".mlbuild/stat-x.json", "is in mlbuild's own folder ("),
])
def test_the_project_s_own_files_are_refused_as_a_dataset(tmp_path: Path, given: str, message: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`data add conf mlbuild.toml` before the project's first commit (git tracks nothing yet) pinned
    the config as data and wrote `/mlbuild.toml` into .gitignore: `git add -A` then left it out, and
    every build, which reads the commit, failed. `.git` was imported as data the same way."""
    from mlbuild.config import load_project
    from mlbuild.data.datasets import add

    root = tmp_path / "p"
    (root / ".mlbuild").mkdir(parents=True)
    (root / ".mlbuild" / "stat-x.json").write_text("{}\n")
    (root / "mlbuild.toml").write_text('[project]\nname = "p"\n')
    (root / "mlbuild.lock").write_text('{"version": 1}\n')
    (root / "flake.nix").write_text("{ }\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    before = {p: p.read_bytes() for p in root.iterdir() if p.is_file()}
    monkeypatch.chdir(root)
    with pytest.raises(DataError, match=re.escape(message)):
        add(load_project(root), "conf", Path(given))
    assert {p: p.read_bytes() for p in root.iterdir() if p.is_file()} == before


def test_data_diff_names_the_lock_s_commits_from_where_it_runs(tree, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A REV from before the dataset was pinned named `git log --oneline -- mlbuild.lock`, which
    run in a folder below the project (where mlbuild finds the project above) lists the commits
    of a lock there, none."""
    import json

    from click.testing import CliRunner

    from mlbuild import _nix
    from mlbuild.cli.main import cli

    lock = {"version": 1, "requirements": [], "wheels": [], "tools": [], "datasets": {},
            "interpreter": {"libraries": [], "command": "python3", "snapshot": {"name": "s", "sha256": "0" * 64}}}
    repo = tree({"ml": {"mlbuild.toml": '[project]\nname = "p"\n[datasets.raw]\npath = "data/raw"\n',
                        "mlbuild.lock": json.dumps(lock)}})
    run = dict(cwd=repo, check=True, capture_output=True)
    subprocess.run(["git", "init", "-q"], **run)   # type: ignore[call-overload]
    for step in ("before the pin", "pinned"):
        if step == "pinned":
            (repo / "ml" / "mlbuild.lock").write_text(json.dumps({**lock, "datasets": {"raw": {"sha256": "0" * 64}}}))
        subprocess.run(["git", "add", "-A"], **run)   # type: ignore[call-overload]
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", step], **run)  # type: ignore[call-overload]
    monkeypatch.setattr(_nix, "invalid_paths", lambda paths: [])   # the locked version is in the store
    (repo / "ml" / "src" / "deep").mkdir(parents=True)
    for where, command in ((repo / "ml", "git log --oneline -- mlbuild.lock"),
                           (repo / "ml" / "src" / "deep", "git -C ../.. log --oneline -- mlbuild.lock")):
        monkeypatch.chdir(where)
        out = CliRunner().invoke(cli, ["data", "diff", "raw", "HEAD~1"])
        assert out.exit_code == 1, out.output
        assert f"give a revision that pins it (`{command}` lists the lock's commits)" in out.output, out.output


@pytest.mark.parametrize("variable", ["NIX_CONFIG", "NIX_REMOTE"])
def test_data_diff_reads_the_pinned_files_where_a_runner_s_own_store_keeps_them(
        tree, monkeypatch, variable: str) -> None:  # type: ignore[no-untyped-def]
    """`NIX_CONFIG="store = /tmp/machine-b" mlbuild data diff raw` (a CI runner's store of its own)
    ended in a FileNotFoundError traceback for /nix/store/...-raw: the pinned files lie in
    /tmp/machine-b/nix/store. NIX_REMOTE=/tmp/machine-b is the same store for Nix."""
    import json

    from mlbuild import _nix
    from mlbuild.config import load_project
    from mlbuild.data.datasets import diff
    from mlbuild.nar import nar_sha256
    from mlbuild.storepath import fixed_output_path

    repo = tree({"p": {"mlbuild.toml": '[project]\nname = "p"\n[datasets.raw]\npath = "data/raw"\n',
                       "data": {"raw": {"a.csv": "1\n", "b.csv": "2\n"}}}}) / "p"
    sha = nar_sha256(str(repo / "data" / "raw"))
    (repo / "mlbuild.lock").write_text(json.dumps({
        "version": 1, "requirements": [], "wheels": [], "tools": [], "datasets": {"raw": {"sha256": sha, "kind": "path"}},
        "interpreter": {"libraries": [], "command": "python3", "snapshot": {"name": "s", "sha256": "0" * 64}}}))
    chroot = repo.parent / "machine-b"
    pinned = chroot / fixed_output_path(sha, "raw", recursive=True).lstrip("/")
    pinned.parent.mkdir(parents=True)
    (repo / "data" / "raw").rename(pinned)
    (repo / "data" / "raw").mkdir()
    (repo / "data" / "raw" / "a.csv").write_text("1\n")   # b.csv removed, c.csv added
    (repo / "data" / "raw" / "c.csv").write_text("3\n")
    monkeypatch.setattr(_nix, "invalid_paths", lambda paths: [])   # valid in that store
    monkeypatch.delenv("NIX_CONFIG", raising=False)
    monkeypatch.delenv("NIX_REMOTE", raising=False)
    monkeypatch.setenv(variable, f"store = {chroot}" if variable == "NIX_CONFIG" else str(chroot))
    assert [(d.path, d.change) for d in diff(load_project(repo), "raw")] == [("b.csv", "removed"), ("c.csv", "added")]
