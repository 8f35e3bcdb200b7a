"""mlbuild.runtime.serve.package and .model: validating a package folder, loading its model."""

from __future__ import annotations

import logging

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.unit.conftest_serve import MLP_SOURCE, build_package, load_reference, validation_spec
from mlbuild.runtime.serve.model import LoadedModel, ModelError, default_threads, load_model
from mlbuild.runtime.serve.package import PackageError, ServeSettings, load_package


@pytest.fixture()
def pkg(tmp_path: Path) -> Path:
    return build_package(tmp_path / "pkg", train_steps=0)


def _edit(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_load_package(pkg: Path) -> None:
    p = load_package(pkg)
    assert p.name == "digits" and p.module == "model" and p.task == "classification"
    assert p.input.name == "input" and p.input.datatype == "FP32" and p.input.shape == (-1, 64)
    assert [o.name for o in p.outputs] == ["probabilities", "label"] and p.output("label").dtype == "<i8"
    assert p.output("nope") is None
    assert p.settings == ServeSettings(max_batch_size=32, max_wait_ms=2.0, max_body_bytes=8 << 20)
    assert set(p.hashes) == {"model", "data", "code", "toolchain"}
    assert p.labels == tuple(str(i) for i in range(10))


def test_serve_json_and_overrides(pkg: Path) -> None:
    (pkg / "serve.json").write_text(json.dumps({"max_batch_size": 8, "max_wait_ms": 0}))
    assert load_package(pkg).settings == ServeSettings(8, 0.0, 8 << 20)
    assert load_package(pkg, {"max_batch_size": 3}).settings.max_batch_size == 3


@pytest.mark.parametrize(("file", "changes", "message"), [
    ("manifest.json", {"name": "bad name!"}, "name must match"),
    ("manifest.json", {"hashes": {"model": 3}}, "hashes must be an object of strings"),
    ("model/config.json", {"module": "no-dash"}, "module must be a Python module name"),
    ("model/config.json", {"params": []}, "params must be an object"),
    ("model/config.json", {"labels": [1, 2]}, "labels must be a list of strings"),
    ("model/config.json", {"inputs": []}, "'inputs' must be a non-empty list"),
    ("model/config.json", {"inputs": [{"name": "a", "datatype": "BF16", "shape": [-1, 2]}]}, "'BF16'"),
    ("model/config.json", {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 2]}]}, "batch) dimension"),
    ("model/config.json", {"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 0]}]}, "positive ints"),
    ("model/config.json", {"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1]},
                                      {"name": "b", "datatype": "FP32", "shape": [-1]}]}, "exactly one input"),
    ("model/config.json", {"outputs": [{"name": "p", "datatype": "FP32", "shape": [-1]},
                                       {"name": "p", "datatype": "FP32", "shape": [-1]}]}, "used twice"),
    ("serve.json", {"max_batch_size": 0}, "max_batch_size"),
    ("serve.json", {"max_wait_ms": -1}, "max_wait_ms"),
    ("serve.json", {"max_body_bytes": 10}, "max_body_bytes"),
    ("serve.json", {"max_batch": 10}, "unknown setting"),
])
def test_bad_json_names_the_file_and_value(pkg: Path, file: str, changes: dict[str, Any], message: str) -> None:
    path = pkg / file
    if not path.exists():
        path.write_text("{}")
    _edit(path, **changes)
    with pytest.raises(PackageError) as err:
        load_package(pkg)
    assert message in str(err.value) and file.split("/")[-1] in str(err.value)


@pytest.mark.parametrize("missing", ["manifest.json", "model/config.json", "model/model.safetensors", "code"])
def test_missing_parts(pkg: Path, missing: str) -> None:
    import shutil

    target = pkg / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(PackageError, match="missing"):
        load_package(pkg)


def test_not_json_and_not_a_folder(pkg: Path, tmp_path: Path) -> None:
    (pkg / "manifest.json").write_text("{nope")
    with pytest.raises(PackageError, match="not valid JSON"):
        load_package(pkg)
    with pytest.raises(PackageError, match="not a directory"):
        load_package(tmp_path / "absent")


def test_load_model_matches_the_reference(pkg: Path) -> None:
    model = load_model(load_package(pkg), threads=1)
    assert isinstance(model, LoadedModel) and model.threads == 1 and model.load_seconds > 0
    x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    out = model.run(x)
    with torch.no_grad():
        logits = load_reference(pkg)(torch.from_numpy(x))
    np.testing.assert_allclose(out["probabilities"], torch.softmax(logits, -1).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(out["label"], logits.argmax(-1).numpy())
    assert out["label"].dtype == np.int64 and out["probabilities"].dtype == np.float32
    torch.testing.assert_close(model.forward(x), logits)


def test_weights_must_match_the_manifest_hash(pkg: Path) -> None:
    _edit(pkg / "manifest.json", hashes={"model": "0" * 64})
    with pytest.raises(PackageError, match="sha256 is"):
        load_model(load_package(pkg))
    load_model(load_package(pkg), verify=False)


def test_strict_keys(pkg: Path) -> None:
    _edit(pkg / "model" / "config.json", params={"features": 64, "hidden": 16, "classes": 10})
    with pytest.raises(PackageError, match="weights do not fit"):
        load_model(load_package(pkg))


@pytest.mark.parametrize(("source", "message"), [
    ("x = 1\n", "defines no build_model"),
    ("def build_model(params):\n    return 3\n", "not a torch.nn.Module"),
    ("def build_model(params):\n    raise ValueError('boom')\n", "build_model(params) failed: ValueError: boom"),
    ("raise ImportError('no such wheel')\n", "importing module 'model' failed"),
])
def test_bad_user_code(pkg: Path, source: str, message: str) -> None:
    (pkg / "code" / "model.py").write_text(source)
    with pytest.raises(PackageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model(load_package(pkg), verify=False)


def test_user_pre_and_postprocess(tmp_path: Path) -> None:
    from tests.unit.conftest_serve import MLP_SOURCE

    source = MLP_SOURCE + '''
import numpy as np

def preprocess(x):
    return torch.from_numpy(np.asarray(x, dtype=np.float32) / 16.0)

def postprocess(out):
    return {"score": out.max(dim=-1).values.numpy()}
'''
    pkg = build_package(tmp_path / "p", source=source, train_steps=0, extra_config={
        "task": "scoring", "outputs": [{"name": "score", "datatype": "FP64", "shape": [-1]}]})
    model = load_model(load_package(pkg))
    x = np.full((3, 64), 16.0, dtype=np.float32)
    out = model.run(x)
    with torch.no_grad():
        expected = load_reference(pkg)(torch.ones(3, 64)).max(-1).values.numpy()
    assert out["score"].dtype == np.float64  # cast to the declared datatype
    np.testing.assert_allclose(out["score"], expected, rtol=1e-6)


def test_outputs_that_do_not_fit_the_config_fail_the_warm_up(tmp_path: Path) -> None:
    pkg = build_package(tmp_path / "p", train_steps=0, extra_config={
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 11]}]})
    # the user's code or what training declared is wrong: rebuilding the package would not help
    with pytest.raises(PackageError, match=r"warm-up .* To fix it: fix the model in model\.py, or what training "
                                           r"declared with ctx\.describe \(input_shape=\[64\], datatype='FP32'; "
                                           r"the outputs follow task=\), then rebuild\.$"):
        load_model(load_package(pkg))


def test_a_custom_postprocess_may_return_one_column_for_a_one_value_output(tmp_path: Path) -> None:
    """The README says a model returning [N, 1] is flattened; a user's postprocess returning
    {"prediction": outputs} ([N, 1]) failed the warm-up, telling them to rebuild the package."""
    from tests.unit.conftest_serve import MLP_SOURCE

    source = MLP_SOURCE + '''

def postprocess(out):
    return {"prediction": out[:, :1].clamp(min=0)}
'''
    pkg = build_package(tmp_path / "p", source=source, train_steps=0, extra_config={
        "task": "regression", "labels": None, "outputs": [{"name": "prediction", "datatype": "FP32", "shape": [-1]}]})
    out = load_model(load_package(pkg)).run(np.ones((3, 64), dtype=np.float32))
    assert out["prediction"].shape == (3,) and (out["prediction"] >= 0).all()
    two = build_package(tmp_path / "two", source=MLP_SOURCE + "\n\ndef postprocess(out):\n    return {'prediction': out[:, :2]}\n",
                        train_steps=0, extra_config={"task": "regression", "labels": None,
                                                     "outputs": [{"name": "prediction", "datatype": "FP32", "shape": [-1]}]})
    with pytest.raises(PackageError, match=r"has shape \[1, 2\] .* To fix it: fix postprocess in model\.py"):
        load_model(load_package(two))


def test_regression_default_postprocess(tmp_path: Path) -> None:
    pkg = build_package(tmp_path / "p", train_steps=0, params={"features": 4, "hidden": 3, "classes": 1},
                        extra_config={"task": "regression", "labels": None,
                                      "outputs": [{"name": "prediction", "datatype": "FP32", "shape": [-1]}]})
    out = load_model(load_package(pkg)).run(np.zeros((2, 4), dtype=np.float32))
    assert out["prediction"].shape == (2,)


def test_a_classifier_returning_one_score_a_row_is_refused_naming_the_postprocess(tmp_path: Path) -> None:
    """A binary classifier with one sigmoid output ([N, 1], or [N] squeezed): the default softmax
    over one column is 1.0, so without labels= every row was served as class 0 with probability 1,
    and with two labels the warm-up said only "has shape [1, 1] ... declares [-1, 2]"."""
    squeezed = MLP_SOURCE.replace("def build_model(params):\n    return nn.Sequential(", "class M(nn.Sequential):\n"
                                  "    def forward(self, x):\n        return torch.sigmoid(super().forward(x))[:, 0]\n\n\n"
                                  "def build_model(params):\n    return M(")
    params = {"features": 8, "hidden": 4, "classes": 1}
    for case, source, labels in (("column", MLP_SOURCE, None), ("named", MLP_SOURCE, ["neg", "pos"]),
                                 ("squeezed", squeezed, None)):
        outputs = [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels) if labels else -1]},
                   {"name": "label", "datatype": "INT64", "shape": [-1]}]
        pkg = build_package(tmp_path / case, source=source, params=params, train_steps=0,
                            extra_config={"labels": labels, "outputs": outputs})
        with pytest.raises(PackageError, match=re.escape(
                "the model returns one score a row (shape [1" + (", 1" if case != "squeezed" else "") + "]), but a "
                "classifier's default postprocess takes one score per class (softmax, then argmax: every row would be "
                "class 0); for a binary classifier with one output (a sigmoid or a logit), define postprocess(outputs)"
                " in the model's module: p = torch.sigmoid(outputs).reshape(-1)")):
            load_model(load_package(pkg), threads=1)
    # what the message says to write serves both classes
    fixed = build_package(tmp_path / "fixed", params=params, train_steps=0, source=MLP_SOURCE + (
        "\n\ndef postprocess(outputs):\n    p = torch.sigmoid(outputs).reshape(-1)\n"
        '    return {"probabilities": torch.stack([1 - p, p], 1), "label": (p > 0.5).long()}\n'),
        extra_config={"labels": ["neg", "pos"], "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "label", "datatype": "INT64", "shape": [-1]}]})
    model = load_model(load_package(fixed), threads=1)
    out = model.run(np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32) * 100)
    assert out["probabilities"].shape == (50, 2) and model.classes == 2
    assert set(out["label"].tolist()) == {0, 1}


def test_a_classifier_whose_forward_returns_probabilities_is_refused_naming_the_fix(tmp_path: Path) -> None:
    """A forward ending in a softmax got the default postprocess's softmax again: [1, 0] was served
    as [0.73, 0.27] (the label right, so accuracy and ROC-AUC did not show it)."""
    soft = MLP_SOURCE.replace("def build_model(params):\n    return nn.Sequential(",
                              "def build_model(params):\n    return nn.Sequential(nn.Sequential(").replace(
        '        nn.Linear(params["hidden"], params["classes"]),\n    )',
        '        nn.Linear(params["hidden"], params["classes"]),\n    ), nn.Softmax(-1))')
    assert "nn.Softmax(-1)" in soft
    pkg = build_package(tmp_path / "soft", source=soft, train_steps=0)
    with pytest.raises(PackageError, match=re.escape(
            "the model's forward returns probabilities (on the warm-up rows its outputs are >= 0 and sum to 1: a "
            "softmax at its end), and a classifier's default postprocess applies a softmax to them again")):
        load_model(load_package(pkg), threads=1)
    kept = build_package(tmp_path / "kept", train_steps=0, source=soft + (
        '\n\ndef postprocess(outputs):\n    return {"probabilities": outputs, "label": outputs.argmax(-1)}\n'))
    out = load_model(load_package(kept), threads=1).run(np.ones((2, 64), np.float32))
    np.testing.assert_allclose(out["probabilities"].sum(1), 1.0, rtol=1e-5)
    # log-probabilities (a log_softmax at the end) are logits to a softmax: served as they were
    logs = build_package(tmp_path / "logs", source=soft.replace("nn.Softmax(-1)", "nn.LogSoftmax(-1)"), train_steps=0)
    assert load_model(load_package(logs), threads=1).run(np.ones((2, 64), np.float32))["probabilities"].shape == (2, 10)


def test_outputs_a_postprocess_returns_beyond_the_declared_ones_are_named_at_load(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A postprocess returning an "embedding" beside the classifier's outputs: it was dropped
    without a word, and a client asking for it got a 400."""
    pkg = build_package(tmp_path / "p", train_steps=0, source=MLP_SOURCE + (
        '\n\ndef postprocess(outputs):\n    return {"probabilities": torch.softmax(outputs, -1), '
        '"label": outputs.argmax(-1), "embedding": outputs}\n'))
    with caplog.at_level(logging.WARNING, logger="mlbuild.serve"):
        model = load_model(load_package(pkg), threads=1)
    assert ("digits: postprocess returns 'embedding', which the model does not declare (its outputs, from "
            "ctx.describe(task='classification'): probabilities, label), so they are not served") in caplog.text
    assert sorted(model.run(np.zeros((2, 64), np.float32))) == ["label", "probabilities"]


def test_a_logits_classifier_whose_warm_up_row_looks_like_probabilities_is_served(tmp_path: Path) -> None:
    """A binary logits model whose row of zeros gives its bias, [0.3, 0.7] (>= 0, summing to 1),
    was refused as one returning probabilities, with no way to serve it but a postprocess: the
    check now needs every warm-up row (zeros, then ones) to look so."""
    logits = '''import torch
from torch import nn


def build_model(params):
    model = nn.Linear(params["features"], 2)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[0, 0] = 1.0
        model.bias.copy_(torch.tensor([0.3, 0.7]))
    return model
'''
    pkg = build_package(tmp_path / "logits", source=logits, train_steps=0, params={"features": 64, "classes": 2})
    out = load_model(load_package(pkg), threads=1).run(np.zeros((1, 64), np.float32))
    np.testing.assert_allclose(out["probabilities"][0], torch.softmax(torch.tensor([0.3, 0.7]), 0).numpy(), rtol=1e-5)


def test_a_bfloat16_classifier_whose_forward_returns_probabilities_is_refused_too(tmp_path: Path) -> None:
    """A bfloat16 softmax's outputs sum to 1 within its rounding only ([0.621, 0.377]: 0.998), and
    the check took 1e-3: such a binary classifier was served flattened, as before the check."""
    soft = '''import torch
from torch import nn


def build_model(params):
    model = nn.Sequential(nn.Linear(params["features"], 2), nn.Softmax(-1))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([0.5, 0.0]))
    return model.to(torch.bfloat16)
'''
    pkg = build_package(tmp_path / "soft", source=soft, train_steps=0, params={"features": 64, "classes": 2})
    with pytest.raises(PackageError, match=re.escape("the model's forward returns probabilities")):
        load_model(load_package(pkg), threads=1)


def test_a_postprocess_with_an_in_place_op_on_the_outputs_still_loads(tmp_path: Path) -> None:
    """The load's check for extra outputs called postprocess outside inference mode, where an
    in-place op on the model's outputs (softmax_, sigmoid_, clamp_), which serving runs, raised
    "Inplace update to inference tensor outside InferenceMode": the package failed its warm-up,
    blaming postprocess, so a model that served before failed its validation."""
    source = MLP_SOURCE + '''

def postprocess(outputs):
    outputs.exp_()
    probs = outputs.div_(outputs.sum(-1, keepdim=True))
    return {"probabilities": probs, "label": probs.argmax(-1)}
'''
    pkg = build_package(tmp_path / "inplace", source=source, train_steps=0)
    out = load_model(load_package(pkg), threads=1).run(np.ones((2, 64), np.float32))
    np.testing.assert_allclose(out["probabilities"].sum(1), 1.0, rtol=1e-5)


def test_a_regression_model_returning_several_values_a_row_is_refused_naming_them(tmp_path: Path) -> None:
    """A model of three targets ([N, 3]) declared task="regression" failed its validation with
    "output 'prediction' has shape [1, 3] ...; config.json declares [-1]", naming no way out."""
    pkg = build_package(tmp_path / "p", train_steps=0, params={"features": 8, "hidden": 4, "classes": 3},
                        extra_config={"task": "regression", "labels": None,
                                      "outputs": [{"name": "prediction", "datatype": "FP32", "shape": [-1]}]})
    with pytest.raises(PackageError, match=re.escape(
            "the model returns 3 values a row (shape [1, 3]), but a regression model serves one, 'prediction' "
            "(shape [-1]); mlbuild serves one target a model: train a model per target, or define "
            "postprocess(outputs) returning {'prediction': ...} with one value a row")):
        load_model(load_package(pkg), threads=1)


def test_model_error_on_wrong_rows(pkg: Path) -> None:
    model = load_model(load_package(pkg))
    model.postprocess = lambda out: {"probabilities": np.zeros((1, 10)), "label": np.zeros(1)}
    with pytest.raises(ModelError, match="for 2 row"):
        model.run(np.zeros((2, 64), dtype=np.float32))
    model.postprocess = lambda out: [1]  # type: ignore[assignment,return-value]
    with pytest.raises(ModelError, match="expected a dict"):
        model.run(np.zeros((2, 64), dtype=np.float32))


def test_the_cgroup_cpu_quota_bounds_the_default_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`podman run --cpus 0.5` on a 2-CPU machine ran 2 torch threads (affinity only): on a
    64-core node with a 1-CPU limit, 64 threads, throttled."""
    from mlbuild.runtime.serve import model as m

    proc = tmp_path / "cgroup"
    v2 = tmp_path / "v2"
    (v2 / "kubepods" / "pod1").mkdir(parents=True)
    (v2 / "kubepods" / "cpu.max").write_text("max 100000\n")
    (v2 / "kubepods" / "pod1" / "cpu.max").write_text("150000 100000\n")
    proc.write_text("0::/kubepods/pod1\n")
    assert m.cgroup_cpus(v2, proc) == 1.5
    (v2 / "kubepods" / "cpu.max").write_text("50000 100000\n")     # a parent's limit counts too
    assert m.cgroup_cpus(v2, proc) == 0.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)   # a container: its own cgroup mounted as the hierarchy's root
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    proc.write_text("4:memory:/x\n2:cpu,cpuacct:/libpod_parent/libpod-abc\n")
    assert m.cgroup_cpus(v1, proc) == 1.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert m.cgroup_cpus(v1, proc) is None
    assert m.cgroup_cpus(v1, tmp_path / "none") is None

    monkeypatch.delenv("MLBUILD_SERVE_THREADS", raising=False)
    monkeypatch.setattr(m.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    for quota, threads in ((None, 4), (0.5, 1), (1.5, 2), (16.0, 4)):
        monkeypatch.setattr(m, "cgroup_cpus", lambda q=quota: q)
        assert m.default_threads() == threads


def test_default_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlbuild.runtime.serve.package import ServeError

    monkeypatch.setenv("MLBUILD_SERVE_THREADS", "3")
    assert default_threads() == 3
    for bad in ("x", "0", "-2", "1.5", "99999"):
        monkeypatch.setenv("MLBUILD_SERVE_THREADS", bad)
        with pytest.raises(ServeError, match=rf"^MLBUILD_SERVE_THREADS='{re.escape(bad)}' is not a thread count: set "
                                             r"it to a whole number in 1\.\.1024 \(or unset it"):
            default_threads()
    monkeypatch.delenv("MLBUILD_SERVE_THREADS")
    assert default_threads() >= 1


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "abc"], "argument --port: 'abc' is not an integer in 0..65535"),
    (["--port", "65536"], "argument --port: '65536' is not an integer in 0..65535"),
    (["--port", "-1"], "argument --port: '-1' is not an integer in 0..65535"),
    (["--threads", "0"], "argument --threads: '0' is not an integer in 1..1024"),
    (["--threads", "99999"], "argument --threads: '99999' is not an integer in 1..1024"),
    (["--max-batch-size", "0"], "argument --max-batch-size: '0' is not an integer in 1..65536"),
    (["--max-wait-ms", "nan"], "argument --max-wait-ms: 'nan' is not a number in 0..10000"),
    (["--max-body-bytes", "10"], "argument --max-body-bytes: '10' is not an integer >= 1024"),
    (["--graceful-timeout", "-1"], "argument --graceful-timeout: '-1' is not an integer >= 0"),
    (["--keep-alive-timeout", "0"], "argument --keep-alive-timeout: '0' is not an integer in 1..86400"),
    (["--forwarded-allow-ips", "10.0.0.5,", "10.0.0.6"],   # unquoted, with a space after the comma
     "argument --forwarded-allow-ips: '10.0.0.5,' has an empty entry (a comma at its end, or two in a row); a list "
     "with spaces after its commas is split by the shell: quote it ('10.0.0.5, 10.0.0.6') or drop the spaces"),
    (["--forwarded-allow-ips", "10.0.0.5, 10.0.0.0/33"],
     "argument --forwarded-allow-ips: '10.0.0.0/33' is not an IP address or network (of '10.0.0.5, 10.0.0.0/33'); "
     "pass the proxies' addresses, comma-separated (10.0.0.5,10.1.0.0/16), or * to trust any"),
])
def test_server_arguments_are_checked_where_given(pkg: Path, args: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A bad --max-batch-size is the command line's fault, not serve.json's: the error says so."""
    from mlbuild.runtime.serve.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["--package", str(pkg), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "serve.json" not in err


@pytest.mark.parametrize("value", ["x", "0"])
def test_a_bad_thread_count_in_the_environment_is_refused_before_the_port_is_bound(
        pkg: Path, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """It was found when the model loaded, after the server bound its port: exit 1, no fix named."""
    import socket

    from mlbuild.runtime.serve.__main__ import main

    monkeypatch.setenv("MLBUILD_SERVE_THREADS", value)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    assert main(["--package", str(pkg), "--port", str(port)]) == 2
    assert capsys.readouterr().err.startswith(f"Error: MLBUILD_SERVE_THREADS='{value}' is not a thread count")


def test_the_environment_platforms_set_for_multi_process_python_servers_is_left_alone(
        pkg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform's WEB_CONCURRENCY (gunicorn's worker count, which uvicorn reads with int()) of
    'auto' stopped the server with a ValueError traceback once its port was bound, and
    PROMETHEUS_MULTIPROC_DIR naming a folder that is not there (or not writable: a read-only root)
    with "Error: [Errno 2] No such file or directory: '/nonexistent/gauge_all_PID.db'"; one that is
    there got a file per metric type and process. This server is one process: neither applies."""
    from tests.unit.conftest_serve import ServerProcess

    monkeypatch.setenv("WEB_CONCURRENCY", "auto")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    server = ServerProcess(pkg, tmp_path / "server").ready()
    try:
        status, body = server.json("POST", "/v1/models/digits:predict", {"instances": [[1.0] * 64]})
        assert status == 200 and body["predictions"][0]["label"] in range(10)
        assert server.metric("mlbuild_model_ready") == 1
    finally:
        assert server.stop() == 0
    assert not (tmp_path / "missing").exists()


def test_every_log_line_has_one_format_with_a_timestamp_on_stderr(pkg: Path, tmp_path: Path) -> None:
    """The server's own lines had a timestamp, level and logger; uvicorn's ("INFO:     Started server
    process [1]") and its access log (--access-log) had neither timestamp nor logger, and the access
    log went to stdout, the rest to stderr: a log collector could not parse or order them alike."""
    from tests.unit.conftest_serve import ServerProcess

    server = ServerProcess(pkg, tmp_path / "server", "--log-level", "info", "--access-log", stdout_apart=True).ready()
    try:
        assert server.request("GET", "/v2/nope")[0] == 404
    finally:
        assert server.stop() == 0
    line = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) [a-z.]+: \S")
    lines = server.log().splitlines()
    assert lines and all(line.match(x) for x in lines), lines
    text = "\n".join(lines)
    assert " INFO uvicorn: Started server process [" in text and " INFO mlbuild.serve: serving digits " in text
    hashes = json.loads((pkg / "manifest.json").read_text())["hashes"]   # which model, from the log alone
    assert (f" INFO mlbuild.serve: serving digits ({pkg.resolve()}; model sha256 {hashes['model']}; data sha256 "
            f"{hashes['data']}; code sha256 {hashes['code']}) on http://127.0.0.1:{server.port}\n") in text, text
    assert re.search(r' INFO uvicorn\.access: 127\.0\.0\.1:\d+ - "GET /v2/nope HTTP/1\.1" 404', text), text
    assert server.stdout_path.read_text() == ""


def test_an_idle_keep_alive_connection_stays_open_for_the_keep_alive_timeout(pkg: Path, tmp_path: Path) -> None:
    """The server closed idle keep-alive connections after 30 s, fixed: behind a load balancer that
    keeps its pooled connections idle for longer (nginx's upstream keepalive_timeout and an AWS
    ALB's idle timeout are 60 s), a request sent on one as the server closed it was a 502 (a POST,
    an inference, is not retried). Now 75 s by default, and --keep-alive-timeout sets it."""
    import socket
    import time

    from mlbuild.runtime.serve.__main__ import build_parser
    from tests.unit.conftest_serve import ServerProcess, connect

    assert build_parser().parse_args(["--package", str(pkg)]).keep_alive_timeout == 75
    server = ServerProcess(pkg, tmp_path / "server", "--keep-alive-timeout", "2").ready()
    try:
        conn = connect(server.port)
        for pause in (0.0, 1.0):   # idle for less than the timeout: the same connection answers
            time.sleep(pause)
            conn.request("GET", "/v2/health/live")
            assert conn.getresponse().read() == b'{"live": true}'
        sock = conn.sock
        assert sock is not None
        sock.settimeout(10)
        started = time.monotonic()
        assert sock.recv(1) == b""   # closed by the server, idle for the timeout
        assert 1.0 < time.monotonic() - started < 5, time.monotonic() - started
        conn.close()
    finally:
        assert server.stop() == 0


def test_the_access_log_names_the_client_behind_the_proxies_named(pkg: Path, tmp_path: Path) -> None:
    """Behind a reverse proxy every --access-log line named the proxy (X-Forwarded-For was ignored,
    whatever $FORWARDED_ALLOW_IPS said); --forwarded-allow-ips names the proxies to take it from."""
    from tests.unit.conftest_serve import ServerProcess

    forwarded = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    logs = []
    for args in ([], ["--forwarded-allow-ips", "10.0.0.5,127.0.0.0/8"]):
        server = ServerProcess(pkg, tmp_path / f"server{len(logs)}", "--log-level", "info", "--access-log", *args).ready()
        try:
            assert server.request("GET", "/v2/health/live", headers=forwarded)[0] == 200
        finally:
            assert server.stop() == 0
        logs.append([x for x in server.log().splitlines() if "/v2/health/live" in x])
    assert len(logs[0]) == 1 and ' uvicorn.access: 127.0.0.1:' in logs[0][0], logs
    assert len(logs[1]) == 1 and ' uvicorn.access: 203.0.113.7:' in logs[1][0], logs


def test_the_access_log_is_written_at_any_log_level(pkg: Path, tmp_path: Path) -> None:
    """--access-log with --log-level warning (to quiet the server's own lines) wrote no access line
    at all, without a word: they are INFO lines, and uvicorn held its access logger to the level."""
    from tests.unit.conftest_serve import ServerProcess

    server = ServerProcess(pkg, tmp_path / "server", "--log-level", "warning", "--access-log").ready()
    try:
        assert server.request("GET", "/v2/health/live")[0] == 200
    finally:
        assert server.stop() == 0
    lines = [x for x in server.log().splitlines() if "/v2/health/live" in x]
    assert len(lines) == 1 and ' INFO uvicorn.access: 127.0.0.1:' in lines[0], server.log()
    assert "mlbuild.serve: serving" not in server.log()   # the rest still at the level asked for


def test_forwarded_allow_ips_is_written_as_uvicorn_matches_it() -> None:
    """A network with host bits (10.1.0.5/16), a * beside an address, and an IPv4 proxy seen
    IPv4-mapped by a server on --host :: (::ffff:10.0.0.5) were taken, and matched no proxy: the
    proxy's X-Forwarded-For was ignored without a word (uvicorn reads 10.1.0.5/16 and * there as
    names)."""
    from mlbuild.runtime.serve.__main__ import build_parser

    def parsed(text: str) -> str:
        value = build_parser(package="-").parse_args(["--forwarded-allow-ips", text]).forwarded_allow_ips
        assert isinstance(value, str)
        return value
    assert parsed("10.1.0.5/16, 10.0.0.5") == "10.1.0.0/16,::ffff:10.1.0.0/112,10.0.0.5,::ffff:10.0.0.5"
    assert parsed("10.0.0.5, *") == "*"
    with pytest.raises(SystemExit):   # an address after the * is checked too
        build_parser(package="-").parse_args(["--forwarded-allow-ips", "*, 10.0.0.300"])
    assert parsed("[::1], fd00::/8") == "::1,fd00::/8"


@pytest.mark.parametrize("host, allow", [("127.0.0.1", "127.0.0.5/8"), ("::", "127.0.0.1")])
def test_the_access_log_names_the_client_behind_a_proxy_named_loosely(pkg: Path, tmp_path: Path, host: str,
                                                                      allow: str) -> None:
    """--forwarded-allow-ips 127.0.0.5/8, or 127.0.0.1 on --host :: (the proxy seen as
    ::ffff:127.0.0.1), was taken, and every access log line still named the proxy."""
    from tests.unit.conftest_serve import ServerProcess

    server = ServerProcess(pkg, tmp_path / "server", "--log-level", "info", "--access-log", "--host", host,
                           "--forwarded-allow-ips", allow).ready()
    try:
        assert server.request("GET", "/v2/health/live", headers={"X-Forwarded-For": "203.0.113.7"})[0] == 200
    finally:
        assert server.stop() == 0
    lines = [x for x in server.log().splitlines() if "/v2/health/live" in x]
    assert len(lines) == 1 and " uvicorn.access: 203.0.113.7:" in lines[0], server.log()


def test_good_overrides_parse(pkg: Path) -> None:
    from mlbuild.runtime.serve.__main__ import build_parser

    a = build_parser().parse_args(["--package", str(pkg), "--port", "0", "--max-batch-size", "8",
                                   "--max-wait-ms", "0.5", "--max-body-bytes", "1024", "--graceful-timeout", "0"])
    assert (a.port, a.max_batch_size, a.max_wait_ms, a.max_body_bytes, a.graceful_timeout) == (0, 8, 0.5, 1024, 0)


def test_bind_failures_name_the_address_and_the_fix() -> None:
    import socket

    from mlbuild.runtime.serve.package import ServeError
    from mlbuild.runtime.serve.server import bind

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ServeError, match=rf"cannot listen on 127.0.0.1:{port} \(Address already in use\); "
                                             rf"port {port} is taken: .* pass another --port \(0 picks a free one\)"):
            bind("127.0.0.1", port)
    finally:
        taken.close()
    with pytest.raises(ServeError, match=r"cannot listen on 999.1.1.1:0 .*; pass --host an address of this machine"):
        bind("999.1.1.1", 0)
    bind("127.0.0.1", 0).close()


@pytest.mark.parametrize("where", ["folder", "missing/port"])
def test_a_port_file_that_cannot_be_written_is_named_and_leaves_nothing(
        pkg: Path, tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--port-file naming a folder left PATH.tmp.PID beside it (at / for /tmp) and said only
    `[Errno 21] Is a directory: '/tmp.tmp.PID' -> '/tmp'`."""
    from mlbuild.runtime.serve.__main__ import main

    (tmp_path / "folder").mkdir()
    before = sorted(tmp_path.iterdir())
    assert main(["--package", str(pkg), "--port", "0", "--port-file", str(tmp_path / where)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"Error: cannot write the port to --port-file {tmp_path / where} ("), err
    assert "pass the path of a file in a folder that exists and is writable" in err and ".tmp." not in err
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("given", ["", ".", "/"])
def test_a_port_file_naming_no_file_is_named(pkg: Path, tmp_path: Path, given: str, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """--port-file "" (a script's unset variable), "." or "/": a ValueError traceback from
    Path.with_name ('PosixPath('.') has an empty name') once the model had loaded."""
    from mlbuild.runtime.serve.__main__ import main

    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert main(["--package", str(pkg), "--port", "0", "--port-file", given]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"Error: cannot write the port to --port-file {str(Path(given))!r} (a folder, not a file); "
                          "pass the path of a file"), err
    assert list((tmp_path / "cwd").iterdir()) == []


def test_a_package_server_usage_has_no_package_option(pkg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """bin/serve passes its package: its usage and help do not ask for --package."""
    from mlbuild.runtime.serve.__main__ import build_parser, main

    assert build_parser(str(pkg)).parse_args(["--port", "0"]).package == str(pkg)
    with pytest.raises(SystemExit):
        main(["--help"], package=str(pkg))
    out = capsys.readouterr().out
    assert "--port" in out and "--package" not in out
    with pytest.raises(SystemExit) as exit_:
        main(["--port", "x"], package=str(pkg))
    assert exit_.value.code == 2 and "--package" not in capsys.readouterr().err


def test_validation_of_a_package_that_cannot_serve_says_so_without_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlbuild.runtime import validate

    pkg = build_package(tmp_path / "p", train_steps=0, extra_config={
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 11]}]})
    spec = validation_spec(tmp_path, pkg, "return np.zeros((4, 64), dtype=np.float32), np.zeros(4, dtype=np.int64)")
    monkeypatch.setenv("specPath", str(spec))
    monkeypatch.setenv("out", str(tmp_path / "out"))
    with pytest.raises(SystemExit, match=r"^mlbuild: validation of digits: the package cannot serve: .*warm-up"):
        validate.main()



def test_a_preprocess_that_refuses_zeros_still_loads_and_bool_inputs_become_floats(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The warm-up runs zeros: a handler refusing an all-padding row made the package unloadable.
    A ValueError without a message still says what it was."""
    from tests.unit.conftest_serve import MLP_SOURCE

    from mlbuild.runtime.serve.model import InputRefused

    source = MLP_SOURCE + '''

def preprocess(x):
    if not x.any():
        raise ValueError()
    return torch.from_numpy(x).float()
'''
    pkg = build_package(tmp_path / "p", source=source, train_steps=0)
    model = load_model(load_package(pkg))
    with pytest.raises(InputRefused, match=r"^preprocess refused the input: ValueError$"):
        model.run(np.zeros((1, 64), np.float32))
    assert model.run(np.ones((2, 64), np.float32))["label"].shape == (2,)
    # a handler's own bug raising ValueError for every row: it loads, but not without a word
    broken = build_package(tmp_path / "broken", train_steps=0,
                           source=MLP_SOURCE + "\n\ndef preprocess(x):\n    return torch.from_numpy(x.reshape(-1, 65))\n")
    with caplog.at_level(logging.WARNING, logger="mlbuild.serve"):
        load_model(load_package(broken))
    assert "preprocess refused the warm-up rows (zeros and ones), so the outputs were not checked at load: " \
           "preprocess refused the input: cannot reshape array of size 64 into shape (65)" in caplog.text
    flags = build_package(tmp_path / "b", train_steps=0,
                          extra_config={"inputs": [{"name": "input", "datatype": "BOOL", "shape": [-1, 64]}]})
    out = load_model(load_package(flags)).run(np.ones((2, 64), bool))   # the default preprocess: float32
    assert out["probabilities"].shape == (2, 10)


def test_a_warm_up_failing_on_the_second_try_names_the_row_it_ran(tmp_path: Path) -> None:
    from tests.unit.conftest_serve import MLP_SOURCE

    source = MLP_SOURCE + '''

def preprocess(x):
    if not x.any():
        raise ValueError("only padding")
    return torch.from_numpy(x).float()

def postprocess(out):
    raise RuntimeError("broken postprocess")
'''
    pkg = build_package(tmp_path / "p", source=source, train_steps=0)
    with pytest.raises(PackageError, match=r"warm-up inference on ones\[1, 64\] failed: RuntimeError: broken postprocess"):
        load_model(load_package(pkg))


EXITING = '''

import sys

def postprocess(out):
    if (out != out[0]).any():   # not at the warm-up (one row), but for a request of two different rows
        sys.exit("cannot postprocess this")
    p = torch.softmax(out, -1)
    return {"probabilities": p.numpy(), "label": p.argmax(-1).numpy()}
'''


def test_a_handler_calling_sys_exit_is_a_500_not_a_hung_server(tmp_path: Path) -> None:
    """SystemExit (or KeyboardInterrupt) from user code ended the batcher's thread without a word:
    that request and every later one hung, readiness stayed true, and SIGTERM waited for them."""
    from tests.unit.conftest_serve import ServerProcess

    pkg = build_package(tmp_path / "p", source=MLP_SOURCE + EXITING, train_steps=0)
    server = ServerProcess(pkg, tmp_path / "server").ready()
    try:
        rows = {"instances": [[0.0] * 64, [1.0] * 64]}
        for _ in range(2):   # the second one too: the worker is still there
            status, body = server.json("POST", "/v1/models/digits:predict", rows)
            assert status == 500
            assert body["error"] == ("inference failed: ModelError: the model's code raised SystemExit(cannot postprocess "
                                     "this); a handler must raise an exception (ValueError to refuse the input), not exit")
        status, body = server.json("POST", "/v1/models/digits:predict", {"instances": [[1.0] * 64]})
        assert status == 200 and body["predictions"][0]["label"] in range(10)
        assert "SystemExit: cannot postprocess this" in server.log()   # logged with its traceback
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(("source", "message"), [
    ("import sys\nsys.exit('no config')\n", "importing module 'model' failed: SystemExit: no config"),
    ("import argparse\nargparse.ArgumentParser().parse_args()\n", "importing module 'model' failed: SystemExit: 2"),
    ("def build_model(params):\n    raise SystemExit(4)\n", "build_model(params) failed: SystemExit: 4"),
    (MLP_SOURCE + "\ndef postprocess(out):\n    raise KeyboardInterrupt\n",
     "warm-up inference on zeros[1, 64] failed: ModelError: the model's code raised KeyboardInterrupt()"),
])
def test_user_code_that_exits_while_loading_is_a_package_error(pkg: Path, source: str, message: str) -> None:
    """Not an exit of the server with two tracebacks and no 'Error:' line (or argparse's usage)."""
    (pkg / "code" / "model.py").write_text(source)
    with pytest.raises(PackageError) as info:
        load_model(load_package(pkg), verify=False)
    assert message in str(info.value)


@pytest.mark.parametrize(("label", "message"), [
    (np.array([np.nan]), "output 'label' holding NaN, infinity or values beyond INT64 (config.json's datatype), "
                         "which cannot be cast to it"),
    (np.array([1e30]), "output 'label' holding NaN, infinity or values beyond INT64"),
    (np.array([2.0 ** 63]), "output 'label' holding NaN, infinity or values beyond INT64"),   # cast to -2**63
    (np.array(["cat"]), "output 'label' as ndarray of str96 values, not real numbers; config.json declares INT64"),
    (None, "output 'label' as None, not real numbers; config.json declares INT64"),
])
def test_outputs_that_casting_would_turn_into_other_numbers_are_the_models_error(
        pkg: Path, label: Any, message: str) -> None:
    """A float label holding NaN was served as -9223372036854775808 (numpy's cast), with a 200; None
    came out as a NaN scalar ('has shape []'), text as int()'s error naming no output."""
    model = load_model(load_package(pkg))
    model.postprocess = lambda out: {"probabilities": np.zeros((1, 10)), "label": label}
    with pytest.raises(ModelError) as info:
        model.run(np.zeros((1, 64), dtype=np.float32))
    assert str(info.value).startswith(f"postprocess returned {message}")
    model.postprocess = lambda out: {"probabilities": torch.zeros(1, 10), "label": np.array([3.0])}
    assert model.run(np.zeros((1, 64), dtype=np.float32))["label"].tolist() == [3]   # whole floats: cast as before
    model.postprocess = lambda out: {"probabilities": np.full((1, 10), 1e300), "label": np.array([-2.0 ** 63])}
    got = model.run(np.zeros((1, 64), dtype=np.float32))   # float64 scores beyond FP32: inf, for the encoders to refuse
    assert got["label"].tolist() == [-2 ** 63] and got["probabilities"].dtype == np.float32


def test_the_pid_1_reaper_takes_orphans_of_other_sessions_only() -> None:
    """A process of the server's own session (its code's subprocess) keeps its exit status for its
    own wait; one of another session (what a `podman exec` orphaned) is reaped."""
    import subprocess
    import sys
    import time

    from mlbuild.runtime.serve.__main__ import _reap_orphans

    ours = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    orphan = subprocess.Popen([sys.executable, "-c", "raise SystemExit(4)"], start_new_session=True)
    stat = Path(f"/proc/{orphan.pid}/stat")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
                                           or Path(f"/proc/{ours.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"):
        time.sleep(0.01)
    _reap_orphans()
    assert not stat.exists()           # reaped: gone from /proc
    assert ours.wait(10) == 3          # not taken from its own wait
    orphan.wait(10)


@pytest.mark.parametrize("which", ["serve", "monitor"])
def test_the_caller_s_pythonpath_does_not_reach_the_served_package(tmp_path: Path, which: str) -> None:
    """bin/serve and bin/monitor ran `python -s`, which reads PYTHONPATH: a dev shell's or another
    project's (a numpy, a sitecustomize) was imported before the toolchain's locked wheels, so
    `mlbuild serve` / `nix run .#serve-M` ran other code than the build and the image did."""
    import os
    import subprocess
    import sys

    from mlbuild.runtime import monitor, package

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "sitecustomize.py").write_text("raise SystemExit('PYTHONPATH leaked into the server')\n")
    template = package.SERVE_SCRIPT if which == "serve" else monitor.SCRIPT
    script = tmp_path / which
    script.write_text(template.format(python=sys.executable, name="m", runtime=str(Path(package.__file__).parents[2]),
                                      package=str(tmp_path / "pkg"), spec=str(tmp_path / "spec.json")))
    script.chmod(0o555)
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(junk)})
    assert "leaked" not in proc.stderr and proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("which", ["serve", "monitor"])
def test_the_served_package_writes_no_bytecode_into_the_store(tmp_path: Path, which: str) -> None:
    """With -E (PYTHONPATH ignored), PYTHONDONTWRITEBYTECODE went too: run as root, where the Nix
    store's folders are writable (no daemon), bin/serve wrote __pycache__ into the runtime's and
    the code's store paths, whose contents then no longer matched their registered hashes (a push
    refused them; a training took the .pyc into its provenance and was no longer reproducible)."""
    import os
    import shutil
    import subprocess
    import sys

    from mlbuild.runtime import monitor, package

    runtime = tmp_path / "runtime"   # a copy with no bytecode in it, as the store path has none
    shutil.copytree(Path(package.__file__).parents[1], runtime / "mlbuild",
                    ignore=shutil.ignore_patterns("__pycache__"))
    template = package.SERVE_SCRIPT if which == "serve" else monitor.SCRIPT
    script = tmp_path / which
    script.write_text(template.format(python=sys.executable, name="m", runtime=str(runtime),
                                      package=str(tmp_path / "pkg"), spec=str(tmp_path / "spec.json")))
    script.chmod(0o555)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not list(runtime.rglob("__pycache__")), "bytecode written beside the runtime's modules"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_weights_in_another_float_dtype_are_served_in_it(tmp_path: Path, dtype: torch.dtype, task: str) -> None:
    """A model trained in float64 (model.double()) loads its weights as float64, and the default
    preprocess gave it float32 rows: every request failed ("mat1 and mat2 must have the same
    dtype"), as did the validation; bfloat16 outputs, which numpy has no dtype for, failed too."""
    from safetensors.torch import load_file, save_file

    config: dict[str, Any] = {} if task == "classification" else {
        "task": "regression", "labels": None, "outputs": [{"name": "prediction", "datatype": "FP32", "shape": [-1]}]}
    params = {"features": 64, "hidden": 32, "classes": 10 if task == "classification" else 1}
    pkg = build_package(tmp_path / "p", train_steps=0, params=params, extra_config=config)
    weights = pkg / "model" / "model.safetensors"
    save_file({k: v.to(dtype) for k, v in load_file(str(weights)).items()}, str(weights))
    model = load_model(load_package(pkg), threads=1, verify=False)
    x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    out = model.run(x)
    reference = load_reference(pkg).to(dtype)
    with torch.no_grad():
        own = reference(torch.from_numpy(x).to(dtype)).float()   # the model's own forward pass, in its dtype
    if task == "classification":
        np.testing.assert_array_equal(out["probabilities"], torch.softmax(own, -1).numpy())
        np.testing.assert_array_equal(out["label"], own.argmax(-1).numpy())
    else:
        np.testing.assert_array_equal(out["prediction"], own[:, 0].numpy())


def test_a_forward_returning_a_tuple_or_dict_needs_a_postprocess(tmp_path: Path) -> None:
    """The default postprocess said "'tuple' object has no attribute 'float'"."""
    for returned, what in (("(y, y.sum(1))", "a tuple"), ('{"logits": y}', "a dict with keys ['logits']")):
        source = MLP_SOURCE.replace("def build_model(params):\n    return nn.Sequential(", "class M(nn.Sequential):\n"
                                    f"    def forward(self, x):\n        y = super().forward(x)\n        return {returned}\n\n\n"
                                    "def build_model(params):\n    return M(")
        pkg = build_package(tmp_path / what[2:7], source=source, train_steps=0)
        with pytest.raises(PackageError, match=re.escape(
                f"ModelError: the model's forward returned {what}, not a tensor, and the default postprocess takes "
                "one tensor; define postprocess(outputs) in the model's module")):
            load_model(load_package(pkg), threads=1)
        picks = build_package(tmp_path / f"{what[2:7]}-picked", train_steps=0, source=source + (
            '\n\ndef postprocess(out):\n    y = out[0] if isinstance(out, tuple) else out["logits"]\n'
            '    return {"probabilities": torch.softmax(y, -1), "label": y.argmax(-1)}\n'))
        out = load_model(load_package(picks), threads=1).run(np.zeros((2, 64), dtype=np.float32))
        assert out["label"].shape == (2,)


def test_weights_of_mixed_float_dtypes_get_float32_rows() -> None:
    """A float32 model holding a float16 table that its forward casts up (registered first) was
    given float16 rows by the default preprocess: its Linear failed every request ("mat1 and mat2
    must have the same dtype"), and the training's check let it through."""
    from mlbuild.runtime.dtypes import model_dtype as _model_dtype

    class Mixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) * self.scale.float()

    assert _model_dtype(Mixed()) == torch.float32
    assert _model_dtype(Mixed().half()) == torch.float16
    assert _model_dtype(torch.nn.Embedding(5, 3).double()) == torch.float64
    assert _model_dtype(torch.nn.Identity()) == torch.float32
    # a bfloat16 model keeping its LayerNorm, or a rotary table (a buffer), in float32 takes bfloat16 rows
    kept = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8)).to(torch.bfloat16)
    kept[1].float()
    kept.register_buffer("table", torch.ones(64))
    assert _model_dtype(kept) == torch.bfloat16
    only_buffers = torch.nn.Module()
    only_buffers.register_buffer("scale", torch.ones(2, dtype=torch.float64))
    assert _model_dtype(only_buffers) == torch.float64
