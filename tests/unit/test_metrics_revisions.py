"""metrics diff/history at git revisions that cannot be built: refused or skipped before any build."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mlbuild import metrics as m
from mlbuild.config import Project, load_project
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


def test_history_in_a_shallow_clone_says_it_is_cut_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # CI checks out one commit (a depth-1 clone): history showed a point or two, and nothing said
    # that the commits before were missing.
    origin = tmp_path / "origin"
    origin.mkdir()
    _git(origin, "init", "-q")
    (origin / "v.py").write_text("")
    for lr in ("0.1", "0.2", "0.3"):
        (origin / "mlbuild.toml").write_text(TOML + f"[models.m.params]\nlr = {lr}\n")
        _git(origin, "add", "-A")
        _git(origin, "commit", "-qm", lr)
    _git(tmp_path, "clone", "-q", "--depth", "1", f"file://{origin}", "clone")
    clone = tmp_path / "clone"
    # no build: which revisions history asks for, and what it says
    monkeypatch.setattr(m, "_report", lambda project, model, rev, **kw: m.Point(rev, {"metrics": {"accuracy": 0.9}},
                                                                                 "/nix/store/x"))
    for root, shallow in ((origin, False), (clone, True)):
        notes: list[str] = []
        points = m.history(load_project(root), "m", notes)
        assert len(points) == (1 if shallow else 3)
        assert notes == ([f"note: this is a shallow clone (git clone --depth): commits before {points[0].rev[:10]} "
                          "are not in it, nor their metrics; `git fetch --unshallow` gives the whole history"]
                         if shallow else [])


def test_diff_names_the_revision_whose_build_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "Error: nix build of m.validation.report failed" of two revisions did not say which one.
    from mlbuild.errors import BuildError

    _git(tmp_path, "init", "-q")
    for lr in ("0.1", "0.2"):
        (tmp_path / "mlbuild.toml").write_text(TOML + f"[models.m.params]\nlr = {lr}\n")
        _git(tmp_path, "add", "-A")
        _git(tmp_path, "commit", "-qm", lr)

    def fake_report(project, model, rev, **kw):  # type: ignore[no-untyped-def]
        if rev == "HEAD":
            raise BuildError("nix build of m.validation.report failed", "RuntimeError: boom")
        return m.Point(rev, {"metrics": {"accuracy": 0.9}}, "/nix/store/x")

    monkeypatch.setattr(m, "_report", fake_report)
    with pytest.raises(BuildError, match=r"^at revision HEAD: nix build of m.validation.report failed\n"
                                         r"RuntimeError: boom$"):
        m.diff(load_project(tmp_path), "m", "HEAD~1", "HEAD")


def test_a_revision_whose_mlbuild_toml_is_broken_is_named_not_a_temporary_folder(tmp_path: Path) -> None:
    # diff said "Error: /tmp/mlbuild-rev-fqiru17w/rev/mlbuild.toml: not valid TOML: ...": a folder
    # gone once the command ended, and not which revision; history showed the same in its gap row.
    _git(tmp_path, "init", "-q")
    (tmp_path / "mlbuild.toml").write_text(TOML + "oops = [\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "broken")
    (tmp_path / "mlbuild.toml").write_text(TOML)
    _git(tmp_path, "commit", "-qam", "fixed")
    with pytest.raises(MlbuildError, match=r"^at revision HEAD~1: mlbuild.toml: not valid TOML: .* \(in that commit: "
                                           r"it cannot be validated as it was committed\)$") as e:
        m.diff(load_project(tmp_path), "m", "HEAD~1", "HEAD")
    assert "mlbuild-rev-" not in str(e.value)


def test_a_renamed_model_s_history_is_under_its_old_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # history of the new name said "its history there is under the old name", and `metrics history
    # OLD` (and `metrics diff OLD REV1 REV2`) refused: "'m' is not a model of p; declare [models.m]".
    _git(tmp_path, "init", "-q")
    for lr in ("0.1", "0.2"):
        (tmp_path / "mlbuild.toml").write_text(TOML + f"[models.m.params]\nlr = {lr}\n")
        _git(tmp_path, "add", "-A")
        _git(tmp_path, "commit", "-qm", lr)
    (tmp_path / "mlbuild.toml").write_text(TOML.replace("models.m", "models.n") + "[models.n.params]\nlr = 0.2\n")
    _git(tmp_path, "commit", "-qam", "rename m to n")
    seen: list[tuple[str, str]] = []

    def fake_report(project, model, rev, **kw):  # type: ignore[no-untyped-def]
        seen.append((model, rev))
        return m.Point(rev, {"metrics": {"accuracy": 0.9}}, "/nix/store/x")

    project = load_project(tmp_path)
    monkeypatch.setattr(m, "_report", fake_report)   # no build: which revisions are asked for, under which name
    notes: list[str] = []
    assert len(m.history(project, "n", notes)) == 1
    assert notes[0].endswith("its history there is under the old name (`mlbuild metrics history m`)")
    assert len(m.history(project, "m")) == 2
    m.diff(project, "m", "HEAD~2", "HEAD~1")
    assert [model for model, _ in seen] == ["n", "m", "m", "m", "m"]
    with pytest.raises(MlbuildError, match=r"^'x' is not a model of p \(models: n\)"):
        m.history(project, "x")
    with pytest.raises(MlbuildError, match=r"^'x' is not a model of p \(models: n\)"):
        m.diff(project, "x", "HEAD~2", "HEAD~1")


def test_history_has_a_row_for_a_commit_that_moves_the_project_to_another_mlbuild(tmp_path: Path) -> None:
    """A commit of flake.lock alone (`nix flake lock --update-input mlbuild`) builds the model with
    another mlbuild: other derivations, maybe other metrics. History left it out, and its last row
    was the commit before, built with the mlbuild before."""
    _git(tmp_path, "init", "-q")
    (tmp_path / "mlbuild.toml").write_text(TOML)
    (tmp_path / "m.py").write_text("x = 1\n")
    (tmp_path / "flake.nix").write_text("{ }\n")
    (tmp_path / "flake.lock").write_text('{"nodes": {"root": {}}, "root": "root", "version": 7}\n')
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "project")
    (tmp_path / "flake.lock").write_text('{"nodes": {"root": {"inputs": {}}}, "root": "root", "version": 7}\n')
    _git(tmp_path, "commit", "-qam", "another mlbuild")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    with pytest.raises(MlbuildError) as e:   # no mlbuild.lock: every commit is a gap, listed
        m.history(load_project(tmp_path), "m")
    assert f"  {head[:10]}: " in str(e.value), str(e.value)


def test_a_model_renamed_since_is_found_in_a_config_a_windows_editor_saved(tmp_path: Path) -> None:
    """mlbuild.toml committed with a byte order mark, as load_project and Nix read it: a model
    renamed since was looked up in that commit with tomllib, which refuses the mark, so `metrics
    history OLDNAME` said no such model ('its models: n') though the commit declares it."""
    (tmp_path / "m.py").write_text("")
    (tmp_path / "v.py").write_text("")
    (tmp_path / "mlbuild.toml").write_bytes(b"\xef\xbb\xbf" + TOML.replace("\n", "\r\n").encode())
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "m")
    (tmp_path / "mlbuild.toml").write_text(TOML.replace("models.m", "models.n"))
    _git(tmp_path, "commit", "-qam", "renamed")
    old = m._check_model(load_project(tmp_path), "m")
    assert "m" in old.raw["models"]


def test_history_roots_and_records_nothing_in_the_revisions_temporary_folders(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Each revision is built from a temporary snapshot (`git archive`), gone once its report is
    read: history rooted every report and derived dataset in the snapshot's .mlbuild/gcroots (five
    Nix calls a revision, 43% of a 182-commit history of a team's project, and as many dangling
    links in /nix/var/nix/gcroots/auto) and wrote a build record there. Nix runs at the seam: a
    `nix` that answers the build with a report folder."""
    from mlbuild import _nix

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "v.py").write_text("")
    example = Path(__file__).resolve().parents[2] / "examples" / "cancer"
    (repo / "mlbuild.lock").write_text((example / "mlbuild.lock").read_text())   # a real lock, for its [python]
    python = "[python]" + (example / "mlbuild.toml").read_text().split("[python]")[1].split("\n[")[0]
    for lr in ("0.1", "0.2", "0.3"):
        (repo / "mlbuild.toml").write_text(f"{TOML}\n{python}\n[models.m.params]\nlr = {lr}\n")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", lr)
    report = tmp_path / "report"
    report.mkdir()
    (report / "metrics.json").write_text('{"metrics": {"accuracy": 0.9}}')
    nix = tmp_path / "nix"
    nix.write_text(f"#!/bin/sh\n[ \"$1\" = --version ] && echo 'nix (Nix) 2.8.0' && exit 0\n"
                   f"echo '[{{\"drvPath\": \"/nix/store/{'a' * 32}-m-validation-report.drv\", "
                   f"\"outputs\": {{\"out\": \"{report}\"}}}}]'\n")
    nix.chmod(0o755)
    which = _nix._which
    monkeypatch.setattr(_nix, "_which", lambda tool: str(nix) if tool == "nix" else which(tool))
    monkeypatch.setenv("MLBUILD_STORE", str(tmp_path / "no-store"))
    monkeypatch.delenv("MLBUILD_NIX", raising=False)
    calls: list[str] = []
    monkeypatch.setattr(_nix, "add_roots", lambda paths, root_dir: calls.append(f"add_roots {root_dir}"))
    monkeypatch.setattr(_nix, "build_closure", lambda drvs, **kw: calls.append(f"build_closure {drvs}") or ([], []))
    monkeypatch.setattr(_nix, "closure_with_outputs", lambda drvs: calls.append(f"closure_with_outputs {drvs}") or [])
    points = m.history(load_project(repo), "m")
    assert [p.report for p in points] == [{"metrics": {"accuracy": 0.9}}] * 3
    assert calls == []
    assert not (repo / ".mlbuild" / "builds.jsonl").exists()


def test_history_of_an_old_name_names_the_new_one_and_not_other_renamed_models(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`metrics history OLD` of a model renamed since counted the commits after the rename as
    "earlier" ones and named every model renamed in the project's life as OLD's possible old name
    (a team's: "167 earlier commit(s) declare no model 'm6' but 'm1', 'm5', 'm6_r560', 'm8_r225', 'm9'"),
    never the new name; `metrics history NEW` named other renamed models beside the old name too."""
    two = TOML + TOML.split("\n\n", 1)[1].replace("models.m", "models.k")
    _git(tmp_path, "init", "-q")
    for lr in ("0.1", "0.2"):
        (tmp_path / "mlbuild.toml").write_text(two + f"[models.m.params]\nlr = {lr}\n")
        _git(tmp_path, "add", "-A")
        _git(tmp_path, "commit", "-qm", lr)
    (tmp_path / "mlbuild.toml").write_text(two.replace("models.m", "models.n"))
    _git(tmp_path, "commit", "-qam", "rename m to n")
    rename = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout[:10]
    (tmp_path / "mlbuild.toml").write_text(two.replace("models.m", "models.n").replace("models.k", "models.j"))
    _git(tmp_path, "commit", "-qam", "rename k to j")
    monkeypatch.setattr(m, "_report", lambda project, model, rev, **kw: m.Point(rev, {"metrics": {"accuracy": 0.9}},
                                                                                 "/nix/store/x"))
    notes: list[str] = []
    assert len(m.history(load_project(tmp_path), "m", notes)) == 2
    assert notes == [f"note: 2 later commit(s) declare no model 'm'; the first, {rename}, added 'n': if 'm' was "
                     f"renamed there, its history since is under the new name (`mlbuild metrics history n`)"]
    notes = []
    assert len(m.history(load_project(tmp_path), "n", notes)) == 2
    assert notes == ["note: 2 earlier commit(s) declare no model 'n' but 'm', which mlbuild.toml no longer has: if "
                     "'n' was renamed, its history there is under the old name (`mlbuild metrics history m`)"]


def test_a_revision_is_built_as_a_past_commit_against_the_worktree_s_pin(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """After `nix flake update` moved the project to a newer mlbuild, history and diff told the user
    to lock this mlbuild into the project for each commit from before (flakepin's advice is the
    worktree's). A revision's build now knows the worktree's pin, and the worktree's own build does not."""
    from mlbuild import flakepin

    def lock(rev: str) -> str:
        nodes = {"mlbuild": {"locked": {"path": f"/srv/mlbuild-{rev}", "type": "path"}},
                 "root": {"inputs": {"mlbuild": "mlbuild"}}}
        return json.dumps({"nodes": nodes, "root": "root", "version": 7}) + "\n"

    _git(tmp_path, "init", "-q")
    (tmp_path / "mlbuild.toml").write_text(TOML)
    (tmp_path / "m.py").write_text("x = 1\n")
    (tmp_path / "flake.nix").write_text("{ }\n")
    (tmp_path / "flake.lock").write_text(lock("old"))
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "project")
    (tmp_path / "flake.lock").write_text(lock("new"))
    _git(tmp_path, "commit", "-qam", "upgrade mlbuild")
    seen: dict[str, str | None] = {}

    def report(project: Project, model: str, rev: str, **kw: object) -> m.Point:
        seen[rev] = flakepin._WORKTREE_PIN.get()
        return m.Point(rev, {"metrics": {"accuracy": 1.0}}, "")

    monkeypatch.setattr(m, "_report", report)
    project = load_project(tmp_path)
    m.diff(project, "m", "HEAD~1", "HEAD")
    m.show(project, "m")
    worktree = json.dumps({"path": "/srv/mlbuild-new", "type": "path"}, sort_keys=True)
    assert seen == {"HEAD~1": worktree, "HEAD": worktree, "worktree": None}
