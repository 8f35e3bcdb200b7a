"""A project's own flake: `outputs = { self, mlbuild }: mlbuild.lib.flakeOutputs { src = ./.; }`.

Built with `nix build`, it gives the same store paths as `mlbuild build` in the same folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, have_nix, run_cli
from tests.integration.conftest import git, git_repo, nix

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
    program = json.loads(nix("eval", "--json", ".#apps.x86_64-linux.serve-digits.program", cwd=user).stdout)
    assert program == f"{built}/bin/serve"
    assert "flake.lock" in git(user, "status", "--porcelain")  # nix locked the mlbuild input
