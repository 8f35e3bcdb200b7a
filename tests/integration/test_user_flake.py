"""A project's own flake: `outputs = { self, mlbuild }: mlbuild.lib.flakeOutputs { inherit self; src = ./.; }`.

Built with `nix build`, it gives the same store paths as `mlbuild build` in the same folder: with
the mlbuild its flake.lock pins, and marked dirty from a dirty tree as the driver marks it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, have_nix, run_cli
from tests.integration.conftest import commit_all, git, git_repo, nix

pytestmark = pytest.mark.skipif(not have_nix(), reason="needs Nix")


def test_a_project_flake_builds_what_the_driver_builds(digits_repo: Path, tmp_path: Path) -> None:
    user = tmp_path / "user"
    shutil.copytree(digits_repo, user, ignore=shutil.ignore_patterns(".git", ".mlbuild", "result*"))
    (user / "flake.nix").write_text(
        "{\n  inputs.mlbuild.url = \"git+file://" + str(REPO) + "\";\n"
        "  outputs = { self, mlbuild }: mlbuild.lib.flakeOutputs { src = ./.; };\n}\n")
    git_repo(user)
    for attr in ("packages", "apps", "checks"):
        shown = json.loads(nix("eval", "--json", f".#{attr}.x86_64-linux", "--apply", "builtins.attrNames",
                               cwd=user).stdout)
        assert shown == {"packages": ["default", "digits"], "apps": ["default", "serve-digits"],
                         "checks": ["digits-notebook-explore", "digits-validation"]}[attr]
    built = json.loads(nix("build", "--no-link", "--json", ".#digits", cwd=user).stdout)[0]["outputs"]["out"]
    driver = run_cli("build", "digits", cwd=digits_repo).stdout.split("\t")[1].split("\n")[0]
    assert built == driver
    # serve-digits deploys the release: the package once its validation gate passed
    program = json.loads(nix("eval", "--json", ".#apps.x86_64-linux.serve-digits.program", cwd=user).stdout)
    release = json.loads(nix("eval", "--json", ".#digits.release.outPath", cwd=user).stdout)
    assert program == f"{release}/package/bin/serve"
    assert "flake.lock" in git(user, "status", "--porcelain")  # nix locked the mlbuild input
    # A file the folder has but git does not track is not in the flake: the error says `git add`.
    git(user, "rm", "-q", "--cached", "mlbuild.lock", "model.py")
    for attr, name in (("digits", "mlbuild.lock"), ("digits.model", "model.py")):
        if name == "model.py":
            git(user, "add", "mlbuild.lock")
        err = nix("eval", f".#{attr}.drvPath", cwd=user, check=False).stderr
        assert f"if {name} is in your folder, `git add` it" in err, err


def _user_project(digits_repo: Path, user: Path, mlbuild_url: str) -> Path:
    shutil.copytree(digits_repo, user, ignore=shutil.ignore_patterns(".git", ".mlbuild", "result*"))
    (user / "flake.nix").write_text(
        "{\n  inputs.mlbuild.url = \"" + mlbuild_url + "\";\n"
        "  outputs = { self, mlbuild }: mlbuild.lib.flakeOutputs { inherit self; src = ./.; };\n}\n")
    git_repo(user)
    nix("flake", "lock", cwd=user)
    commit_all(user, "lock")
    return user


def test_the_driver_builds_with_the_mlbuild_the_flake_pins(digits_repo: Path, tmp_path: Path) -> None:
    """A project pinned to another mlbuild (here: one whose server differs by a comment): `mlbuild
    build` used its own Nix library and gave other store paths than `nix build`, without a word."""
    pinned = tmp_path / "pinned-mlbuild"
    subprocess.run(["git", "clone", "-q", str(REPO), str(pinned)], check=True)
    app = pinned / "mlbuild" / "runtime" / "serve" / "app.py"
    app.write_text(app.read_text() + "# the pinned revision\n")
    git(pinned, "add", "-A")   # dated before this checkout's HEAD: an older mlbuild, not one this CLI is behind
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a pinned mlbuild"], cwd=pinned,
                   check=True, env={**os.environ, "GIT_COMMITTER_DATE": "2001-01-01T00:00:00Z"})
    user = _user_project(digits_repo, tmp_path / "user", f"git+file://{pinned}")
    built = json.loads(nix("build", "--no-link", "--json", ".#digits", cwd=user).stdout)[0]["outputs"]["out"]
    proc = run_cli("build", "digits", cwd=user)
    assert proc.stdout.split("\t")[1].split("\n")[0] == built
    assert "building with the mlbuild input flake.lock pins (git file://" in proc.stderr
    assert f"nix flake lock --override-input mlbuild git+file://{REPO}" in proc.stderr
    # the driver's own library gives the other package (the comment is in the server it runs)
    own = run_cli("build", "digits", cwd=digits_repo).stdout.split("\t")[1].split("\n")[0]
    assert own != built
    # A lock naming an input that is not mlbuild is an error naming it, not a silent fallback.
    lock = json.loads((user / "flake.lock").read_text())
    node = lock["nodes"]["root"]["inputs"]["mlbuild"]
    (user / "flake.lock").write_text(json.dumps({**lock, "nodes": {**lock["nodes"], node: {
        **lock["nodes"][node], "locked": {"type": "path", "path": str(tmp_path / "user" / "data")}}}}))
    bad = run_cli("build", "--allow-dirty", "digits", cwd=user, check=False)
    assert bad.returncode == 1 and "has no nix/entry.nix" in bad.stderr and "it is not mlbuild" in bad.stderr


def test_an_edited_mlbuild_url_is_locked_before_the_driver_builds(digits_repo: Path, tmp_path: Path) -> None:
    """Upgrading by editing inputs.mlbuild.url and committing flake.nix without `nix flake lock`:
    `nix build` locked the new url and built with it, `mlbuild build` with the old pin, silently."""
    moved = tmp_path / "moved-mlbuild"
    subprocess.run(["git", "clone", "-q", str(REPO), str(moved)], check=True)
    app = moved / "mlbuild" / "runtime" / "serve" / "app.py"
    app.write_text(app.read_text() + "# the release the url now names\n")
    commit_all(moved, "a moved mlbuild")
    user = _user_project(digits_repo, tmp_path / "user", f"git+file://{REPO}")
    (user / "flake.nix").write_text((user / "flake.nix").read_text().replace(f"git+file://{REPO}", f"git+file://{moved}"))
    commit_all(user, "mlbuild from its new home")
    refused = run_cli("build", "digits", cwd=user, check=False)
    assert refused.returncode == 1 and f'sets inputs.mlbuild.url = "git+file://{moved}", but flake.lock pins the ' \
        f"mlbuild input from git file://{REPO}" in refused.stderr and "run `nix flake lock`" in refused.stderr
    nix("flake", "lock", cwd=user)
    commit_all(user, "lock it")
    built = json.loads(nix("build", "--no-link", "--json", ".#digits", cwd=user).stdout)[0]["outputs"]["out"]
    proc = run_cli("build", "digits", cwd=user)
    assert proc.stdout.split("\t")[1].split("\n")[0] == built
    # a later commit than this CLI's (by its time: this checkout does not hold it): upgrade the CLI
    assert f"it is newer than this mlbuild ({REPO}), which the project has moved past: upgrade this one" in proc.stderr


def test_a_flake_build_from_a_dirty_tree_is_marked_dirty(digits_repo: Path, tmp_path: Path) -> None:
    """`nix build` from uncommitted changes recorded "dirty": false; the driver marks it dirty."""
    user = _user_project(digits_repo, tmp_path / "user", f"git+file://{REPO}")
    clean = json.loads(nix("build", "--no-link", "--json", ".#digits.model", cwd=user).stdout)[0]["outputs"]["out"]
    assert json.loads((Path(clean) / "provenance.json").read_text())["git"]["dirty"] is False
    with open(user / "model.py", "a") as f:
        f.write("# an uncommitted change\n")
    dirty = json.loads(nix("build", "--no-link", "--json", ".#digits.model", cwd=user).stdout)[0]["outputs"]["out"]
    assert dirty != clean and json.loads((Path(dirty) / "provenance.json").read_text())["git"]["dirty"] is True
    driver = run_cli("build", "--allow-dirty", "digits.model", cwd=user).stdout.split("\t")[1].split("\n")[0]
    assert driver == dirty
    # `nix run .#digits` serves (meta.mainProgram), as `nix run .#serve-digits` does
    assert "usage: serve" in nix("run", ".#digits", "--", "--help", cwd=user).stdout
