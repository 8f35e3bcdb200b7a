"""Making CPU training bit-reproducible, on this machine and on any other x86-64 one.

Levers, all set before torch does any work:

- seeds: ``random``, ``numpy``, ``torch`` (and ``PYTHONHASHSEED`` by Nix);
- ``torch.use_deterministic_algorithms(True)``;
- a fixed thread count (``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` and ``torch.set_num_threads``):
  parallel reductions split work by thread count, not by core count;
- a fixed kernel selection: ``ATEN_CPU_CAPABILITY=default`` (no AVX2/AVX-512 variants chosen per
  CPU), ``MKL_CBWR=COMPATIBLE`` (MKL's conditional numerical reproducibility: the same code path
  on every x86-64 CPU), ``MKL_ENABLE_INSTRUCTIONS=SSE4_2``, oneDNN capped to SSE4.1 and
  disabled in torch, NNPACK disabled, numpy's OpenBLAS on its SSE4.2 kernels
  (``OPENBLAS_CORETYPE=Nehalem``: it picks them by the CPU model otherwise).

GPU training is allowed to be nondeterministic; :func:`settings` says which it was.
"""

from __future__ import annotations

import os
import random
from typing import Any

__all__ = ["CPU_ENV", "apply", "settings"]

CPU_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "DNNL_MAX_CPU_ISA": "SSE41",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
    "KMP_DETERMINISTIC_REDUCTION": "1",
    "OPENBLAS_CORETYPE": "Nehalem",
}


def apply(seed: int, device: str, threads: int) -> None:
    """Call before importing torch (the environment variables are read at load time)."""
    if device == "cpu":
        for k, v in CPU_ENV.items():
            os.environ[k] = v
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[k] = str(threads)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    import numpy
    import torch

    numpy.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    try:
        torch.backends.nnpack.set_flags(False)  # type: ignore[no-untyped-call]
    except (AttributeError, RuntimeError):
        pass
    if device == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def settings(seed: int, device: str, threads: int) -> dict[str, Any]:
    """What provenance.json records about determinism."""
    import torch

    return {
        "deterministic": device == "cpu",
        "note": ("bit-identical on every x86-64 CPU" if device == "cpu" else
                 "GPU training: kernels and atomics may be nondeterministic; the weights can differ run to run"),
        "seed": seed,
        "threads": threads,
        "env": {k: os.environ.get(k) for k in sorted(CPU_ENV)} if device == "cpu" else {},
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
