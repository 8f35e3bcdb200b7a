"""The weights file is byte-identical across processes (issue 4's bimodal --check failure).

safetensors writes ``__metadata__`` from a per-process-seeded Rust HashMap; with two keys, about
half of all processes wrote them in the other order. Each run here is a fresh process, so with the
old two-key metadata this test fails unless eight coin tosses all agree (1 in 128).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
