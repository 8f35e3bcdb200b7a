"""NAR hashing and Nix base-32, against values Nix itself printed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mlbuild.nar import from_nix_base32, nar_sha256, nix_base32
from tests.conftest import write_tree


def _fixture(root: Path) -> Path:
    d = write_tree(root / "d", {"a": "hi\n", "sub": {"b": "x" * 13}})
    os.chmod(d / "sub" / "b", 0o755)
    os.symlink("a", d / "l")
    return d


def test_nar_hash_matches_nix_golden(tmp_path: Path) -> None:
    # `nix-hash --type sha256 d` on this tree printed this value.
    assert nar_sha256(str(_fixture(tmp_path))) == "a56770246f1b9adb00a804c967911d120f5fd86a4ac7540ef4abc5ffe82e8fcc"


def test_flat_file_nar(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"")
    assert len(nar_sha256(str(f))) == 64
    f.write_bytes(b"a")
    other = nar_sha256(str(f))
    os.chmod(f, 0o755)
    assert nar_sha256(str(f)) != other  # the executable bit is part of the NAR


@pytest.mark.skipif(shutil.which("nix-hash") is None, reason="needs nix-hash")
def test_nar_hash_matches_live_nix(tmp_path: Path) -> None:
    d = write_tree(tmp_path / "t", {"x": {"y": b"\0" * 1000, "z": "zz"}, "e": ""})
    out = subprocess.run(["nix-hash", "--type", "sha256", str(d)], capture_output=True, text=True, check=True)
    assert nar_sha256(str(d)) == out.stdout.strip()


def test_base32_golden_and_roundtrip() -> None:
    digest = bytes.fromhex("a56770246f1b9adb00a804c967911d120f5fd86a4ac7540ef4abc5ffe82e8fcc")
    assert nix_base32(digest) == "1k4g5vlgzidbyh759isadbc5y3qj3n8ngj84m00dp6hvdwj70rx5"
    assert from_nix_base32(nix_base32(digest)) == digest
    for n in (1, 20, 32, 64):
        d = bytes(range(n))
        assert from_nix_base32(nix_base32(d)) == d


def test_special_file_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="fifo"):
        nar_sha256(str(tmp_path))
