"""bench/noop_overhead: `mlbuild build MODEL` with nothing to build vs the bare `nix build` it wraps.

    .venv/bin/python bench/noop_overhead.py [--project examples/digits] [--model digits] [--runs 9]

Builds MODEL once (training it if no store holds it), then times, in interleaved rounds, the whole
`mlbuild build MODEL` command (interpreter start-up, the worktree and data checks, the build, the
GC roots and the record) and the one `nix build --file nix/entry.nix ... MODEL` call inside it,
which finds the same store path present. Prints the medians and their ratio: what mlbuild's own
work costs per command. `mlbuild --help` against `mlbuild --version` is printed the same way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlbuild import _nix  # noqa: E402


def timed(cmd: list[str], what: str, cwd: Path) -> float:
    """Seconds ``cmd`` took; a failure ends the run with the tail of its output, never a ratio."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bench: {what} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", default=str(REPO / "examples/digits"))
    ap.add_argument("--model", default="digits")
    ap.add_argument("--runs", type=int, default=9)
    a = ap.parse_args()
    project = Path(a.project).resolve()
    cli = [sys.executable, "-m", "mlbuild.cli", "-C", str(project)]
    timed([*cli, "build", a.model], f"the first `mlbuild build {a.model}` in {project}", project)
    nix = ["nix", *_nix.common_options(), "build", "--json", "--no-link", "--file", str(REPO / "nix/entry.nix"),
           "--argstr", "src", str(project), "--argstr", "overrides", "{}", a.model]
    pairs = {"build": ([*cli, "build", a.model], nix), "help": ([*cli, "--help"], [*cli, "--version"])}
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in pairs}
    for _ in range(a.runs):
        for name, (ours, reference) in pairs.items():
            times[name][0].append(timed(ours, " ".join(ours[3:]), project))
            times[name][1].append(timed(reference, " ".join(reference[:2]), project))
    for name, (ours, reference) in times.items():
        mine, ref = statistics.median(ours), statistics.median(reference)
        what = (f"mlbuild build {a.model} (nothing to build) / its nix build" if name == "build"
                else "mlbuild --help / mlbuild --version")
        print(f"{what}: {mine:.3f} s / {ref:.3f} s = {mine / ref:.2f} (medians of {a.runs} interleaved runs)")
    print(json.dumps({name: round(statistics.median(o) / statistics.median(r), 3) for name, (o, r) in times.items()}))


if __name__ == "__main__":
    main()
