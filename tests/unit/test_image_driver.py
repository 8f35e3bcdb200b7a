"""The image driver without Nix: engine choice, load output, skopeo destinations, and the
errors that name what to install or fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlbuild import image as img
from tests.conftest import run_cli


@pytest.mark.parametrize("output, ref", [
    ("Getting image source signatures\nLoaded image: docker.io/library/digits:abc\n", "docker.io/library/digits:abc"),
    ("Loaded image(s): localhost/digits:abc\n", "localhost/digits:abc"),
    ("Loaded image: digits:abc\n", "digits:abc"),
    ("nothing useful\n", None),
])
def test_parse_loaded(output: str, ref: str | None) -> None:
    assert img.parse_loaded(output) == ref


@pytest.mark.parametrize("ref, dest", [
    ("registry.example.com:5000/team/digits:v1", "docker://registry.example.com:5000/team/digits:v1"),
    ("digits:v1", "docker://digits:v1"),
    ("oci:/tmp/layout:v1", "oci:/tmp/layout:v1"),
    ("docker://quay.io/x/y:z", "docker://quay.io/x/y:z"),
    ("dir:/tmp/d", "dir:/tmp/d"),
])
def test_destination(ref: str, dest: str) -> None:
    assert img.destination(ref) == dest


def test_destination_refuses_an_option() -> None:
    with pytest.raises(img.ImageError, match="'--force' is not an image reference"):
        img.destination("--force")


def test_no_engine_names_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("MLBUILD_ENGINE", raising=False)
    with pytest.raises(img.EngineNotFoundError) as e:
        img.find_engine()
    assert "podman: not installed" in str(e.value) and "apt-get install podman" in str(e.value)


def test_unknown_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLBUILD_ENGINE", "lxc")
    with pytest.raises(img.ImageError, match="'lxc' is not supported; use one of podman, docker"):
        img.find_engine()


def test_engine_that_does_not_answer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A docker CLI without a running engine (as on this machine) is skipped with a reason."""
    docker = tmp_path / "docker"
    docker.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(img.EngineNotFoundError, match="docker: installed but not working"):
        img.find_engine("docker")


def test_push_without_skopeo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(img.SkopeoNotFoundError, match="apt-get install skopeo"):
        img.push_image(tmp_path / "image.tar", "registry.example.com/digits:v1")


def test_read_archive_of_something_else(tmp_path: Path) -> None:
    bad = tmp_path / "not-an-image.tar"
    bad.write_bytes(b"hello")
    with pytest.raises(img.ImageError, match="not-an-image.tar is not an mlbuild image archive"):
        img.read_archive(bad)


def test_cli_names_an_unknown_model(tree) -> None:  # type: ignore[no-untyped-def]
    root = tree({"mlbuild.toml": '[project]\nname = "p"\n\n[models.digits]\nscript = "model.py"\n'})
    for args in (["image", "load", "digts"], ["image", "push", "digts", "registry.example.com/x:y"]):
        proc = run_cli(*args, cwd=root, check=False, env={"PATH": os.environ["PATH"]})
        assert proc.returncode == 1
        assert "Error: 'digts' is not a model of p (models: digits)" in proc.stderr


def test_cli_help_lists_load_and_push() -> None:
    out = run_cli("image", "--help").stdout
    assert "load" in out and "push" in out
