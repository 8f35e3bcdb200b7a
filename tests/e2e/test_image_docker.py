"""The digits image in Docker: `mlbuild image load digits --engine docker` into a real dockerd
(Debian's docker.io, started here on a private socket and data root), then run by Docker and asked
for predictions over HTTP by the real OIP v2 client. podman is tested in test_image.py; this is
the `docker load` half of issue 8."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.conftest import build_path, run_cli
from tests.e2e.test_image import forward, free_port, wait_ready
from tests.integration.conftest import digits_repo  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.torch]


@pytest.fixture(scope="module")
def docker_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A dockerd of our own: overlay2 storage in a temp folder, no bridge and no iptables (the
    containers use the host's network), a unix socket that DOCKER_HOST names."""
    dockerd = shutil.which("dockerd")
    if dockerd is None or shutil.which("docker") is None:
        if os.environ.get("CI"):
            pytest.fail("docker is not installed: `bash .ci/setup` installs docker.io")
        pytest.skip("docker is not installed (run `bash .ci/setup`)")
    # Short paths: a unix socket path is limited to 107 bytes.
    root = Path(os.environ.get("MLBUILD_TEST_DOCKER_DIR", "/var/tmp")) / f"mlbuild-dockerd-{os.getpid()}"
    root.mkdir(parents=True, exist_ok=True)
    env = {"DOCKER_HOST": f"unix://{root}/docker.sock"}
    log = open(root / "dockerd.log", "w")
    proc = subprocess.Popen(
        [dockerd, "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
         "--pidfile", str(root / "dockerd.pid"), "-H", env["DOCKER_HOST"], "--storage-driver", "overlay2",
         "--iptables=false", "--ip6tables=false", "--bridge=none"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "info"], env={**os.environ, **env}, capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("dockerd did not start:\n" + (root / "dockerd.log").read_text()[-3000:])
            time.sleep(0.5)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for m in sorted((m for m in mounts if m.startswith(f"{root}/")), reverse=True):   # e.g. its netns
            subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def docker(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *args], env={**os.environ, **env}, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} failed:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def loaded(digits_repo: Path, docker_env: dict[str, str]) -> str:  # noqa: F811
    out = run_cli("image", "load", "digits", "--engine", "docker", cwd=digits_repo, env=docker_env).stdout
    return out.strip().splitlines()[-1]


def test_docker_load_and_run_predicts(loaded: str, docker_env: dict[str, str], digits_repo: Path) -> None:  # noqa: F811
    image = json.loads(docker(docker_env, "image", "inspect", loaded).stdout)[0]
    cfg = image["Config"]
    package = Path(cfg["Labels"]["mlbuild.package"])
    manifest = json.loads((package / "manifest.json").read_text())
    assert cfg["User"] == "1000:1000" and "8080/tcp" in cfg["ExposedPorts"]
    assert cfg["Labels"]["mlbuild.model.sha256"] == manifest["hashes"]["model"]
    assert cfg["Entrypoint"] == [f"{package}/bin/serve", "--host", "0.0.0.0", "--port", "8080"]
    assert not cfg.get("Cmd")

    port = free_port()
    name = f"mlbuild-docker-test-{os.getpid()}"
    docker(docker_env, "run", "-d", "--name", name, "--network", "host", loaded, "--host", "127.0.0.1",
           "--port", str(port))
    try:
        url = f"127.0.0.1:{port}"
        wait_ready(url, lambda: docker(docker_env, "inspect", "--format", "{{.State.Status}}", name,
                                       check=False).stdout.strip(),
                   lambda: docker(docker_env, "logs", name, check=False).stderr, timeout=120)
        test = np.loadtxt(build_path(digits_repo, "datasets.digits-split") / "test.csv", delimiter=",",
                          dtype=np.float32)
        x = test[:32, :-1]
        with httpclient.InferenceServerClient(url) as c:
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            labels = c.infer("digits", [inp]).as_numpy("label")
        np.testing.assert_array_equal(labels, forward(package, x))
        uid = docker(docker_env, "exec", name, f"{cfg['Labels']['mlbuild.toolchain']}/bin/python", "-c",
                     "import os; print(os.getuid())").stdout.strip()
        assert uid == "1000"   # not root
    finally:
        docker(docker_env, "rm", "-f", name, check=False)


def test_push_to_docker_daemon_goes_to_docker_host(loaded: str, docker_env: dict[str, str],  # noqa: F811
                                                   digits_repo: Path) -> None:
    """skopeo's docker-daemon: ignores DOCKER_HOST: the push failed with a hint that the (running)
    engine was down. mlbuild passes DOCKER_HOST on as --dest-daemon-host."""
    proc = run_cli("image", "push", "digits", "docker-daemon:mlbuild-pushed/digits:v1", cwd=digits_repo,
                   env=docker_env)
    assert "pushed digits to docker-daemon:mlbuild-pushed/digits:v1" in proc.stdout
    image = json.loads(docker(docker_env, "image", "inspect", "mlbuild-pushed/digits:v1").stdout)[0]
    assert image["Config"]["Labels"] == json.loads(docker(docker_env, "image", "inspect", loaded).stdout)[0][
        "Config"]["Labels"]
    docker(docker_env, "rmi", "mlbuild-pushed/digits:v1", check=False)
