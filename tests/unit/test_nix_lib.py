"""The Nix library's own unit tests (nix/tests/default.nix), evaluated by real Nix (nothing built)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import REPO, have_nix

pytestmark = pytest.mark.skipif(not have_nix(), reason="needs nix (bash .ci/setup installs it)")


def cases() -> dict:
    out = subprocess.run(["nix", "--extra-experimental-features", "nix-command", "eval", "--json", "-f",
                          str(REPO / "nix" / "tests")], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


_CASES = cases() if have_nix() else {}


@pytest.mark.parametrize("name", sorted(_CASES) or ["none"])
def test_nix_case(name: str) -> None:
    case = _CASES[name]
    assert case["ok"], f"{name}: got {case['got']!r}, expected {case['expected']!r}"


@pytest.mark.skipif(not have_nix(), reason="needs nix")
def test_a_toml_syntax_error_names_the_file(tmp_path) -> None:
    """fromTOML's own message shows the bad line but not the file; mlbuild adds it (shown by
    default from Nix 2.20 on, with --show-trace before)."""
    bad = tmp_path / "mlbuild.toml"
    bad.write_text('[project]\nname = "x\n')
    expr = f'(import {REPO / "nix" / "lib.nix"}).readTOML {bad} "create it"'
    out = subprocess.run(["nix", "--extra-experimental-features", "nix-command", "eval", "--show-trace",
                          "--impure", "--expr", expr], capture_output=True, text=True)
    assert out.returncode != 0 and f"while reading {bad} (mlbuild: fix the TOML there)" in out.stderr, out.stderr
