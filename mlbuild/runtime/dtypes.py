"""The floating-point dtype a model computes in, and its input cast to it: what the server's
default preprocess does (serve/model.py) and what training's check of the rebuilt model does
(train.py), from one place, so that the check runs the rows the server would.

A module of its own: the training's and the package's derivations both hold it, and neither holds
the other's code (a server change would otherwise retrain every model)."""

from __future__ import annotations

from typing import Any

__all__ = ["model_dtype", "as_input"]


def model_dtype(module: Any) -> Any:
    """The floating-point dtype of most of the model's parameters (of its buffers where it has no
    floating parameters): float32 for most models, float64, float16 or bfloat16 for one trained in
    those (the weights keep their dtype), where a float32 buffer (a rotary table) or LayerNorm kept
    in float32 is the exception. Not the first parameter's: a float16 table that a float32 model
    casts up in its forward gave float16 rows to its float32 layers, and every request failed
    ("mat1 and mat2 must have the same dtype")."""
    import torch

    counts: dict[torch.dtype, int] = {}
    for group in (module.parameters(), module.buffers()):
        for t in group:
            if t.is_floating_point():
                counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
        if counts:
            return max(counts, key=lambda d: counts[d])   # the first of equals
    return torch.float32


def as_input(x: Any, dtype: Any) -> Any:
    """Rows (a numpy array) as the default preprocess hands them to a model computing in ``dtype``:
    floating-point and BOOL inputs in that dtype, integers (token ids, categories: what an Embedding
    takes) as they are."""
    import numpy as np
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.to(dtype) if t.is_floating_point() or t.dtype == torch.bool else t
