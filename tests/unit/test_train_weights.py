"""The weights file is byte-identical across processes (issue 4's bimodal --check failure).

safetensors writes ``__metadata__`` from a per-process-seeded Rust HashMap; with two keys, about
half of all processes wrote them in the other order. Each run here is a fresh process, so with the
old two-key metadata this test fails unless eight coin tosses all agree (1 in 128).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

SAVE = """
import sys, torch
from pathlib import Path
from mlbuild.runtime.train import save_weights
g = torch.Generator().manual_seed(0)
state = {"b.weight": torch.randn(4, 3, generator=g), "a.bias": torch.randn(3, generator=g),
         "c.steps": torch.arange(5)}
save_weights(state, Path(sys.argv[1]))
"""


def test_weights_file_is_identical_in_every_process(tmp_path: Path) -> None:
    blobs = set()
    for i in range(8):
        out = tmp_path / f"w{i}.safetensors"
        subprocess.run([sys.executable, "-c", SAVE, str(out)], check=True)
        blobs.add(out.read_bytes())
    assert len(blobs) == 1


def test_weights_round_trip(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from mlbuild.runtime.train import save_weights

    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    save_weights(state, tmp_path / "m.safetensors")
    assert torch.equal(load_file(str(tmp_path / "m.safetensors"))["w"], state["w"])


class _Tied(__import__("torch").nn.Module):
    """A language-model head that is the embedding's weight, and a block used twice."""

    def __init__(self) -> None:
        import torch
        super().__init__()
        self.emb = torch.nn.Embedding(12, 4)
        self.block = torch.nn.Linear(4, 4)
        self.again = self.block
        self.out = torch.nn.Linear(4, 12, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
        return self.out(self.again(self.block(self.emb(x))))


def test_tied_weights_and_shared_submodules_are_saved_and_load_into_build_model(tmp_path: Path) -> None:
    """safetensors' save_file refused them ("Some tensors share memory"): a training of a tied
    language model failed after all its epochs, with safetensors' advice to call save_model."""
    import torch
    from safetensors.torch import load_file

    from mlbuild.runtime.train import save_weights

    torch.manual_seed(0)
    model = _Tied()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_weights(state, tmp_path / "m.safetensors")
    loaded = load_file(str(tmp_path / "m.safetensors"))
    assert sorted(loaded) == sorted(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    fresh = _Tied()
    fresh.load_state_dict(loaded, strict=True, assign=True)   # as the server loads them
    x = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.eval()(x))
    assert model.out.weight is model.emb.weight   # the trained model itself is left as it was


def test_a_wrapped_model_is_saved_as_the_model_it_wraps() -> None:
    """train returning torch.nn.DataParallel(model) or torch.compile(model) failed: its weights are
    named module.* or _orig_mod.*, which build_model's module has not."""
    import torch

    from mlbuild.runtime.train import check_fits, unwrap

    inner = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    for wrapped in (torch.nn.DataParallel(inner), torch.compile(inner), torch.nn.DataParallel(torch.compile(inner))):
        model = unwrap(wrapped)
        assert model is inner
        check_fits(model, model.state_dict(), torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)),
                   "model.py")


def _refusal(model: "torch.nn.Module", fresh: "torch.nn.Module") -> str:  # noqa: F821
    import pytest

    from mlbuild.runtime.train import check_fits

    with pytest.raises(SystemExit) as e:
        check_fits(model, model.state_dict(), fresh, "model.py")
    return str(e.value.code)


def test_a_build_model_that_cannot_take_the_weights_is_refused_at_training() -> None:
    """A build_model(params) of other layer sizes than train's model trained, packaged and only
    failed when the validation or the server loaded the weights; other names listed both sides
    as "the trained model's weights"."""
    import torch
    from torch import nn

    message = _refusal(nn.Sequential(nn.Linear(4, 32), nn.Linear(32, 3)), nn.Sequential(nn.Linear(4, 16), nn.Linear(16, 3)))
    assert message.startswith("mlbuild: build_model(params) builds other shapes than the trained model's, so the "
                              "server could not load its weights: 0.bias is [32] trained, [16] from build_model(params); "
                              "0.weight is [32, 4] trained, [16, 4] from build_model(params); 1.weight is [3, 32] "
                              "trained, [3, 16] from build_model(params). ")
    assert "train(ctx) in model.py must return the model build_model(ctx.params) builds" in message
    message = _refusal(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), nn.Sequential(nn.Linear(4, 3)))
    assert ("does not build the trained model: the trained model has 1.bias, 1.num_batches_tracked, 1.running_mean, "
            "1.running_var, 1.weight, which build_model(params)'s has not. ") in message
    message = _refusal(nn.Sequential(nn.Linear(4, 3)), nn.Sequential(nn.Identity(), nn.Linear(4, 3)))
    assert "build_model(params)'s has 1.bias, 1.weight, which the trained model has not" in message
    with_a_tensor = _refusal(nn.Linear(4, 3), torch.zeros(3))   # type: ignore[arg-type]
    assert "build_model(params) in model.py returned Tensor, not a torch.nn.Module" in with_a_tensor


class _Scaled(__import__("torch").nn.Module):
    def __init__(self) -> None:
        import torch
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)
        self.register_buffer("scale", torch.ones(4), persistent=False)
        self.register_buffer("cache", torch.zeros(0), persistent=False)


def test_a_non_persistent_buffer_that_training_changed_is_refused() -> None:
    """register_buffer(..., persistent=False) is not in the weights: a scale set in training was
    served as build_model's ones, with no word (the validation only scored lower)."""
    model, fresh = _Scaled(), _Scaled()
    fresh.load_state_dict(model.state_dict())
    model.cache = __import__("torch").ones(8)   # a cache that grows (a rotary table): rebuilt when needed
    from mlbuild.runtime.train import check_fits
    check_fits(model, model.state_dict(), fresh, "model.py")
    model.scale.fill_(2.0)
    assert _refusal(model, fresh) == (
        "mlbuild: buffer 'scale' was registered with persistent=False, so it is not saved with the weights, and "
        "training changed it: the server and the validation would use build_model(params)'s value, not the trained "
        "one. Register it persistent (register_buffer's default), or compute it in build_model")


def test_weights_safetensors_cannot_hold_are_named() -> None:
    """A dynamically quantized model (torch.ao.quantization.quantize_dynamic) failed its training
    with a traceback ending in "'torch.dtype' object has no attribute 'detach'"."""
    import pytest
    import torch

    from mlbuild.runtime.train import weights_of

    quantized = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(4, 3)), {torch.nn.Linear},
                                                       dtype=torch.qint8)
    with pytest.raises(SystemExit) as e:
        weights_of(quantized, "model.py")
    assert str(e.value.code).startswith(
        "mlbuild: the model train(ctx) in model.py returned holds '0._packed_params.dtype', a torch.dtype, not a "
        "tensor; mlbuild saves the weights as safetensors")
    assert "which hold plain (dense, unquantized) tensors only. Return the floating-point model" in str(e.value.code)
    sparse = torch.nn.Linear(4, 3)
    sparse.register_buffer("mask", torch.eye(3).to_sparse())
    with pytest.raises(SystemExit, match=r"holds 'mask', a sparse_coo tensor; .*: \.to_dense\(\) it\)"):
        weights_of(sparse, "model.py")
    static = torch.nn.Linear(4, 3)
    static.register_buffer("q", torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8))
    with pytest.raises(SystemExit, match=r"holds 'q', a quantized tensor \(torch\.qint8\); mlbuild saves"):
        weights_of(static, "model.py")
    plain = weights_of(torch.nn.Linear(4, 3), "model.py")
    assert sorted(plain) == ["bias", "weight"] and not plain["weight"].requires_grad


class _Temperature(__import__("torch").nn.Module):
    def __init__(self) -> None:
        import torch
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.temperature = 1.0

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
        return self.fc(x) / self.temperature


def _answers(model: "torch.nn.Module", build: Any, shape: list[int], datatype: str = "FP32",  # noqa: F821
             **handlers: Any) -> str | None:
    from types import SimpleNamespace

    from mlbuild.runtime.train import check_answers, weights_of

    module = SimpleNamespace(build_model=build, **handlers)
    signature = {"inputs": [{"name": "input", "datatype": datatype, "shape": [-1, *shape]}]}
    try:
        check_answers(model, build({}), module, weights_of(model, "model.py"), signature, "model.py")
    except SystemExit as e:
        return str(e.code)
    return None


def test_a_model_that_answers_otherwise_once_rebuilt_is_refused_at_training() -> None:
    """What the model depends on beyond its weights (an attribute set in training, another forward
    in build_model) was served with no error, answering otherwise than the trained model."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    tempered = _Temperature()
    tempered.temperature = 3.0
    message = _answers(tempered, lambda p: _Temperature(), [4])
    assert message is not None and message.startswith(
        "mlbuild: the model train(ctx) in model.py returned and build_model(params) with its saved weights answer "
        "otherwise on the same input (by up to ")
    assert "a value set in training as a plain attribute (model.temperature = ...) as a buffer" in message
    relu = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    assert _answers(relu, lambda p: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)), [4]) is not None
    # what answers the same is let through: tied weights, BatchNorm and Dropout (eval mode), a
    # float64 model, token ids, an LSTM over a sequence, a forward returning a dict
    bn = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    bn(torch.randn(16, 4))
    fresh_bn = lambda p: nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))  # noqa: E731
    assert _answers(bn, fresh_bn, [4]) is None
    assert _answers(bn.double(), lambda p: fresh_bn(p).double(), [4]) is None
    assert _answers(_Tied(), lambda p: _Tied(), [5], "INT64") is None
    lstm = nn.LSTM(4, 6, batch_first=True)
    assert _answers(lstm, lambda p: nn.LSTM(4, 6, batch_first=True), [8, 4]) is None

    class Pixels(nn.Linear):   # UINT8 rows, as the server hands them over: a forward that scales them itself
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.dtype == torch.uint8
            return super().forward(x.float() / 255)

    class Scaled(Pixels):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    assert _answers(Pixels(4, 3), lambda p: Pixels(4, 3), [4], "UINT8") is None
    assert _answers(Pixels(4, 3), lambda p: Scaled(4, 3), [4], "UINT8") is not None
    # no comparison where none can be made: a preprocess refusing the rows, a forward that samples
    assert _answers(tempered, lambda p: _Temperature(), [4], preprocess=lambda x: 1 / 0) is None

    class Sampling(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) + torch.randn(len(x), 3)

    assert _answers(Sampling(4, 3), lambda p: Sampling(4, 3), [4]) is None


def test_a_model_of_mixed_float_dtypes_is_compared_on_float32_rows() -> None:
    """The check gave a float32 model holding a float16 table (registered first) float16 rows,
    which its Linear refused, so a model the server rebuilds to answer otherwise went through."""
    import torch
    from torch import nn

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3, dtype=torch.float16))
            self.fc = nn.Linear(4, 3)
            self.temperature = 1.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) * self.scale.float() / self.temperature

    torch.manual_seed(0)
    assert _answers(Mixed(), lambda p: Mixed(), [4]) is None
    tempered = Mixed()
    tempered.temperature = 3.0
    assert _answers(tempered, lambda p: Mixed(), [4]) is not None


def test_a_model_of_lazy_modules_is_saved() -> None:
    """build_model returning torch.nn.LazyLinear, which the server loads the weights into (they
    give it its shape), failed training with "Can't access the shape of an uninitialized
    parameter or buffer" from the check that the weights fit."""
    import torch
    from torch import nn

    from mlbuild.runtime.train import check_fits, weights_of

    def build(p: Any) -> nn.Module:
        return nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(3))

    torch.manual_seed(0)
    model = build({})
    model(torch.randn(2, 4))
    check_fits(model, weights_of(model, "model.py"), build({}), "model.py")
    assert _answers(model, build, [4]) is None
    assert _refusal(model, nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(3), nn.LazyLinear(2))).startswith(
        "mlbuild: build_model(params) does not build the trained model: build_model(params)'s has 3.bias, 3.weight")


def test_a_wrapped_submodule_is_saved_as_the_module_it_wraps() -> None:
    """model.encoder = torch.compile(model.encoder) (or DataParallel) named its weights
    encoder._orig_mod.* (encoder.module.*), and training refused the model as one build_model
    does not build; a build_model that wraps the same submodule keeps its names, and a user's
    own attribute named module is no wrapper."""
    import torch
    from torch import nn

    from mlbuild.runtime.train import check_fits, unwrap, weights_of

    class Net(nn.Module):
        def __init__(self, wrap: Any = None) -> None:
            super().__init__()
            self.encoder = nn.Linear(4, 8)
            self.layers = nn.ModuleList([nn.Linear(8, 8)])
            self.module = nn.Sequential(nn.ReLU(), nn.Linear(8, 3))
            if wrap is not None:
                self.encoder, self.layers[0] = wrap(self.encoder), wrap(self.layers[0])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.module(self.layers[0](self.encoder(x)))

    compiled = lambda m: torch.compile(m, backend="aot_eager")  # noqa: E731
    for wrap in (compiled, nn.DataParallel, lambda m: nn.DataParallel(compiled(m))):
        wrapped = Net(wrap)
        inner = wrapped.encoder
        model = unwrap(torch.nn.DataParallel(wrapped), Net())
        assert model is wrapped and sorted(model.state_dict()) == sorted(Net().state_dict())
        assert isinstance(model.encoder, nn.Linear) and isinstance(model.layers[0], nn.Linear) and inner is not model.encoder
        check_fits(model, weights_of(model, "model.py"), Net(), "model.py")
        same = Net(wrap)   # build_model wraps it too: the server loads the wrapped names
        assert sorted(unwrap(same, Net(wrap)).state_dict()) == sorted(Net(wrap).state_dict())


def test_a_half_precision_model_laid_out_otherwise_is_not_refused() -> None:
    """A float16 model trained channels_last, or with a transposed weight (both saved contiguous),
    answered, rebuilt, one float16 ulp away (0.000122, 0.000488) and training refused it as a model
    that answers otherwise; a float16 model's own difference, a temperature set in training, is
    still refused."""
    import torch
    from torch import nn

    class Net(nn.Sequential):
        def __init__(self, *layers: nn.Module) -> None:
            super().__init__(*layers)
            self.temperature = 1.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) / self.temperature

    conv = lambda p: Net(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.Flatten(),  # noqa: E731
                         nn.Linear(32 * 12 * 12, 4)).half()
    torch.manual_seed(5)
    assert _answers(conv({}).to(memory_format=torch.channels_last), conv, [3, 16, 16]) is None
    dense = lambda p: Net(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 64)).half()  # noqa: E731
    torch.manual_seed(0)
    transposed = dense({})
    for layer in (transposed[0], transposed[2]):
        layer.weight = nn.Parameter(layer.weight.detach().t().contiguous().t())
    assert _answers(transposed, dense, [256]) is None
    for model, build, shape in ((conv({}), conv, [3, 16, 16]), (dense({}), dense, [256])):
        model.temperature = 1.5
        assert _answers(model, build, shape) is not None


CACHED = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("mask", torch.zeros(3), persistent=False)   # filled in by the first forward

    def forward(self, x):
        if not self.mask.any():
            self.mask.copy_(torch.tensor([1.0, 0.0, 1.0]))
        return self.fc(x) * self.mask * self.fc.weight.new_tensor(SCALE)


def build_model(params):
    return Net(params)


def train(ctx):
    ctx.describe(task="classification", input_shape=[4])
    model = build_model(ctx.params)
    model(torch.ones(2, 4))
    ADJUST
    return model
'''


def _train(tmp_path: Path, name: str, source: str) -> subprocess.CompletedProcess[str]:
    import json

    code = tmp_path / name
    code.mkdir()
    (code / "model.py").write_text(source)
    spec = {"seed": 0, "device": "cpu", "threads": 1, "code": str(code), "script": "model.py", "module": "model",
            "model": name, "params": {}, "datasets": {}, "toolchain": "t", "interpreter": "i"}
    run = "import json, sys; from pathlib import Path; from mlbuild.runtime.train import run; " \
          "out = Path(sys.argv[2]); out.mkdir(); run(json.loads(sys.argv[1]), out)"
    return subprocess.run([sys.executable, "-B", "-c", run, json.dumps(spec), str(tmp_path / f"{name}-out")],
                          capture_output=True, text=True)


def test_a_non_persistent_buffer_the_forward_fills_in_is_not_refused(tmp_path: Path) -> None:
    """A mask registered with persistent=False and filled in by the first forward (as the server's
    model fills it in too) was refused as one that training changed; one that training set to
    another value, which the rebuilt model answers otherwise without, is still refused, as the
    buffer."""
    filled = _train(tmp_path, "filled", CACHED.replace("SCALE", "1.0").replace("ADJUST", "pass"))
    assert filled.returncode == 0, filled.stderr
    assert (tmp_path / "filled-out" / "model.safetensors").exists()
    scaled = _train(tmp_path, "scaled", CACHED.replace("SCALE", "1.0").replace("ADJUST", "model.mask.mul_(2)"))
    assert scaled.returncode == 1 and "mlbuild: buffer 'mask' was registered with persistent=False" in scaled.stderr
    sampled = CACHED.replace("SCALE", "torch.rand(1).item()").replace("ADJUST", "model.mask.mul_(2)")
    unsure = _train(tmp_path, "sampled", sampled)   # answers that cannot be compared: the buffer is refused
    assert unsure.returncode == 1 and "mlbuild: buffer 'mask' was registered with persistent=False" in unsure.stderr
