"""The digits image end to end: built by Nix (built-in builder), loaded with `mlbuild image load`
into podman, run with `podman --runtime runc run`, and asked for predictions over HTTP by the real
OIP v2 client. Also: the image holds exactly the package's closure, retraining changes one layer,
and a rebuild is bit-identical (`nix-build --check`)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from safetensors.torch import load_file

from mlbuild import _nix
from mlbuild.image import ArchiveInfo, read_archive
from tests.conftest import REPO, build_path, run_cli
from tests.integration.conftest import digits_repo  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.torch]

MODEL_LAYER = -2  # the model layer; the etc layer is on top


def _podman() -> str:
    podman = shutil.which("podman")
    if podman is None:
        if os.environ.get("CI"):
            pytest.fail("podman is not installed: `bash .ci/setup` installs it")
        pytest.skip("podman is not installed (run `bash .ci/setup`)")
    return podman


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([_podman(), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} failed:\n{proc.stderr[-3000:]}")
    return proc


RUNC = ["--runtime", "runc"]  # crun fails on rlimits on these machines


def ulimits() -> list[str]:
    """rlimits no higher than this process has: podman's defaults exceed them here, and raising
    them is denied without CAP_SYS_RESOURCE."""
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 16384)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nix_build_images(project: Path, *overrides: dict[str, object]) -> list[tuple[str, Path]]:
    """Build digits.image of each variant in one Nix evaluation (one snapshot of the sources, even
    while someone edits the runtime); returns (derivation, archive) of each."""
    entry = REPO / "nix" / "entry.nix"
    calls = " ".join(f"((import {entry} {{ src = {json.dumps(str(project))}; overrides = {json.dumps(json.dumps(o))}; }})"
                     ".digits.image)" for o in overrides)
    args = [*_nix.common_options(), "build", "--impure", "--no-link", "--json", "--expr", f"[ {calls} ]"]
    out = subprocess.run(["nix", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return [(b["drvPath"], Path(b["outputs"]["out"])) for b in json.loads(out.stdout)]


@pytest.fixture(scope="module")
def archive(digits_repo: Path) -> Path:  # noqa: F811
    out = run_cli("build", "digits.image", cwd=digits_repo).stdout
    return Path(out.split("\t")[1].split("\n")[0])


@pytest.fixture(scope="module")
def info(archive: Path) -> ArchiveInfo:
    return read_archive(archive)


@pytest.fixture(scope="module")
def package(info: ArchiveInfo) -> Path:
    return Path(info.labels["mlbuild.package"])


@pytest.fixture(scope="module")
def loaded(digits_repo: Path, info: ArchiveInfo) -> Iterator[str]:  # noqa: F811
    _podman()
    ref = run_cli("image", "load", "digits", "--engine", "podman", cwd=digits_repo).stdout.strip().splitlines()[-1]
    assert ref.endswith(info.reference), (ref, info.reference)
    yield ref
    podman("rmi", "-f", ref, check=False)


def wait_ready(url: str, state: Callable[[], str], logs: Callable[[], str], timeout: float = 180) -> None:
    """Until the server in a container answers ready (OIP v2); fails with the container's logs
    when it stops first or the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with httpclient.InferenceServerClient(url) as c:
                if c.is_server_ready():
                    return
        except Exception:
            pass
        now = state()
        if now not in ("running", "created", "configured") or time.monotonic() > deadline:
            raise AssertionError(f"container {now}:\n" + logs()[-3000:])
        time.sleep(0.5)


CONTAINER = f"mlbuild-test-{os.getpid()}"


@pytest.fixture(scope="module")
def container(loaded: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The image run with an extra argument (the entrypoint's 0.0.0.0:8080 must stay: an argument
    once replaced them, and the server listened on 127.0.0.1 inside), published on a loopback port
    only."""
    port = free_port()
    name = CONTAINER
    podman(*RUNC, "run", "-d", "--name", name, *ulimits(), "--cpus", "1", "-p", f"127.0.0.1:{port}:8080", loaded,
           "--max-batch-size", "16")
    url = f"127.0.0.1:{port}"
    try:
        wait_ready(url, lambda: podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip(),
                   lambda: podman("logs", name, check=False).stderr)
        yield url
    finally:
        podman("rm", "-f", "-t", "5", name, check=False)


def test_the_container_s_cpu_limit_bounds_the_torch_threads(container: str) -> None:
    """`--cpus 1` on this 2-CPU machine: the server ran 2 threads (CPU affinity only), throttled."""
    log = podman("logs", CONTAINER, check=False)
    assert "(1 thread(s)); ready" in log.stdout + log.stderr, log.stderr[-2000:]


def forward(package: Path, x: np.ndarray) -> np.ndarray:
    """The model's own forward pass on the host: the package's code and weights."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("image_pkg_model", package / "code" / "model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build_model(json.loads((package / "model" / "config.json").read_text())["params"])
    model.load_state_dict(load_file(str(package / "model" / "model.safetensors")))
    model.eval()
    with torch.no_grad():
        return np.asarray(model(module.preprocess(x)).argmax(-1).numpy())


def test_container_predicts_like_the_package(container: str, package: Path, digits_repo: Path) -> None:  # noqa: F811
    manifest = json.loads((package / "manifest.json").read_text())
    test = np.loadtxt(build_path(digits_repo, "datasets.digits-split") / "test.csv", delimiter=",",
                      dtype=np.float32)
    x, y = test[:64, :-1], test[:64, -1].astype(np.int64)
    with httpclient.InferenceServerClient(container) as c:
        meta = c.get_model_metadata("digits")
        assert meta["hashes"]["model"] == manifest["hashes"]["model"]
        assert meta["parameters"]["max_batch_size"] == 16   # the container's extra argument
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        labels = c.infer("digits", [inp]).as_numpy("label")
    np.testing.assert_array_equal(labels, forward(package, x))
    assert (labels == y).mean() > 0.9


def test_image_config_and_labels(loaded: str, package: Path, info: ArchiveInfo) -> None:
    cfg = json.loads(podman("image", "inspect", loaded).stdout)[0]["Config"]
    assert cfg["User"] == "1000:1000" and "8080/tcp" in cfg["ExposedPorts"]
    assert cfg["Entrypoint"] == [f"{package}/bin/serve", "--host", "0.0.0.0", "--port", "8080"]
    assert not cfg.get("Cmd")   # `podman run IMAGE ARGS...` adds ARGS to the entrypoint's
    hashes = json.loads((package / "manifest.json").read_text())["hashes"]
    labels = cfg["Labels"]
    for k in ("model", "data", "code"):
        assert labels[f"mlbuild.{k}.sha256"] == hashes[k]
    gate = json.loads((Path(labels["mlbuild.validation"]) / "metrics.json").read_text())["gate"]
    assert gate["passed"] and float(labels["mlbuild.validation.accuracy"]) >= 0.95
    assert labels["org.opencontainers.image.title"] == "digits"
    assert info.labels == labels


def test_runs_as_platforms_run_it_and_reaps_orphans(loaded: str, package: Path) -> None:
    """As Kubernetes and OpenShift run it: an arbitrary uid with gid 0, a read-only root file
    system with no /tmp mount, no capabilities, no new privileges, none of the image's environment.
    As its PID 1 the server reaps what a `podman exec` orphans (each stayed a zombie)."""
    port, name = free_port(), f"{CONTAINER}-platform"
    python = f"{json.loads((package / 'manifest.json').read_text())['hashes']['toolchain']}/bin/python"
    podman(*RUNC, "run", "-d", "--name", name, *ulimits(), "--user", "100123:0", "--read-only",
           "--read-only-tmpfs=false", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--unsetenv-all",
           "-p", f"127.0.0.1:{port}:8080", loaded)
    try:
        wait_ready(f"127.0.0.1:{port}",
                   lambda: podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip(),
                   lambda: podman("logs", name, check=False).stderr)
        orphan = "import os, time\nif os.fork() == 0:\n    time.sleep(0.5)\nos._exit(0)\n"
        for _ in range(3):   # exits at once; its child, orphaned, goes to PID 1 and exits 0.5 s later
            podman("exec", name, python, "-c", orphan)
        time.sleep(1.5)
        states = ("import os\nfor p in filter(str.isdigit, os.listdir('/proc')):\n"
                  "    print(p, open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[0])")
        zombies = [line for line in podman("exec", name, python, "-c", states).stdout.splitlines()
                   if line.endswith(" Z")]
        assert zombies == [], zombies
        podman("stop", "-t", "30", name)
        assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    finally:
        podman("rm", "-f", "-t", "5", name, check=False)


def test_runs_as_non_root_with_a_writable_tmp(loaded: str, package: Path) -> None:
    manifest = json.loads((package / "manifest.json").read_text())
    python = f"{manifest['hashes']['toolchain']}/bin/python"
    code = ("import os, pwd; open('/tmp/x', 'w').write('ok'); "
            "w = os.access('/nix/store', os.W_OK); "
            "print(os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name, w, sorted(os.listdir('/nix/store'))[:1])")
    out = podman(*RUNC, "run", "--rm", *ulimits(), "--network", "none", "--entrypoint", python,
                 loaded, "-c", code).stdout.split()
    assert out[:4] == ["1000", "1000", "mlbuild", "False"]


def test_image_holds_exactly_the_closure(archive: Path, info: ArchiveInfo, package: Path) -> None:
    validation = info.labels["mlbuild.validation"]
    closure = set(subprocess.run(["nix-store", "-qR", str(package), validation], capture_output=True, text=True,
                                 check=True).stdout.split())
    found: list[set[str]] = []
    other: set[str] = set()
    with tarfile.open(archive) as outer:
        for digest, _ in info.layers:
            paths = set()
            with tarfile.open(fileobj=outer.extractfile("blobs/sha256/" + digest[7:]), mode="r|") as layer:
                for m in layer:
                    parts = m.name.split("/")
                    if parts[:2] == ["nix", "store"] and len(parts) > 2:
                        paths.add("/nix/store/" + parts[2])
                    elif m.name not in ("nix", "nix/store"):
                        other.add(m.name)
            found.append(paths)
    assert set().union(*found) == closure
    assert other == {"etc", "etc/passwd", "etc/group", "tmp"}
    assert sum(len(p) for p in found) == len(closure)  # each path in one layer only
    assert [sorted(p)[0].split("-", 1)[1] for p in found[:2]] == ["python-3.11.7", "python-3.11.7-toolchain"]
    model_layer = {p.split("-", 1)[1] for p in found[MODEL_LAYER]}
    assert model_layer == {"digits-model", "digits-package", "digits-validation"}
    # No dataset: the training output and the validation report name theirs by hash.
    assert not [p for p in set().union(*found) if p.endswith(("-digits-split", "-digits-raw"))]
    assert found[-1] == set()  # the etc layer


def test_retraining_changes_one_layer_and_rebuilds_bit_identical(digits_repo: Path) -> None:  # noqa: F811
    (_, first), (drv, retrained) = nix_build_images(digits_repo, {}, {"digits": {"params": {"lr": 0.004}}})
    old, new = read_archive(first), read_archive(retrained)
    assert new.labels["mlbuild.model.sha256"] != old.labels["mlbuild.model.sha256"]
    assert len(new.layers) == len(old.layers)
    changed = [i for i, (a, b) in enumerate(zip(old.layers, new.layers)) if a != b]
    assert changed == [len(old.layers) + MODEL_LAYER]
    assert new.config["rootfs"] != old.config["rootfs"] and new.manifest_digest != old.manifest_digest
    weights = Path(new.labels["mlbuild.package"]) / "model" / "model.safetensors"
    # The model layer holds the weights once (the package's copy is a hardlink) plus metadata.
    assert new.layers[MODEL_LAYER][1] < 2 * weights.stat().st_size + 64 * 1024
    # A rebuild from scratch gives the same bytes, hence the same digests.
    check = subprocess.run(["nix-build", "--check", drv, "--no-out-link"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr[-3000:]
    assert read_archive(retrained).manifest_digest == new.manifest_digest


def test_push_with_skopeo(digits_repo: Path, info: ArchiveInfo, tmp_path: Path) -> None:  # noqa: F811
    """`mlbuild image push` to a local OCI layout (no registry here): the pushed image keeps its
    labels, and its manifest its annotations."""
    if shutil.which("skopeo") is None:
        if os.environ.get("CI"):
            pytest.fail("skopeo is not installed: `bash .ci/setup` installs it")
        pytest.skip("skopeo is not installed (run `bash .ci/setup`)")
    dest = f"oci:{tmp_path}/layout:v1"
    try:
        out = run_cli("image", "push", "digits", dest, cwd=digits_repo).stdout
        inspected = json.loads(subprocess.run(["skopeo", "inspect", dest], capture_output=True, text=True,
                                              check=True).stdout)
        assert f"pushed digits to {dest} ({inspected['Digest']})" in out   # what REF@sha256:... pulls
        assert inspected["Labels"] == info.labels
        raw = json.loads(subprocess.run(["skopeo", "inspect", "--raw", dest], capture_output=True, text=True,
                                        check=True).stdout)
        assert raw["annotations"]["mlbuild.model.sha256"] == info.labels["mlbuild.model.sha256"]
    finally:
        shutil.rmtree(tmp_path / "layout", ignore_errors=True)
