"""Builder of a training run: call the project's ``train(ctx)`` and write the model's outputs.

The training API (users write ordinary PyTorch)::

    def build_model(params: dict) -> torch.nn.Module      # the architecture, no weights
    def train(ctx) -> torch.nn.Module                     # returns the trained model

``ctx`` (:class:`Context`) gives ``params``, ``seed``, ``device``, ``data[name]`` (a dataset's
store path), ``out`` (a folder for extra artifacts), ``log_epoch(epoch, epochs, **metrics)``
(per-epoch metrics: shown live by ``mlbuild build`` and kept in metrics.json) and
``describe(...)`` (what the server needs: task, input shape, labels) and ``save_reference(x)``
(training-feature statistics, for drift monitoring).

Outputs: model.safetensors (never pickle), config.json, metrics.json, provenance.json, train.log
(what the training printed: its first 1 MiB and last 256 KiB, as a chatty training loop would
otherwise put hundreds of megabytes into the package's closure and image; the build log has it all).
Nothing written depends on the clock, so ``nix-build --check`` compares bit for bit.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections import deque
from pathlib import Path
from typing import Any, TextIO

from . import determinism
from .dtypes import as_input, model_dtype
from .hashing import dataset_hash, find_store_paths, sha256_file, tree_digest, tree_hashes
from .prepare import missing_module_hint
from .stagespec import load_spec

__all__ = ["Context", "main", "run", "save_weights", "unwrap", "weights_of", "check_fits", "check_answers", "EVENT_PREFIX", "TASKS"]

EVENT_PREFIX = "MLBUILD "
TASKS = ("classification", "regression")
#: The Open Inference Protocol datatypes the server takes (serve/package.py DATATYPES; a test keeps
#: the two equal: the server's modules are not in the training's runtime).
DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64")


LOG_HEAD = 1 << 20   # characters of train.log kept from the start
LOG_TAIL = 1 << 18   # and from the end


class _CappedLog:
    """train.log: the first ``head`` characters written, then (when more came) a line saying how
    many were left out, then the last ``tail``. Bounded memory: the tail is a ring of chunks."""

    def __init__(self, f: TextIO, head: int = LOG_HEAD, tail: int = LOG_TAIL) -> None:
        self.f, self.head_left, self.tail = f, head, tail
        self.ring: deque[str] = deque()
        self.ring_size = 0
        self.dropped = 0

    def write(self, text: str) -> None:
        if self.head_left > 0:
            kept = text[:self.head_left]
            self.f.write(kept)
            self.head_left -= len(kept)
            text = text[len(kept):]
            if not text:
                return
        self.ring.append(text)
        self.ring_size += len(text)
        while self.ring_size - len(self.ring[0]) >= self.tail:
            self.dropped += len(self.ring[0])
            self.ring_size -= len(self.ring.popleft())

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        tail = "".join(self.ring)
        if len(tail) > self.tail:
            self.dropped += len(tail) - self.tail
            tail = tail[-self.tail:]
        if self.dropped:
            self.f.write(f"\n[mlbuild: {self.dropped} characters of output left out here; "
                         f"the build log (nix log) has them]\n")
        self.f.write(tail)
        self.f.flush()


class _Tee:
    def __init__(self, stream: TextIO, log: _CappedLog) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.log.flush()
        self.stream.flush()


class Context:
    """What ``train(ctx)`` receives."""

    def __init__(self, spec: dict[str, Any], out: Path) -> None:
        self.params: dict[str, Any] = dict(spec["params"])
        self.seed: int = int(spec["seed"])
        self.device: str = spec["device"]
        self.data: dict[str, Path] = {k: Path(v["path"]) for k, v in spec["datasets"].items()}
        self.out = out
        self.history: list[dict[str, Any]] = []
        self.signature: dict[str, Any] = {}
        self.reference: dict[str, Any] | None = None

    def log_epoch(self, epoch: int, epochs: int, **metrics: float) -> None:
        row = {"epoch": epoch, "epochs": epochs, **{k: float(v) for k, v in metrics.items()}}
        self.history.append(row)
        print(EVENT_PREFIX + json.dumps({"event": "epoch", **row}, sort_keys=True), file=sys.stderr, flush=True)

    def describe(self, *, task: str = "classification", input_shape: list[int], labels: list[str] | None = None,
                 input_name: str = "input", datatype: str = "FP32") -> None:
        """Declare the model's interface; the package and server are built from it. ``task``:
        ``"classification"`` (outputs ``probabilities`` and ``label``; ``labels`` names the
        classes) or ``"regression"`` (output ``prediction``, one value per row)."""
        call = "ctx.describe(...)"
        if task not in TASKS:
            raise SystemExit(f"mlbuild: {call}: task {task!r} is not one mlbuild knows; use "
                             f"{' or '.join(repr(t) for t in TASKS)}")
        several = [(k, v) for k, v in (("input_shape", input_shape), ("input_name", input_name), ("datatype", datatype))
                   if isinstance(v, (list, tuple)) and (k != "input_shape" or any(isinstance(d, (list, tuple)) for d in v))]
        if several:   # the generic messages below said "must be a string", not that this is unsupported
            k, v = several[0]
            raise SystemExit(f"mlbuild: {call}: {k}={v!r} describes several inputs, but a model served by mlbuild has "
                             f"one input tensor; join the inputs into one row (e.g. input_shape=[67] for [64] and [3]) "
                             f"and split it in the model's forward or preprocess")
        if (not isinstance(input_shape, (list, tuple)) or not input_shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and (d > 0 or d == -1) for d in input_shape)):
            raise SystemExit(f"mlbuild: {call}: input_shape must be a list of positive ints (or -1 for any size), "
                             f"one per dimension of a row (e.g. [64] for 64 features), got {input_shape!r}")
        if datatype not in DATATYPES:
            near = [d for d in DATATYPES if isinstance(datatype, str) and d == datatype.upper()]
            what = ("a datatype mlbuild serves (tensors of numbers and booleans; BYTES, strings, is not)"
                    if datatype == "BYTES" else "a datatype mlbuild serves")
            raise SystemExit(f"mlbuild: {call}: datatype {datatype!r} is not {what}; "
                             + (f"use {near[0]!r}" if near else f"use one of {', '.join(DATATYPES)}")
                             + " (FP32 for float32 features, INT64 for token or category ids)")
        if not isinstance(input_name, str) or not input_name.strip():
            raise SystemExit(f"mlbuild: {call}: input_name must be a non-empty string (the name clients send), "
                             f"got {input_name!r}")
        if labels is not None:
            if task != "classification":
                raise SystemExit(f"mlbuild: {call}: labels name a classifier's classes; a {task} model has none "
                                 f"(drop labels=)")
            if not isinstance(labels, (list, tuple)) or not labels or not all(isinstance(x, str) for x in labels):
                raise SystemExit(f"mlbuild: {call}: labels must be a list of class names (strings), got {labels!r:.200}")
            labels = list(labels)
            twice = sorted({x for x in labels if labels.count(x) > 1})
            if twice:   # a name feedback, the v1 "class" and the suite's targets could not tell apart
                raise SystemExit(f"mlbuild: {call}: labels names {', '.join(map(repr, twice[:5]))} for more than one "
                                 f"class; give each class its own name")
        inputs = [{"name": input_name, "datatype": datatype, "shape": [-1, *input_shape]}]
        if task == "classification":
            n = len(labels) if labels else None
            outputs = [{"name": "probabilities", "datatype": "FP32", "shape": [-1, n or -1]},
                       {"name": "label", "datatype": "INT64", "shape": [-1]}]
        else:
            outputs = [{"name": "prediction", "datatype": "FP32", "shape": [-1]}]
        self.signature = {"task": task, "labels": labels, "inputs": inputs, "outputs": outputs}

    def save_reference(self, x: Any, bins: int = 10) -> None:
        """Per-feature statistics of the training inputs (mean, std, quantile bin edges and
        fractions), saved in the package for input-drift monitoring."""
        import numpy as np

        if hasattr(x, "detach") and hasattr(x, "double"):   # a torch tensor: a bfloat16 one, one that requires
            x = x.detach().cpu().double()                   # grad or one on a GPU has no numpy view
        a = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        qs = np.linspace(0, 1, bins + 1)[1:-1]
        edges = np.quantile(a, qs, axis=0).T
        fractions = []
        for j in range(a.shape[1]):
            idx = np.searchsorted(edges[j], a[:, j], side="right")
            fractions.append((np.bincount(idx, minlength=bins) / len(a)).round(6).tolist())
        self.reference = {"count": int(len(a)), "mean": a.mean(0).round(6).tolist(),
                          "std": a.std(0).round(6).tolist(), "edges": edges.round(6).tolist(),
                          "fractions": fractions}


def unwrap(model: Any, like: Any = None) -> Any:
    """The model a wrapper holds: ``torch.nn.DataParallel`` and ``DistributedDataParallel``
    (``.module``), ``torch.compile``'s ``OptimizedModule`` (``._orig_mod``). Their state_dict names
    every weight with a prefix (``module.``, ``_orig_mod.``) that ``build_model``'s plain module,
    which the server loads the weights into, does not have. With ``like`` (what ``build_model``
    built), a wrapped submodule too (``model.encoder = torch.compile(model.encoder)``: weights
    ``encoder._orig_mod.*``) is replaced in the model by the module it wraps, unless ``like`` holds
    one wrapped at the same place."""
    model = _unwrapped(model)
    if like is not None:
        _unwrap_within(model, _unwrapped(like))
    return model


def _unwrapped(model: Any) -> Any:
    import torch

    wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def _unwrap_within(model: Any, like: Any) -> None:
    import torch

    if not isinstance(model, torch.nn.Module):
        return
    built = like._modules if isinstance(like, torch.nn.Module) else {}
    for name, child in list(model.named_children()):
        other = built.get(name)
        inner = _unwrapped(child)
        if inner is not child and (other is None or _unwrapped(other) is other):
            setattr(model, name, inner)
        _unwrap_within(inner, None if other is None else _unwrapped(other))


def weights_of(model: Any, script: str) -> dict[str, Any]:
    """The model's state_dict as plain CPU tensors for safetensors; SystemExit naming an entry it
    cannot hold (a quantized module's packed parameters and dtype, a quantized or sparse tensor),
    which failed with ``'torch.dtype' object has no attribute 'detach'`` or safetensors' own error."""
    import torch

    state: dict[str, Any] = {}
    for name, value in model.state_dict().items():
        what = None
        if not isinstance(value, torch.Tensor):
            what = f"a {type(value).__module__}.{type(value).__qualname__}, not a tensor"
        elif value.is_quantized:
            what = f"a quantized tensor ({value.dtype})"
        elif value.layout != torch.strided:
            what = f"a {str(value.layout).replace('torch.', '')} tensor"
        if what is not None:
            raise SystemExit(
                f"mlbuild: the model train(ctx) in {script} returned holds {name!r}, {what}; mlbuild saves the "
                f"weights as safetensors, which hold plain (dense, unquantized) tensors only. Return the "
                f"floating-point model (a torch.ao.quantization model cannot be packaged; a sparse weight: "
                f".to_dense() it)")
        state[name] = value.detach().to("cpu").contiguous()
    return state


def _listed(names: Any, limit: int = 8) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_fits(model: Any, state: dict[str, Any], fresh: Any, script: str, defer: bool = False) -> list[str]:
    """Refuse, at training time, weights that the server could not load into ``build_model(params)``
    (it loads them strictly) or that it would load into a model answering otherwise: names or
    shapes that differ, and buffers registered with ``persistent=False`` (not in the weights, so
    the server keeps ``build_model``'s value) that training changed. With ``defer``, such buffers
    are returned instead, for :func:`check_answers` to say whether they change the answers (a mask
    or cache that the forward fills in before it reads it does not)."""
    import torch

    fix = (f"train(ctx) in {script} must return the model build_model(ctx.params) builds, as the server and the "
           f"validation build it from the same params (build it in train with build_model(ctx.params))")
    if not isinstance(fresh, torch.nn.Module):
        raise SystemExit(f"mlbuild: build_model(params) in {script} returned {type(fresh).__name__}, not a torch.nn.Module")
    built = fresh.state_dict()
    extra, lacking = set(state) - set(built), set(built) - set(state)
    if extra or lacking:
        parts = ([f"the trained model has {_listed(extra)}, which build_model(params)'s has not"] if extra else []) + \
                ([f"build_model(params)'s has {_listed(lacking)}, which the trained model has not"] if lacking else [])
        raise SystemExit(f"mlbuild: build_model(params) does not build the trained model: {'; '.join(parts)}. {fix}")
    # A lazy module's (torch.nn.LazyLinear) weights have no shape until loaded: load_state_dict gives them one.
    lazy = torch.nn.parameter.is_lazy
    shapes = [f"{k} is {list(state[k].shape)} trained, {list(built[k].shape)} from build_model(params)"
              for k in sorted(state) if not lazy(built[k]) and tuple(state[k].shape) != tuple(built[k].shape)]
    if shapes:
        raise SystemExit(f"mlbuild: build_model(params) builds other shapes than the trained model's, so the server "
                         f"could not load its weights: {'; '.join(shapes[:5])}"
                         + (f" and {len(shapes) - 5} more" if len(shapes) > 5 else "") + f". {fix}")
    fresh_buffers = dict(fresh.named_buffers())
    changed: list[str] = []
    for name, trained in model.named_buffers():
        if name in state or name not in fresh_buffers:
            continue
        other = fresh_buffers[name]
        if lazy(other) or lazy(trained):
            continue
        if (trained.shape == other.shape and trained.dtype == other.dtype
                and not torch.equal(trained.detach().cpu(), other.detach().cpu())):
            changed.append(name)
    if changed and not defer:
        raise SystemExit(_buffer_refusal(changed[0]))
    return changed


def _buffer_refusal(name: str) -> str:
    """Why a buffer registered with ``persistent=False`` that training changed is refused."""
    return (f"mlbuild: buffer {name!r} was registered with persistent=False, so it is not saved with the weights, "
            f"and training changed it: the server and the validation would use build_model(params)'s value, not "
            f"the trained one. Register it persistent (register_buffer's default), or compute it in build_model")


def _leaves(out: Any) -> list[Any]:
    """The tensors of a forward pass's output (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(out, dict):
        return [t for k in sorted(out, key=str) for t in _leaves(out[k])]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _leaves(item)]
    return [out]


def check_answers(model: Any, fresh: Any, module: Any, state: dict[str, Any], signature: dict[str, Any],
                  script: str) -> bool:
    """Refuse a model that answers otherwise once rebuilt as the server rebuilds it (``fresh``,
    what ``build_model(params)`` built, the saved weights loaded, eval mode), on two rows of the declared
    input: what it depends on is not in its weights (an attribute set in training,
    ``model.temperature = 2.0``, or a ``build_model`` that builds another forward on the same
    weights), and the server would answer otherwise than the model trained, with no error.

    Nothing is refused where the comparison cannot be made: a preprocess or forward that fails on
    these rows (the validation's warm-up names such failures), or a forward that does not answer
    the same twice (sampling). True where the two were compared and answer the same."""
    import numpy as np
    import torch

    spec = signature["inputs"][0]
    shape = [2, *[d if d > 0 else 3 for d in spec["shape"][1:]]]
    g = np.random.default_rng(0)
    kind = spec["datatype"]   # rows of its dtype, as the server hands them to preprocess: FP32 float32, UINT8 uint8...
    dtype = np.dtype(kind.lower().replace("fp", "float"))
    rows = (g.standard_normal(shape) if kind.startswith("FP") else g.integers(0, 2, shape)).astype(dtype)
    served = fresh
    try:
        served.load_state_dict(state, strict=True, assign=True)
    except Exception:
        return False   # check_fits named what does not fit
    served.eval()
    model.eval()
    user_pre = getattr(module, "preprocess", None)
    try:
        with torch.inference_mode():   # the rows as the server's preprocess hands them to the model
            x = user_pre(rows) if callable(user_pre) else as_input(rows, model_dtype(served))
            first, again, rebuilt = (_leaves(m(x)) for m in (model, model, served))
    except Exception:
        return False
    if not all(isinstance(t, torch.Tensor) for t in first + again + rebuilt) or len(first) != len(rebuilt):
        return False

    # float16 and bfloat16 round each result to 3 or 2 digits: the same weights laid out otherwise in memory
    # (channels_last, a transposed weight made contiguous in the file) differ in their last bit there
    eps = max((torch.finfo(t.dtype).eps for t in (*served.parameters(), *served.buffers(), *first)
               if t.is_floating_point()), default=0.0)
    rtol, atol = max(1e-4, 4 * eps), max(1e-5, 4 * eps)

    def same(a: list[Any], b: list[Any]) -> bool:
        return all(s.shape == t.shape and torch.allclose(s.float(), t.float(), rtol=rtol, atol=atol, equal_nan=True)
                   for s, t in zip(a, b))

    if not same(first, again):
        return False
    if not same(first, rebuilt):
        gap = max(float((s.float() - t.float()).abs().nan_to_num(nan=float("inf")).max()) if s.shape == t.shape
                  else float("inf") for s, t in zip(first, rebuilt))
        raise SystemExit(
            f"mlbuild: the model train(ctx) in {script} returned and build_model(params) with its saved weights answer "
            f"otherwise on the same input (by up to {gap:.3g}), in eval mode: the server and the validation rebuild "
            f"the model with build_model(params) and load only its weights (parameters and persistent buffers). Keep "
            f"what the model needs in them: a value set in training as a plain attribute (model.temperature = ...) "
            f"as a buffer (register_buffer), a choice of layers as a param in mlbuild.toml, which build_model reads")
    return True


def save_weights(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` as safetensors, byte for byte the same in every process.

    safetensors serializes ``__metadata__`` from a Rust ``HashMap``, whose iteration order is
    seeded per process: two metadata keys come out in either order, so the same weights gave one of
    two files (issue 4's "bimodal" training). One key has one order. The tensors themselves are
    ordered by dtype and name, deterministically. The model's name is in config.json.
    """
    from safetensors.torch import save_file

    save_file(unshared(state), str(path), metadata={"format": "pt"})


def unshared(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with a copy of each tensor whose memory an earlier one shares: tied weights (an
    output layer that is the embedding's weight) and a submodule used in two places are one tensor
    under two names, which safetensors' ``save_file`` refuses ("Some tensors share memory"). The
    file holds each name, as ``build_model``'s state_dict has each and the server loads strictly."""
    seen: set[int] = set()
    result: dict[str, Any] = {}
    for name, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr() if tensor.numel() else 0
        if ptr and ptr in seen:
            tensor = tensor.clone()
        seen.add(ptr)
        result[name] = tensor
    return result


def run(spec: dict[str, Any], out: Path) -> None:
    threads = int(spec.get("threads", 1))
    determinism.apply(int(spec["seed"]), spec["device"], threads)
    import torch

    from .prepare import load_module

    module = load_module(spec["code"], spec["script"])
    for fn in ("build_model", "train"):
        if not callable(getattr(module, fn, None)):
            raise SystemExit(f"mlbuild: {spec['script']} must define {fn}(...) (see the README's training API)")
    ctx = Context(spec, out)
    model = module.train(ctx)
    if not isinstance(model, torch.nn.Module):
        raise SystemExit(f"mlbuild: train(ctx) in {spec['script']} returned {type(model).__name__}, not a torch.nn.Module")
    if not ctx.signature:
        raise SystemExit(
            f"mlbuild: train(ctx) in {spec['script']} never called ctx.describe(...): the package, its server and "
            f"the validation need the model's task and input shape. Call ctx.describe(task=\"classification\", "
            f"input_shape=[FEATURES], labels=[...]) or ctx.describe(task=\"regression\", input_shape=[FEATURES]) "
            f"in train()")
    fresh = module.build_model(dict(spec["params"]))
    model = unwrap(model, fresh)
    state = weights_of(model, spec["script"])
    # A non-persistent buffer that training changed is refused unless the answers show it does not matter
    # (a mask or cache the forward fills in before it reads it, as the server's model will).
    changed = check_fits(model, state, fresh, spec["script"], defer=True)
    weights = out / "model.safetensors"
    save_weights(state, weights)
    # After the save: a forward that changes a buffer in place (a call counter) cannot change the file.
    try:
        agreed = check_answers(model, fresh, module, state, ctx.signature, spec["script"])
    except SystemExit:
        if changed:   # the buffer is why: say so
            raise SystemExit(_buffer_refusal(changed[0])) from None
        raise
    if changed and not agreed:
        raise SystemExit(_buffer_refusal(changed[0]))
    config = {"module": spec["module"], "script": spec["script"], "params": spec["params"],
              "model": spec["model"], **ctx.signature}
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    final = ctx.history[-1] if ctx.history else {}
    (out / "metrics.json").write_text(json.dumps({"epochs": ctx.history, "final": final}, indent=2, sort_keys=True) + "\n")
    if ctx.reference is not None:
        (out / "reference.json").write_text(json.dumps(ctx.reference, sort_keys=True) + "\n")
    code = tree_hashes(Path(spec["code"]))
    provenance = {
        "model": spec["model"],
        "weights_sha256": sha256_file(weights),
        # By hash: a dataset's path here would make the data part of the package and its image.
        "datasets": {name: dataset_hash(d) for name, d in sorted(spec["datasets"].items())},
        "code": {"store_path": spec["code"], "files": code,
                 "sha256": tree_digest(code)},
        "params": spec["params"], "seed": spec["seed"], "device": spec["device"],
        "toolchain": spec["toolchain"], "interpreter": spec["interpreter"],
        "determinism": determinism.settings(int(spec["seed"]), spec["device"], threads),
        # The git revision and Nix version are facts of a build, not inputs (an input would
        # retrain on every commit): `mlbuild build` records them beside the output. A build of a
        # dirty tree (--allow-dirty) is an input, so it never shares a path with a clean one.
        "git": {"dirty": bool(spec.get("dirty", False))},
        "system": spec.get("system"),
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    check_no_dataset_paths(spec, out)


def check_no_dataset_paths(spec: dict[str, Any], out: Path) -> None:
    """Refuse outputs that name a dataset's store path, before Nix does (``disallowedReferences``,
    with a message that does not say why): such an output refers to the dataset, so the package,
    every push of it and its image would carry the training data."""
    found = find_store_paths(out, {name: d["path"] for name, d in spec["datasets"].items()})
    if found:
        where = "; ".join(f"{f} names the store path of dataset {name}" for name, f in found)
        raise SystemExit(
            f"mlbuild: the training output's {where}. That would carry the dataset into the package and its image; "
            f"copy what the model needs (a vocabulary, statistics) into ctx.out, or record a name or a hash instead of the path")


def compiler_hint(exc: BaseException) -> str | None:
    """What to do when ``exc`` is torch.compile's inductor finding no C++ compiler (a build has
    none: only the toolchain); None for any other failure."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if type(cause).__module__.startswith("torch._inductor") and type(cause).__name__ in (
                "InvalidCxxCompiler", "CppCompileError"):
            return ("mlbuild: torch.compile's default backend (inductor) compiles C++ while the model runs, and a "
                    "build has no C++ compiler (it sees only the toolchain; code generated for this machine's CPU "
                    "would not train reproducibly elsewhere either). Train eagerly: drop torch.compile, or use "
                    "torch.compile(model, backend=\"aot_eager\"), which needs no compiler")
        cause = cause.__cause__ or cause.__context__
    return None


def main() -> None:
    spec = load_spec()
    out = Path(os.environ["out"])
    out.mkdir()
    with open(out / "train.log", "w") as f:
        log = _CappedLog(f)
        assert sys.__stdout__ is not None and sys.__stderr__ is not None
        sys.stdout = _Tee(sys.__stdout__, log)
        sys.stderr = _Tee(sys.__stderr__, log)
        try:
            run(spec, out)
        except SystemExit as e:  # mlbuild's refusals say what to do: no traceback around them
            print(e.code if isinstance(e.code, str) else f"mlbuild: training exited with status {e.code}", file=sys.stderr)
            sys.stderr.flush()
            raise SystemExit(1) from None
        except BaseException as e:
            traceback.print_exc()
            hint = missing_module_hint(e) or compiler_hint(e)   # an import inside train(), say
            if hint is not None:
                print(hint, file=sys.stderr)
            sys.stderr.flush()
            raise SystemExit(1) from None
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            log.close()


if __name__ == "__main__":
    main()
