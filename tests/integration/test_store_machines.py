"""Simulated machines for the shared-store tests: separate Nix stores, one shared binary store.

A :class:`Machine` is a Nix chroot store (``nix build --store ROOT``: its own database and
``ROOT/nix/store``, the same ``/nix/store`` paths as any other machine), or the host's own store
when ``root`` is None. ``Machine.build`` returns what Nix built and what it fetched, parsed from
Nix's own log lines, so a test can assert "zero derivations built". Reuse for real projects::

    a, b = Machine(tmp / "A"), Machine(tmp / "B")
    built = a.build(file=REPO / "nix/entry.nix", attrs=["packages.digits"], args={"src": str(proj)})
    push(cfg, built.paths, local_store=a.store, build_deps=True)
    again = b.build(file=..., attrs=[...], args=..., substitute_from=cfg)
    assert again.built == []

Builds in a chroot store run in Nix's sandbox (the store is relocated); the host's /usr, /bin,
/lib and /lib64 are bound as whole folders (never a file inside a bound folder: see DESIGN.md).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mlbuild import _nix
from mlbuild.store import StoreConfig, init_store

SANDBOX_PATHS = " ".join(p for p in ("/usr", "/bin", "/lib", "/lib64") if os.path.exists(p))
_BUILDING = re.compile(r"building '(/nix/store/[^']+\.drv)'")
_COPYING = re.compile(r"copying path '(/nix/store/[^']+)' from '([^']+)'")


@dataclass
class Built:
    """One ``nix build``: outputs per installable, the derivations built, the paths fetched."""

    outputs: dict[str, str]
    built: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    log: str = ""

    @property
    def paths(self) -> list[str]:
        return list(self.outputs.values())

    def built_names(self) -> set[str]:
        return {d.rsplit("/", 1)[-1][33:-4] for d in self.built}


@dataclass
class Machine:
    """A Nix store standing for one machine; ``root`` None is the host's own store."""

    root: Path | None = None

    @property
    def store(self) -> str | None:
        return str(self.root) if self.root else None

    def nix_options(self) -> list[str]:
        opts = [*_nix.common_options(), *_nix.store_options(self.store)]
        if self.root:
            opts += ["--option", "sandbox-paths", SANDBOX_PATHS]
        return opts

    def build(self, *, file: Path, attrs: list[str], args: dict[str, str] | None = None,
              substitute_from: StoreConfig | None = None, check: bool = True) -> Built:
        cmd = ["nix", *self.nix_options(), *(substitute_from.nix_options() if substitute_from else []),
               "build", "--json", "--no-link", "--file", str(file)]
        for k, v in (args or {}).items():
            cmd += ["--argstr", k, v]
        proc = subprocess.run([*cmd, *attrs], capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise AssertionError(f"nix build {attrs} on {self.root or 'host'} failed:\n{proc.stderr[-3000:]}")
        outputs: dict[str, str] = {}
        if proc.returncode == 0:   # `build --json` does not keep the order of the installables
            by_drv = {e["drvPath"]: e["outputs"]["out"] for e in _nix.parse_build_json(proc.stdout)}
            inst = ["nix-instantiate", *_nix.store_options(self.store), str(file)]
            for k, v in (args or {}).items():
                inst += ["--argstr", k, v]
            drvs = subprocess.run([*inst, *(x for a in attrs for x in ("-A", a))], capture_output=True,
                                  text=True, check=True).stdout.split()
            outputs = {attr: by_drv[drv] for attr, drv in zip(attrs, drvs)}
        return Built(outputs, sorted(set(_BUILDING.findall(proc.stderr))),
                     sorted({p for p, _ in _COPYING.findall(proc.stderr)}), proc.stderr)

    def valid(self, paths: list[str]) -> bool:
        return not _nix.invalid_paths_in(paths, store=self.store)


GRAPH = r"""
# A small build graph like a model project's, without nixpkgs: a build-time tool, an
# incompressible weights-like blob, a model (depends on both; its output references the data),
# a package referencing the model, and a validation referencing the package.
{ salt ? "1", dataMiB ? "10" }:
let
  mk = name: script: derivation {
    inherit name; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" script ]; PATH = "/usr/bin:/bin";
  };
  tool = mk "store-test-toolchain" "echo 'tool v1' > $out";
  data = mk "store-test-weights.safetensors" "head -c $((${dataMiB} * 1048576)) /dev/urandom > $out";
  model = mk "store-test-model" ''
    mkdir $out; read t < ${tool}; echo "$t ${salt}" > $out/trained-with; echo ${data} > $out/data-ref
  '';
  package = mk "store-test-package" "mkdir $out; echo ${model} > $out/model; echo code > $out/serve.py";
  validation = mk "store-test-validation" "echo ${package} passed > $out";
in { inherit tool data model package validation; }
"""


def write_graph(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "graph.nix"
    path.write_text(GRAPH)
    return path


def make_store(folder: Path, name: str = "store-test-1") -> StoreConfig:
    """An initialised shared store with its own key pair (trusted through the signing key)."""
    cfg = StoreConfig(root=folder / "cache", secret_key_file=folder / "keys" / "store.sec")
    init_store(cfg, generate_key=True, key_name=name)
    return cfg


def store_env(cfg: StoreConfig) -> dict[str, str]:
    """Environment for `mlbuild store ...` subprocesses on this store."""
    env: dict[str, Any] = {"MLBUILD_STORE": str(cfg.root)}
    if cfg.secret_key_file:
        env["MLBUILD_STORE_SECRET_KEY"] = str(cfg.secret_key_file)
    env["MLBUILD_STORE_PUBLIC_KEYS"] = " ".join(str(k) for k in cfg.trusted_keys())
    return env


@pytest.mark.integration
def test_machines_are_separate_stores(tmp_path: Path) -> None:
    graph = write_graph(tmp_path)
    a, b = Machine(tmp_path / "A"), Machine(tmp_path / "B")
    built = a.build(file=graph, attrs=["tool"])
    assert built.built_names() == {"store-test-toolchain"}
    assert a.valid(built.paths) and not b.valid(built.paths)
