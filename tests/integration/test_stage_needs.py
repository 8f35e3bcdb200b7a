"""A stage whose Python distributions the lock lacks is refused by name, before anything builds.

The examples list the serving stack in [python].requirements; a new project that does not used to
get a package whose bin/serve died with `ModuleNotFoundError: No module named 'uvicorn'`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import have_nix, run_cli, write_tree
from tests.integration.conftest import small_project_tree

pytestmark = pytest.mark.skipif(not have_nix(), reason="needs Nix")

FIX = "to [python].requirements in mlbuild.toml, then run `mlbuild lock` and `mlbuild prefetch`"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """numpy and safetensors locked (no torch, no server), one model and one notebook declared."""
    tree = small_project_tree(name="needs")
    tree["mlbuild.toml"] += ('\n[datasets.raw]\npath = "raw.csv"\n\n[models.m]\nscript = "m.py"\ndatasets = ["raw"]\n'
                             '\n[notebooks.explore]\npath = "explore.ipynb"\n')
    tree["m.py"] = "def build_model(params): ...\ndef train(ctx): ...\n"
    tree["explore.ipynb"] = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}\n'
    tree["raw.csv"] = "1,2\n"
    root = write_tree(tmp_path_factory.mktemp("needs"), tree)
    run_cli("lock", cwd=root)
    run_cli("data", "add", "raw", "raw.csv", cwd=root)
    return root


@pytest.mark.parametrize(("target", "message"), [
    ("m.model", "training [models.m] needs torch from PyPI, which mlbuild.lock does not have; add it "),
    ("m", "the server of [models.m] (its package) needs torch, starlette, uvicorn, prometheus-client from PyPI, "
          "which mlbuild.lock does not have; add them "),
    ("notebooks.explore", "running [notebooks.explore] needs nbclient, nbformat, ipykernel from PyPI"),
])
def test_missing_distributions_are_named_with_the_fix(project: Path, target: str, message: str) -> None:
    proc = run_cli("build", "--allow-dirty", target, cwd=project, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr and FIX in proc.stderr, proc.stderr
    assert "failed to build" not in proc.stderr and ".drv' failed" not in proc.stderr  # refused, not built
