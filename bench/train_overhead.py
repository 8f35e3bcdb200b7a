"""bench/train_overhead: training inside a Nix build vs the same training as a plain process.

    .venv/bin/python bench/train_overhead.py [--project examples/digits] [--model digits] [--epochs 150] [--runs 3]

Each round builds a fresh variant of the model (a new seed, so nothing is cached) with
`mlbuild build`'s Nix call, and runs the identical builder (same toolchain, spec, environment)
as a plain process. Prints the median times and their ratio. Goal (issue 4): at most 1.05.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlbuild import _nix  # noqa: E402


def run(cmd: list[str], what: str, env: dict[str, str] | None = None, cwd: str | None = None) -> str:
    """stdout of ``cmd``; a failure ends the run with the tail of its output, never a ratio."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {what} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout


def nix_build(project: Path, model: str, overrides: dict) -> tuple[float, str]:
    args = [*_nix.common_options(), "build", "--no-link", "--json", "--file", str(REPO / "nix/entry.nix"),
            "--argstr", "src", str(project), "--argstr", "overrides", json.dumps(overrides), f"{model}.model"]
    t0 = time.perf_counter()
    out = run(["nix", *args], f"nix build of {model}.model in {project}")
    return time.perf_counter() - t0, json.loads(out)[0]["drvPath"]


def plain_run(drv: str) -> float:
    info = json.loads(run(["nix", *_nix.common_options(), "show-derivation", drv], f"nix show-derivation {drv}"))
    d = next(iter(info.values()))
    env = {k: v for k, v in d["env"].items() if k not in ("spec", "passAsFile")}
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(d["env"]["spec"])
        env.update(specPath=str(spec), out=str(Path(tmp) / "out"), HOME=tmp, TMPDIR=tmp)
        t0 = time.perf_counter()
        run([d["builder"], *d["args"]], f"the plain run of {drv}'s builder", env=env, cwd=tmp)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", default=str(REPO / "examples/digits"))
    ap.add_argument("--model", default="digits")
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    for flag, value in (("--epochs", args.epochs), ("--runs", args.runs)):
        if value < 1:
            ap.error(f"{flag} {value}: give at least 1")
    project = Path(args.project).resolve()
    base = int(time.time()) % 100000
    nix_times, plain_times = [], []
    for i in range(args.runs):
        overrides = {args.model: {"seed": base + i, "params": {"epochs": args.epochs}}}
        t_nix, drv = nix_build(project, args.model, overrides)
        t_plain = plain_run(drv)
        nix_times.append(t_nix)
        plain_times.append(t_plain)
        print(f"round {i + 1}: nix build {t_nix:6.2f} s   plain process {t_plain:6.2f} s")
    n, p = statistics.median(nix_times), statistics.median(plain_times)
    print(f"median: nix build {n:.2f} s, plain process {p:.2f} s, ratio {n / p:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
