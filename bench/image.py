"""bench/image: how big the model image is, and how much of it a new model version changes.

    .venv/bin/python bench/image.py [--project examples/digits] [--model digits] [--hidden 64,512]

For each hidden size, builds the model's image twice in one Nix evaluation: as configured
(with that hidden size) and retrained with another learning rate. Prints

- image size / closure size: the archive's bytes over the NAR bytes of the closure it holds
  (package + validation). Goal (issue 8): at most 1.05.
- changed bytes / weights: what a registry or podman must fetch for the new version (layers whose
  digest is new, the config and the manifest) over the size of the new weights file. Goal: at
  most 1.1. Per version the model layer holds the weights once plus the model's metadata
  (metrics, provenance, feature statistics, the validation report: ~46 KB for digits), so the
  ratio approaches 1 as weights grow; the configured digits MLP (36 KB of weights) is dominated by
  that metadata, which is why a larger hidden size is measured too.
- the same through a registry: `mlbuild image push` (skopeo) and `podman push` gzip each layer, so
  a pull from a registry fetches the new layers gzipped (level 6, containers/image's default),
  beside the config and manifest as they are.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlbuild import _nix  # noqa: E402
from mlbuild.image import ArchiveInfo, read_archive  # noqa: E402


def build_images(project: Path, model: str, variants: list[dict[str, object]]) -> tuple[list[Path], float]:
    """The image of each variant (overrides of the model), from one evaluation."""
    entry = REPO / "nix" / "entry.nix"
    calls = " ".join(
        f"((import {entry} {{ src = {json.dumps(str(project))}; overrides = {json.dumps(json.dumps({model: v}))}; }})"
        f".{model}.image)" for v in variants)
    args = [*_nix.common_options(), "build", "--impure", "--no-link", "--json", "--expr", f"[ {calls} ]"]
    t0 = time.perf_counter()
    proc = subprocess.run(["nix", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"nix build failed:\n{proc.stderr[-3000:]}")
    return [Path(b["outputs"]["out"]) for b in json.loads(proc.stdout)], time.perf_counter() - t0


def closure_nar_size(info: ArchiveInfo) -> int:
    roots = [info.labels["mlbuild.package"], info.labels["mlbuild.validation"]]
    return sum(int(v["narSize"]) for v in _nix.path_info(roots, recursive=True).values())


def changed_bytes(old: ArchiveInfo, new: ArchiveInfo) -> int:
    """Bytes a registry pull of ``new`` fetches when ``old`` is already there."""
    have = {d for d, _ in old.layers}
    return sum(size for d, size in new.layers if d not in have) + new.config_size + new.manifest_size


def changed_bytes_gzipped(old: ArchiveInfo, new: ArchiveInfo) -> int:
    """The same, with the new layers gzipped as a push to a registry stores them."""
    have = {d for d, _ in old.layers}
    total = new.config_size + new.manifest_size
    with tarfile.open(new.path) as tar:
        for digest, _ in new.layers:
            if digest not in have:
                blob = tar.extractfile("blobs/sha256/" + digest.split(":", 1)[1])
                assert blob is not None
                total += len(gzip.compress(blob.read(), compresslevel=6, mtime=0))
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", default=str(REPO / "examples/digits"))
    ap.add_argument("--model", default="digits")
    ap.add_argument("--hidden", default="64,512", help="hidden sizes to measure (comma-separated)")
    ap.add_argument("--lr", type=float, default=0.004, help="the retrained version's learning rate")
    args = ap.parse_args()
    try:
        sizes = [int(h) for h in args.hidden.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        ap.error(f"--hidden {args.hidden}: give hidden sizes of at least 1, comma-separated (such as 64,512)")
    if not (math.isfinite(args.lr) and args.lr > 0):
        ap.error(f"--lr {args.lr:g}: give a learning rate above 0")
    project = Path(args.project).resolve()
    rows = []
    for hidden in sizes:
        images, seconds = build_images(project, args.model, [{"params": {"hidden": hidden}},
                                                              {"params": {"hidden": hidden, "lr": args.lr}}])
        if len(set(images)) != 2:   # nix build lists one path once
            raise SystemExit(f"bench: with --lr {args.lr:g} the second version is the same build as the first (the "
                             f"model's own learning rate?): there is no new version to measure; give another --lr")
        a, b = images
        old, new = read_archive(a), read_archive(b)
        weights = (Path(new.labels["mlbuild.package"]) / "model" / "model.safetensors").stat().st_size
        image, closure = a.stat().st_size, closure_nar_size(old)
        changed = changed_bytes(old, new)
        gzipped = changed_bytes_gzipped(old, new)
        n_changed = sum(1 for x, y in zip(old.layers, new.layers) if x != y)
        rows.append((hidden, image, closure, weights, changed, gzipped))
        print(f"hidden={hidden}: built 2 images in {seconds:.1f} s; {len(new.layers)} layers, {n_changed} changed")
        for (digest, size), h in zip(new.layers, new.config["history"]):
            mark = "*" if (digest, size) not in old.layers else " "
            print(f"   {mark} {size:>14,d}  {h['comment']}")
        print(f"  image {image:,d} B / closure {closure:,d} B = {image / closure:.4f} (goal <= 1.05)")
        print(f"  changed {changed:,d} B / weights {weights:,d} B = {changed / weights:.3f} (goal <= 1.1)")
        print(f"  through a registry (gzipped layers): {gzipped:,d} B / weights = {gzipped / weights:.3f}")
    print("\nhidden  image/closure  changed/weights  registry (gzip)/weights  weights")
    for hidden, image, closure, weights, changed, gzipped in rows:
        print(f"{hidden:>6}  {image / closure:13.4f}  {changed / weights:15.3f}  {gzipped / weights:23.3f}"
              f"  {weights:>9,d} B")


if __name__ == "__main__":
    main()
