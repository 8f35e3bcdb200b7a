"""The image driver without Nix: engine choice, load output, skopeo destinations, and the
errors that name what to install or fix."""

from __future__ import annotations

import os
import re
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
    ("registry.example.com/team/digits:v1", "docker://registry.example.com/team/digits:v1"),
    ("localhost:5000/digits:v1", "docker://localhost:5000/digits:v1"),
    ("localhost/digits", "docker://localhost/digits"),
    ("team/digits@sha256:" + "a" * 64, "docker://team/digits@sha256:" + "a" * 64),
    ("oci-archive:/tmp/d.tar", "oci-archive:/tmp/d.tar"),
    ("docker-archive:/tmp/d.tar:digits:v1", "docker-archive:/tmp/d.tar:digits:v1"),
    ("docker-daemon:digits:v1", "docker-daemon:digits:v1"),
    ("containers-storage:digits:v1", "containers-storage:digits:v1"),
])
def test_destination(ref: str, dest: str) -> None:
    assert img.destination(ref) == dest


@pytest.mark.parametrize("ref, why", [
    ("ocii:/tmp/x", "looks like a mistyped transport (did you mean oci:/tmp/x?)"),
    ("OCI:/tmp/x", "looks like a mistyped transport (did you mean oci:/tmp/x?)"),
    ("docker:digits:v1", "looks like a mistyped transport (did you mean docker://digits:v1?)"),
    ("oci/tmp/x", "did you mean oci:/tmp/x?); to push to a registry by that name, write docker://oci/tmp/x"),
    ("dir/tmp/x", "did you mean dir:/tmp/x?)"),
    ("oci-archiv:/tmp/x.tar", "did you mean oci-archive:/tmp/x.tar?)"),
    ("/tmp/x", "'/tmp/x' is a file path, not an image reference: write oci:/tmp/x (an OCI layout) or dir:/tmp/x"),
    ("./out", "is a file path"),
    ("https://registry.example.com/digits:v1", "a registry is named without a scheme"),
    ("Registry.example.com/Team/Digits:v1", "is neither a registry reference"),
    ("digits:v1:extra", "is neither a registry reference"),
])
def test_destination_refuses_typos_and_paths(ref: str, why: str) -> None:
    """Each would otherwise go to a registry (`oci/tmp/x` to Docker Hub)."""
    with pytest.raises(img.ImageError) as e:
        img.destination(ref)
    assert why in str(e.value)
    assert str(e.value).endswith("Skopeo destinations start with one of docker://, oci:, oci-archive:, dir:, "
                                 "docker-archive:, docker-daemon:, containers-storage:")


@pytest.mark.parametrize("ref, why", [
    ("docker://Digits:v1", "'Digits:v1' is not a registry reference ([registry[:port]/]name[:tag], lowercase names, "
                           "e.g. docker://registry.example.com/team/digits:v1); image names are lowercase: "
                           "docker://digits:v1"),
    ("docker://", "'docker://': '' is not a registry reference"),
    ("docker://localhost:5000/digits:", "'localhost:5000/digits:' is not a registry reference"),
    ("docker://docker://localhost:5000/digits:v1", "'docker://localhost:5000/digits:v1' is not a registry reference"),
    ("docker-daemon:", "'docker-daemon:': '' is not a registry reference"),
    ("docker-daemon:Digits:v1", "image names are lowercase: docker-daemon:digits:v1"),
    ("docker-daemon:localhost:5000/digits", "names no tag, which docker-daemon: needs; write e.g. "
                                            "docker-daemon:localhost:5000/digits:v1"),
    ("docker-daemon:digits@sha256:" + "a" * 64, "names no tag, which docker-daemon: needs (not a digest); write "
                                                "e.g. docker-daemon:digits:v1"),
    ("docker://localhost:5000/digits:v1@sha256:" + "a" * 64, "names both a tag and a digest, which skopeo cannot "
                                                              "push to; write docker://localhost:5000/digits:v1"),
    ("localhost:5000/digits:v1@sha256:" + "a" * 64, "names both a tag and a digest, which skopeo cannot push to; "
                                                    "write localhost:5000/digits:v1 (the digest it gets is printed)"),
])
def test_a_registry_transport_needs_a_registry_reference(ref: str, why: str) -> None:
    """skopeo refused these only after the build (`invalid reference format: repository name must
    be lowercase`, `... has neither a tag nor a digest`, `Docker references with both a tag and
    digest are currently not supported`, `a destination must be a name:tag`)."""
    with pytest.raises(img.ImageError) as e:
        img.destination(ref)
    assert why in str(e.value)


@pytest.mark.parametrize("ref, lower", [
    ("Digits:v1", "digits:v1"),
    ("localhost:5000/Team/Digits:V1", "localhost:5000/team/digits:V1"),   # the tag keeps its case
])
def test_an_uppercase_name_is_named_with_its_lowercase(ref: str, lower: str) -> None:
    with pytest.raises(img.ImageError, match=re.escape(f"(image names are lowercase: {lower})")):
        img.destination(ref)
    assert img.destination(lower) == "docker://" + lower


@pytest.mark.parametrize("ref", ["oci:", "dir:", "oci::v1", "oci-archive:", "docker-archive: "])
def test_a_path_transport_needs_a_path(ref: str) -> None:
    """skopeo failed later with `initializing destination oci::: mkdir : no such file or directory`."""
    with pytest.raises(img.ImageError, match=f"{re.escape(repr(ref))} names no path; write "):
        img.destination(ref)


@pytest.mark.parametrize("transport", ["oci:", "dir:", "oci-archive:", "docker-archive:"])
def test_a_path_in_a_missing_folder_is_refused_naming_it(tmp_path: Path, transport: str) -> None:
    """skopeo makes only the last part of the path: `lstat /tmp/x/nonexist: no such file or directory`."""
    missing = tmp_path / "nonexist" / "deep"
    with pytest.raises(img.ImageError) as e:
        img.destination(f"{transport}{missing / 'x'}:v1")
    assert f"the folder {missing} does not exist" in str(e.value) and f"`mkdir -p {missing}`" in str(e.value)
    assert img.destination(f"{transport}{tmp_path / 'x'}") == f"{transport}{tmp_path / 'x'}"   # its folder exists


@pytest.mark.parametrize("transport", ["oci:", "dir:", "oci-archive:", "docker-archive:"])
def test_a_path_under_home_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, transport: str) -> None:
    """No shell expands ~ after oci:; the folder check did, then skopeo, after the build, failed
    with `lstat <cwd>/~: no such file or directory`."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "images").mkdir()
    assert img.destination(f"{transport}~/images/digits:v1") == f"{transport}{tmp_path}/images/digits:v1"
    with pytest.raises(img.ImageError, match=f"the folder {tmp_path}/missing does not exist"):
        img.destination(f"{transport}~/missing/digits")


def test_no_tls_verify_reaches_skopeo_for_registries_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    skopeo = tmp_path / "skopeo"
    skopeo.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'args'}\n")
    skopeo.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(img, "read_archive", lambda archive: None)
    img.push_image(tmp_path / "image.tar", "localhost:5000/digits:v1", tls_verify=False)
    img.push_image(tmp_path / "image.tar", "oci:/tmp/layout:v1", tls_verify=False)
    first, second = (tmp_path / "args").read_text().splitlines()
    assert "--dest-tls-verify=false" in first and first.endswith("docker://localhost:5000/digits:v1")
    assert "--dest-tls-verify" not in second


def test_destination_refuses_a_bare_name_that_is_a_file_here(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    with pytest.raises(img.ImageError, match="'out' is a file or folder here.*oci:out.*docker://out"):
        img.destination("out")
    assert img.destination("docker://out") == "docker://out"


def test_push_to_docker_daemon_without_a_daemon_names_the_cause(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """skopeo 1.9 says only "read/write on closed pipe" when no Docker engine answers."""
    skopeo = tmp_path / "skopeo"
    skopeo.write_text("#!/bin/sh\necho 'time=\"x\" level=fatal msg=\"writing blob: io: read/write on closed pipe\"' >&2\n"
                      "exit 1\n")
    skopeo.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(img, "read_archive", lambda archive: None)
    with pytest.raises(img.ImageError) as e:
        img.push_image(tmp_path / "image.tar", "docker-daemon:digits:v1")
    msg = str(e.value)
    assert "read/write on closed pipe" in msg
    assert "no Docker engine answers at unix:///var/run/docker.sock (the default; set DOCKER_HOST" in msg
    assert "docker-archive:" in msg
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.9:2375")
    with pytest.raises(img.ImageError) as e:
        img.push_image(tmp_path / "image.tar", "docker-daemon:digits:v1")
    assert "no Docker engine answers at tcp://10.0.0.9:2375 (DOCKER_HOST, passed to skopeo" in str(e.value)
    with pytest.raises(img.ImageError) as e:
        img.push_image(tmp_path / "image.tar", "oci:/tmp/layout:v1")
    assert "Docker engine" not in str(e.value)


def test_cli_refuses_a_mistyped_destination_before_building(tree) -> None:  # type: ignore[no-untyped-def]
    root = tree({"mlbuild.toml": '[project]\nname = "p"\n\n[models.digits]\nscript = "model.py"\n'})
    proc = run_cli("image", "push", "digits", "oci/tmp/x", cwd=root, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "Error: 'oci/tmp/x' looks like a mistyped transport (did you mean oci:/tmp/x?)" in proc.stderr


def test_cli_refuses_an_uppercase_docker_reference_before_building(tree) -> None:  # type: ignore[no-untyped-def]
    root = tree({"mlbuild.toml": '[project]\nname = "p"\n\n[models.digits]\nscript = "model.py"\n'})
    proc = run_cli("image", "push", "digits", "docker://localhost:5000/Digits:v1", cwd=root, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "skopeo copy" not in proc.stderr
    assert "image names are lowercase: docker://localhost:5000/digits:v1" in proc.stderr


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
    with pytest.raises(img.ImageError, match=r"'lxc' \(MLBUILD_ENGINE\) is not supported; use one of podman, docker"):
        img.find_engine()


def test_engine_that_does_not_answer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A docker CLI without a running engine (as on this machine) is skipped with a reason."""
    docker = tmp_path / "docker"
    docker.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(img.EngineNotFoundError, match="docker: installed but not working") as e:
        img.find_engine("docker")
    # --engine docker: starting docker is the fix (it said "Install podman", though podman was there)
    assert "Start docker's engine, or leave out --engine" in str(e.value) and "Install podman" not in str(e.value)


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


def test_a_wanted_engine_that_is_missing_says_install_and_names_where_it_was_chosen(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("MLBUILD_ENGINE", "docker")
    with pytest.raises(img.EngineNotFoundError) as e:
        img.find_engine()
    assert "docker: not installed). Install docker, or unset MLBUILD_ENGINE to use whichever works" in str(e.value)


def test_an_image_podman_holds_already_is_not_loaded_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`mlbuild image load MODEL` of an image loaded before ran `podman load` again, which read and
    stored every layer (~6 s for digits) to tag the same image. When podman holds the archive's
    image (its ID is the config's digest) under the archive's name, the reference is printed as
    `podman load` prints it; another image under that name, or none, is loaded; docker always is."""
    from tests.unit.test_image_archive import fake_image_inputs, make_image

    archive = make_image(fake_image_inputs(tmp_path), tmp_path / "digits.tar")
    info = img.read_archive(archive)
    assert info.config_digest.startswith("sha256:") and info.reference == "digits:t1"
    log = tmp_path / "calls"
    for engine in ("podman", "docker"):
        fake = tmp_path / "bin" / engine
        fake.parent.mkdir(exist_ok=True)
        fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n'
                        'case "$1" in\n'
                        '  load) echo "Loaded image: docker.io/library/digits:t1";;\n'
                        '  image) [ -n "$HELD" ] || exit 125; echo "$HELD";;\n'
                        'esac\n')
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    held = info.config_digest.removeprefix("sha256:")
    for engine, there, loads in (
            ("podman", f"{held} docker.io/library/digits:t1 localhost/other:v1", False),
            ("podman", f"{'0' * 64} docker.io/library/digits:t1", True),   # the name tags another image now
            ("podman", "", True),                                          # not there
            ("docker", f"sha256:{held} digits:t1", True)):
        log.write_text("")
        monkeypatch.setenv("HELD", there)
        loaded = img.load_image(archive, engine)
        assert loaded.reference == "docker.io/library/digits:t1" and loaded.engine == engine
        assert (f"load -i {archive}" in log.read_text()) == loads
        # what `mlbuild image load` prints: it said "loaded ... into podman" of an image it did not load
        assert loaded.fresh == loads
        assert loaded.note == (f"loaded {archive} into {engine}" if loads else
                               f"podman holds the image of {archive} already (the same image ID, under its name): "
                               "not loaded again")


def test_no_tls_verify_for_a_destination_that_is_no_registry_is_said_to_change_nothing(tmp_path: Path) -> None:
    """`image push digits oci:/srv/x:v1 --no-tls-verify` dropped the option without a word (skopeo
    verifies no TLS there), so a user could not tell it changed nothing."""
    from tests.conftest import run_cli

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "mlbuild.toml").write_text('[project]\nname = "p"\n[models.digits]\nscript = "m.py"\n')
    env = {"PATH": "/nonexistent"}   # no skopeo: the push stops before any build
    proc = run_cli("image", "push", "digits", f"oci:{tmp_path}/layout:v1", "--no-tls-verify", cwd=tmp_path / "p",
                   check=False, env=env)
    assert f"mlbuild: warning: --no-tls-verify is for a registry (docker://); oci:{tmp_path}/layout:v1 is not one, " \
           "so it changes nothing" in proc.stderr and proc.returncode == 1, proc.stderr
    proc = run_cli("image", "push", "digits", "localhost:5000/digits:v1", "--no-tls-verify", cwd=tmp_path / "p",
                   check=False, env=env)
    assert "--no-tls-verify is for" not in proc.stderr and proc.returncode == 1, proc.stderr
