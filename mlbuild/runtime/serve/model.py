"""Loading a package's model: the user's module, the safetensors weights, the pre/post handler.

The user's module (``config.module``, imported from ``PKG/code``) defines
``build_model(params) -> torch.nn.Module`` (architecture only) and may define
``preprocess(x: numpy.ndarray) -> torch.Tensor`` and
``postprocess(outputs: torch.Tensor) -> dict[str, numpy.ndarray]``. Defaults: the input as a
tensor, floating-point and boolean inputs in the dtype of most of the model's weights (float32 for
most); for ``task == "classification"``, ``{"probabilities": softmax, "label": argmax}`` (a model
returning one score a row, or probabilities, is refused at load, naming the postprocess it needs);
otherwise ``{<first output>: outputs}`` (several values a row for a one-value output are refused).
Any output declared ``[-1]`` that comes back ``[N, 1]`` (from the default or the user's
postprocess) is served as ``[N]``. A ``ValueError`` raised by
``preprocess`` refuses the request's input (``InputRefused``: a 400 with its message), so a handler
can say which rows it cannot take (a token id beyond the vocabulary); any other exception, or one
from the model itself, is the model's failure (a 500).

Weights are read with safetensors (memory-mapped) and assigned into the module without an extra
copy (``load_state_dict(strict=True, assign=True)``); the file's sha256 is checked against the
manifest first.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file

from ..dtypes import as_input, model_dtype
from ..hashing import sha256_file
from .package import MAX_THREADS, Package, PackageError, ServeError, TensorSpec
from .protocol import ProtocolError

__all__ = ["LoadedModel", "ModelError", "InputRefused", "load_model", "default_threads", "env_threads",
           "sha256_file"]

log = logging.getLogger("mlbuild.serve")

Preprocess = Callable[[np.ndarray], torch.Tensor]
Postprocess = Callable[[torch.Tensor], dict[str, np.ndarray]]

class ModelError(ServeError):
    """The model (user code) failed or returned outputs that do not fit ``config.outputs``."""

class InputRefused(ProtocolError):
    """The user's ``preprocess`` refused the input with a ``ValueError``: the client's fault (400)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)

def cgroup_cpus(root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup and its parents (``podman run --cpus 1``, a
    Kubernetes CPU limit), in CPUs; None when there is none. cgroup v2 (``cpu.max``) and v1
    (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), the cgroup's own folder or, in a container
    that mounts its cgroup as the root of the hierarchy, the root itself."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, read = root, _cpu_max
        elif "cpu" in controllers.split(","):
            base, read = root / ("cpu" if (root / "cpu").is_dir() else controllers), _cfs_quota
        else:
            continue
        folder = base / path.lstrip("/")
        for d in (folder, *folder.parents):
            if d == base.parent:
                break
            limit = read(d)
            if limit is not None:
                limits.append(limit)
    return min(limits) if limits else None


def _cpu_max(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _cfs_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        return quota / int((folder / "cpu.cfs_period_us").read_text()) if quota > 0 else None
    except (OSError, ValueError, ZeroDivisionError):
        return None


def env_threads() -> int | None:
    """``$MLBUILD_SERVE_THREADS`` (None when unset or empty); ServeError for a value that is not a
    thread count. The server checks it before it binds its port, not when the model loads."""
    env = os.environ.get("MLBUILD_SERVE_THREADS", "").strip()
    if not env:
        return None
    try:
        value = int(env)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_THREADS:
        raise ServeError(f"MLBUILD_SERVE_THREADS={env!r} is not a thread count: set it to a whole number in "
                         f"1..{MAX_THREADS} (or unset it: the CPUs this process may use), or pass --threads N")
    return value


def default_threads() -> int:
    """Intra-op threads: ``$MLBUILD_SERVE_THREADS``, else the CPUs this process may run on, at most
    its cgroup's CPU quota rounded up (a container limited to 1 CPU on a 64-core node ran 64
    threads, throttled)."""
    value = env_threads()
    if value is not None:
        return value
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
    quota = cgroup_cpus()
    return max(1, min(cpus, math.ceil(quota)) if quota is not None else cpus)

def _import_user_module(pkg: Package) -> Any:
    code = str(pkg.code_dir)
    if code not in sys.path:
        sys.path.insert(0, code)
    cached = sys.modules.get(pkg.module)
    if cached is not None and not str(getattr(cached, "__file__", "") or "").startswith(code + os.sep):
        del sys.modules[pkg.module]  # a same-named module from another package (tests load several)
    try:
        return importlib.import_module(pkg.module)
    except (Exception, SystemExit, KeyboardInterrupt) as e:   # sys.exit() or argparse at import: say so, not exit
        raise PackageError(pkg.code_dir, f"importing module {pkg.module!r} failed: {type(e).__name__}: {e}") from e

def _default_preprocess(x: np.ndarray) -> torch.Tensor:
    """float32 for floating-point and BOOL inputs (what a Linear layer takes); integers (token ids,
    categories: what an Embedding takes) as they are."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.float() if t.is_floating_point() or t.dtype == torch.bool else t

def _preprocess_to(dtype: torch.dtype) -> Preprocess:
    """The default preprocess for a model whose weights are ``dtype``: a float32 input into float64
    weights failed every request ("mat1 and mat2 must have the same dtype")."""
    def preprocess(x: np.ndarray) -> torch.Tensor:
        return as_input(x, dtype)   # type: ignore[no-any-return]
    return preprocess

def _one_tensor(outputs: Any) -> torch.Tensor:
    if not isinstance(outputs, torch.Tensor):
        keys = f" with keys {sorted(map(str, outputs))[:8]}" if isinstance(outputs, dict) else ""
        raise ModelError(f"the model's forward returned a {type(outputs).__name__}{keys}, not a tensor, and the "
                         f"default postprocess takes one tensor; define postprocess(outputs) in the model's module, "
                         f"picking the outputs from it (see the README's handler)")
    return outputs

def _classification_postprocess(outputs: torch.Tensor) -> dict[str, np.ndarray]:
    outputs = _one_tensor(outputs)
    if outputs.ndim < 2 or outputs.shape[-1] == 1:
        # softmax over one column is 1.0: every row was served as class 0, sure of it
        raise ModelError(
            f"the model returns one score a row (shape {list(outputs.shape)}), but a classifier's default "
            f"postprocess takes one score per class (softmax, then argmax: every row would be class 0); for a "
            f"binary classifier with one output (a sigmoid or a logit), define postprocess(outputs) in the "
            f"model's module: p = torch.sigmoid(outputs).reshape(-1) (outputs.reshape(-1) if forward applies the "
            f"sigmoid); return {{\"probabilities\": torch.stack([1 - p, p], 1), \"label\": (p > 0.5).long()}}")
    probs = torch.softmax(outputs.float(), dim=-1)
    return {"probabilities": probs.numpy(), "label": torch.argmax(outputs, dim=-1).to(torch.int64).numpy()}

def _looks_like_probabilities(outputs: Any) -> bool:
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2 or outputs.shape[1] < 2:
        return False
    # within the rounding of the outputs' dtype: a bfloat16 softmax's [0.621, 0.377] sums to 0.998
    tolerance = max(1e-3, 2 * torch.finfo(outputs.dtype).eps) if outputs.dtype.is_floating_point else 1e-3
    x = outputs.detach().double()
    return bool((x >= 0).all()) and bool(((x.sum(1) - 1).abs() < tolerance).all())

def _refuse_probabilities(*outputs: Any) -> None:
    """ModelError for a forward that returns probabilities (a softmax at its end), which the
    default postprocess's softmax would flatten: [1, 0] was served as [0.73, 0.27], with the right
    label, so the validation's accuracy and ROC-AUC did not show it. ``outputs``: the forward's on
    each warm-up row (zeros, and ones where preprocess takes them): a softmax's are >= 0 and sum
    to 1 on every row, and logits that happen to on one row (a binary model's [0.3, 0.7] for a row of
    zeros, its bias) do not on the next, so such a model is not refused."""
    if not outputs or not all(map(_looks_like_probabilities, outputs)):
        return
    raise ModelError(
        "the model's forward returns probabilities (on the warm-up rows its outputs are >= 0 and sum to 1: a "
        "softmax at its end), and a classifier's default postprocess applies a softmax to them again, so the "
        "served probabilities would be flattened ([1, 0] served as [0.73, 0.27]); return the logits from forward "
        "(cross_entropy takes logits), or define postprocess(outputs) in the model's module returning "
        "{\"probabilities\": outputs, \"label\": outputs.argmax(-1)}")

def _single_output_postprocess(spec: TensorSpec, task: str) -> Postprocess:
    """The raw outputs as the one declared output (``run`` serves ``[N, 1]`` as a declared ``[N]``)."""
    def postprocess(outputs: torch.Tensor) -> dict[str, np.ndarray]:
        outputs = _one_tensor(outputs)
        if len(spec.shape) == 1 and outputs.ndim == 2 and outputs.shape[1] > 1:
            # the shape check below said only "declares [-1]", and the fix it named was "the model"
            raise ModelError(
                f"the model returns {outputs.shape[1]} values a row (shape {list(outputs.shape)}), but a {task} "
                f"model serves one, {spec.name!r} (shape [-1]); mlbuild serves one target a model: train a model "
                f"per target, or define postprocess(outputs) returning {{{spec.name!r}: ...}} with one value a row")
        return {spec.name: _numpy(outputs)}
    return postprocess

def _numpy(t: torch.Tensor) -> np.ndarray:
    """``t`` as an array; bfloat16, which numpy has no dtype for, as float32 (exactly)."""
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()

def _cast_output(spec: TensorSpec, value: Any) -> np.ndarray:
    """``value`` (what postprocess returned for ``spec``) as an array of the declared datatype;
    ModelError for what casting would turn into other numbers (NaN as an integer, None, text)."""
    if isinstance(value, torch.Tensor):
        value = _numpy(value)
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        what = "None" if value is None else f"{type(value).__name__} of {arr.dtype.name} values"
        raise ModelError(f"postprocess returned output {spec.name!r} as {what}, not real numbers; "
                         f"config.json declares {spec.datatype}")
    if arr.dtype.kind == "f" and np.dtype(spec.dtype).kind in "iu" and arr.size:
        info = np.iinfo(spec.dtype)
        with np.errstate(invalid="ignore"):
            # float(info.max) rounds up to 2**63 for INT64, which casts to -2**63: strictly below it
            fits = np.isfinite(arr).all() and info.min <= arr.min() and arr.max() < float(info.max) + 1
        if not fits:
            raise ModelError(f"postprocess returned output {spec.name!r} holding NaN, infinity or values beyond "
                             f"{spec.datatype} (config.json's datatype), which cannot be cast to it")
    if arr.dtype == spec.dtype:   # the usual case (float32 scores, int64 labels): nothing to cast
        return arr
    if arr.dtype.kind == "f" and arr.dtype.itemsize > np.dtype(spec.dtype).itemsize:
        with np.errstate(all="ignore"):   # float64 to FP32 may overflow to inf: the encoders refuse that for JSON
            return arr.astype(spec.dtype, copy=False)
    return arr.astype(spec.dtype, copy=False)

class LoadedModel:
    """A ready model: ``run(batch)`` maps an input array (rows first) to validated output arrays.

    Call ``run`` from one thread at a time (the batcher's worker).
    """

    def __init__(self, pkg: Package, module: torch.nn.Module, preprocess: Preprocess,
                 postprocess: Postprocess, load_seconds: float, threads: int) -> None:
        self.pkg, self.module = pkg, module
        self.preprocess, self.postprocess = preprocess, postprocess
        self.load_seconds, self.threads = load_seconds, threads
        # A classifier's class count as its outputs show it (the width of its probabilities at the
        # warm-up), for a model that declares no class names: the validation counts them so too.
        self.classes: int | None = None

    def bind_thread(self) -> None:
        """Apply the intra-op thread count in the calling thread (OpenMP keeps it per thread)."""
        torch.set_num_threads(self.threads)

    def forward(self, batch: np.ndarray) -> torch.Tensor:
        """The bare forward pass (no postprocessing), as the benchmark's reference."""
        with torch.inference_mode():
            out: torch.Tensor = self.module(self.preprocess(batch))
        return out

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        try:
            return self._run(batch)
        except Exception:
            raise
        except BaseException as e:   # sys.exit() or KeyboardInterrupt in user code: would end the batcher's
            # thread (every later request would hang) or the event loop; a failure like any other
            raise ModelError(f"the model's code raised {type(e).__name__}({str(e)[:200]}); a handler must raise an "
                             "exception (ValueError to refuse the input), not exit") from e

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        rows = int(batch.shape[0])
        with torch.inference_mode():
            try:
                x = self.preprocess(batch)
            except ValueError as e:
                raise InputRefused(f"preprocess refused the input: {str(e)[:500] or type(e).__name__}") from None
            raw = self.postprocess(self.module(x))
        if not isinstance(raw, dict):
            raise ModelError(f"postprocess returned {type(raw).__name__}, expected a dict of arrays")
        result: dict[str, np.ndarray] = {}
        for spec in self.pkg.outputs:
            if spec.name not in raw:
                raise ModelError(f"postprocess returned {sorted(raw)}, missing output {spec.name!r} of config.json")
            value = raw[spec.name]
            arr = _cast_output(spec, value)
            if len(spec.shape) == 1 and arr.ndim == 2 and arr.shape[1] == 1:
                arr = arr[:, 0]   # one value per row, as declared
            if arr.ndim != len(spec.shape) or arr.shape[0] != rows or any(
                    d != -1 and d != a for d, a in zip(spec.shape[1:], arr.shape[1:])):
                raise ModelError(f"output {spec.name!r} has shape {list(arr.shape)} for {rows} row(s); "
                                 f"config.json declares {list(spec.shape)}")
            result[spec.name] = arr
        return result

def load_model(pkg: Package, threads: int | None = None, verify: bool = True) -> LoadedModel:
    """Import the user's module, build the model, load the weights (strict keys), warm it up."""
    start = time.perf_counter()
    threads = threads or default_threads()
    torch.set_num_threads(threads)
    if verify and "model" in pkg.hashes:
        actual = sha256_file(pkg.weights_path)
        if actual != pkg.hashes["model"]:
            raise PackageError(pkg.weights_path, f"sha256 is {actual}, but manifest.json says {pkg.hashes['model']}")
    user = _import_user_module(pkg)
    build = getattr(user, "build_model", None)
    if not callable(build):
        raise PackageError(pkg.code_dir, f"module {pkg.module!r} defines no build_model(params)")
    try:
        module = build(dict(pkg.params))
    except (Exception, SystemExit, KeyboardInterrupt) as e:
        raise PackageError(pkg.code_dir, f"build_model(params) failed: {type(e).__name__}: {e}") from e
    if not isinstance(module, torch.nn.Module):
        raise PackageError(pkg.code_dir, f"build_model returned {type(module).__name__}, not a torch.nn.Module")
    try:
        state = load_file(str(pkg.weights_path), device="cpu")
    except Exception as e:
        raise PackageError(pkg.weights_path, f"not a readable safetensors file ({e})") from e
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise PackageError(pkg.weights_path, f"weights do not fit build_model(params): {e}") from e
    module.eval()

    dtype = model_dtype(module)
    preprocess: Preprocess = (getattr(user, "preprocess", None)
                              or (_default_preprocess if dtype == torch.float32 else _preprocess_to(dtype)))
    postprocess: Postprocess | None = getattr(user, "postprocess", None)
    if postprocess is None:
        if pkg.task == "classification":
            postprocess = _classification_postprocess
        else:
            postprocess = _single_output_postprocess(pkg.outputs[0], pkg.task)
    model = LoadedModel(pkg, module, preprocess, postprocess, 0.0, threads)
    spec = pkg.input
    shape = (1, *[d if d > 0 else 1 for d in spec.shape[1:]])
    warm = np.zeros(shape, dtype=spec.dtype)
    try:
        try:
            out = model.run(warm)
        except InputRefused:   # a handler may refuse a row of zeros (only padding): try a row of ones
            warm = np.ones(shape, dtype=spec.dtype)
            out = model.run(warm)
        if postprocess is _classification_postprocess:
            seen = [model.forward(warm)]
            if not warm.any():   # and a row of ones, where preprocess takes it
                try:
                    seen.append(model.forward(np.ones(shape, dtype=spec.dtype)))
                except Exception:   # preprocess refused it, or the model fails on it: the zeros' alone
                    pass
            _refuse_probabilities(*seen)
        elif getattr(user, "postprocess", None) is not None:
            declared = [o.name for o in pkg.outputs]
            with torch.inference_mode():   # as run() calls it: an in-place op on the outputs (sigmoid_) is
                # refused outside it ("Inplace update to inference tensor"), which failed the package's load
                extra = sorted(set(map(str, postprocess(model.forward(warm)))) - set(declared))
            if extra:   # dropped without a word: a client asking for one got a 400 naming the declared ones
                log.warning("%s: postprocess returns %s, which the model does not declare (its outputs, from "
                            "ctx.describe(task=%r): %s), so they are not served", pkg.name,
                            ", ".join(map(repr, extra[:10])), pkg.task, ", ".join(declared))
        probabilities = out.get("probabilities")
        if pkg.task == "classification" and probabilities is not None and probabilities.ndim == 2:
            model.classes = int(probabilities.shape[1])
    except InputRefused as e:   # refused both: say so (a handler's own bug would blame every client)
        log.warning("%s: preprocess refused the warm-up rows (zeros and ones), so the outputs were not checked "
                    "at load: %s", pkg.name, e.message)
    except Exception as e:   # the user's code or the outputs it declared: rebuilding would not help
        handlers = [n for n in ("preprocess", "postprocess") if getattr(user, n, None) is not None]
        rows = "ones" if warm.any() else "zeros"   # the second try, after preprocess refused the zeros
        raise PackageError(pkg.root, f"warm-up inference on {rows}{list(warm.shape)} failed: {type(e).__name__}: {e}",
                           fix=f"fix {' and '.join(handlers) or 'the model'} in {pkg.module}.py, or what training "
                               f"declared with ctx.describe (input_shape={list(spec.shape[1:])}, "
                               f"datatype={spec.datatype!r}; the outputs follow task=), then rebuild") from e
    model.load_seconds = time.perf_counter() - start
    return model
