"""`nix run .#serve-digits` (the Nix-built package, hermetic toolchain) driven by tritonclient."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from safetensors.torch import load_file

from tests.conftest import REPO, build_path, run_cli
from tests.integration.conftest import digits_repo, repo_example_digits  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.torch]


class NixServer:
    def __init__(self, cmd: list[str], cwd: Path, workdir: Path) -> None:
        self.port_file = workdir / "port"
        self.log_path = workdir / "serve.log"
        with open(self.log_path, "wb") as log:   # the child keeps its own descriptor
            self.proc = subprocess.Popen([*cmd, "--host", "127.0.0.1", "--port", "0", "--port-file",
                                          str(self.port_file), "--log-level", "warning"],
                                         cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            if self.port_file.exists() and self.port_file.read_text().strip():
                self.url = f"127.0.0.1:{int(self.port_file.read_text())}"
                with httpclient.InferenceServerClient(self.url) as c:
                    try:
                        if c.is_server_ready():
                            return
                    except Exception:
                        pass
            time.sleep(0.2)
        raise AssertionError("server not ready:\n" + self.log_path.read_text())

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def served(repo_example_digits: Path | None, digits_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("nixserve")
    if repo_example_digits is not None:
        out = subprocess.run(["nix", "build", "--no-link", "--json", ".#digits"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout
        package = Path(json.loads(out)[0]["outputs"]["out"])
        server = NixServer(["nix", "run", ".#serve-digits", "--"], REPO, work)
    else:  # this host re-locked a copy: `mlbuild serve` builds and runs the same package
        package = Path(run_cli("build", "digits", cwd=digits_repo).stdout.split("\t")[1].split("\n")[0])
        server = NixServer([sys.executable, "-m", "mlbuild.cli", "serve", "digits"], digits_repo, work)
    yield server, package, digits_repo
    server.stop()


def forward(package: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's own forward pass, outside the server: the package's code and weights."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pkg_model", package / "code" / "model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    params = json.loads((package / "model" / "config.json").read_text())["params"]
    model = module.build_model(params)
    model.load_state_dict(load_file(str(package / "model" / "model.safetensors")))
    model.eval()
    with torch.no_grad():
        logits = model(module.preprocess(x))
    return torch.softmax(logits, -1).numpy(), logits.argmax(-1).numpy()


def held_out(root: Path) -> tuple[np.ndarray, np.ndarray]:
    split = build_path(root, "datasets.digits-split")
    a = np.loadtxt(split / "test.csv", delimiter=",", dtype=np.float32)
    return a[:, :-1], a[:, -1].astype(np.int64)


@pytest.mark.parametrize("binary", [False, True])
def test_nix_run_serves_the_package(served, binary: bool) -> None:
    server, package, root = served
    x, y = held_out(root)  # the same split (content-addressed inputs) in either case
    x = x[:100]
    with httpclient.InferenceServerClient(server.url) as c:
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("digits")
        meta = c.get_model_metadata("digits")
        manifest = json.loads((package / "manifest.json").read_text())
        assert meta["hashes"]["model"] == manifest["hashes"]["model"]
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary),
                httpclient.InferRequestedOutput("label", binary_data=binary)]
        result = c.infer("digits", [inp], outputs=outs)
    probs, labels = forward(package, x)
    np.testing.assert_array_equal(result.as_numpy("label"), labels)
    np.testing.assert_allclose(result.as_numpy("probabilities"), probs, rtol=1e-5, atol=1e-6)
    assert (labels == y[:100]).mean() > 0.9


def test_mlbuild_serve(digits_repo: Path, tmp_path: Path) -> None:
    server = NixServer([sys.executable, "-m", "mlbuild.cli", "serve", "digits"], digits_repo, tmp_path)
    try:
        with httpclient.InferenceServerClient(server.url) as c:
            x = np.zeros((2, 64), dtype=np.float32)
            inp = httpclient.InferInput("input", [2, 64], "FP32")
            inp.set_data_from_numpy(x)
            assert c.infer("digits", [inp]).as_numpy("label").shape == (2,)
    finally:
        server.stop()


def test_mlbuild_serve_refuses_a_model_that_fails_its_gate(digits_repo: Path, tmp_path: Path) -> None:
    """`mlbuild serve` served a package whose validation failed, with no word; its image and
    `nix run .#serve-digits` depend on the gate. (A copy outside git: nothing is dirty, nothing retrains.)"""
    import shutil

    root = tmp_path / "digits"
    shutil.copytree(digits_repo, root, ignore=shutil.ignore_patterns(".git", ".mlbuild", "result*"))
    toml = root / "mlbuild.toml"
    toml.write_text(toml.read_text().replace("accuracy = 0.95", "accuracy = 0.999"))
    # an option the server does not know is refused before anything is built, naming it
    typo = run_cli("serve", "digits", "--no-such-option", cwd=root, check=False)
    assert typo.returncode == 2 and "the server's options: unrecognized arguments: --no-such-option" in typo.stderr
    assert "FAILED" not in typo.stderr and "serving /nix/store" not in typo.stderr
    # (a host the server cannot bind: it stops once started, after loading the model)
    refused = run_cli("serve", "digits", "--host", "no-such-host.invalid", cwd=root, check=False)
    assert refused.returncode == 1 and "serving /nix/store" not in refused.stderr
    assert "accuracy" in refused.stderr and "FAILED" in refused.stderr
    assert "digits did not pass its validation gate, so it is not served" in refused.stderr
    assert "mlbuild serve --no-validate digits" in refused.stderr
    anyway = run_cli("serve", "--no-validate", "digits", "--host", "no-such-host.invalid", cwd=root, check=False)
    assert anyway.returncode != 0 and "serving /nix/store" in anyway.stderr, anyway.stderr
    assert "warning: serving digits without its validation gate (--no-validate)" in anyway.stderr
