"""The issue's CI flow on the real digits model: build and push on A, substitute everything on B.

Machine A is this machine's own Nix store, driven as CI drives it: ``mlbuild build --push digits
digits.validation`` in the digits project (the package and its validation gate; the push carries
what rebuilding them needs, ``build_deps``). Machine B is a separate, empty chroot Nix store whose
only substituter is the shared store (its key the only trusted one, ``require-sigs``): it builds the
same targets and builds no derivation at all. Then one parameter changes (an override of
``epochs``, as ``mlbuild exp run --set`` passes it): on B only the training and what depends on it
(model, package, validation report, gate) are built, in Nix's sandbox with no host folder bound in,
while the toolchain and the datasets come from the shared store. About 30 s when A's store already
has the digits builds (the push then uploads the ~1.5 GB build closure: wheels, toolchain, data).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mlbuild import _nix
from mlbuild.store import StoreConfig, gc, verify
from tests.conftest import REPO, run_cli
from tests.integration.test_store_machines import Machine, make_store, store_env

pytestmark = pytest.mark.integration
TARGETS = ["digits", "digits.validation"]
DEPENDENTS = {"digits-model", "digits-package", "digits-validation-report", "digits-validation"}
CHANGED = {"digits": {"params": {"epochs": 15}}}   # half of mlbuild.toml's 30: faster, still passes the gate


class SandboxedMachine(Machine):
    """A chroot store whose builds run in Nix's sandbox with nothing of the host bound in (no
    /usr, /bin, /lib; no fallback to an unsandboxed build): the toolchain is hermetic, so the
    training, package and validation need only their store inputs. It trusts no key but the
    shared store's (``substitute_from`` adds it after this empties the list)."""

    def nix_options(self) -> list[str]:
        return [*_nix.common_options(), *_nix.store_options(self.store), "--option", "sandbox", "true",
                "--option", "sandbox-fallback", "false", "--option", "sandbox-paths", "",
                "--option", "trusted-public-keys", ""]


def reader(cfg: StoreConfig) -> StoreConfig:
    """The store as machine B sees it: no signing key, only the public key trusted."""
    return StoreConfig(root=cfg.root, public_keys=tuple(str(k) for k in cfg.trusted_keys()))


def snapshot_lib(dest: Path) -> Path:
    """A copy of mlbuild's Nix library and runtime (what builds read), so that edits to this
    checkout while the test runs cannot change the derivations between A and B. The runtime
    sources are added to the store by content, so the copy gives the same store paths."""
    ignore = shutil.ignore_patterns("__pycache__", "tests")
    shutil.copytree(REPO / "nix", dest / "nix", ignore=ignore)
    shutil.copytree(REPO / "mlbuild" / "runtime", dest / "mlbuild" / "runtime", ignore=ignore)
    shutil.copy2(REPO / "mlbuild" / "__init__.py", dest / "mlbuild" / "__init__.py")
    return dest / "nix"


def names(paths: list[str]) -> set[str]:
    return {p.rsplit("/", 1)[-1][33:] for p in paths}


def test_digits_build_on_a_substitute_on_b(digits_repo: Path, tmp_path: Path) -> None:
    cfg = make_store(tmp_path)
    lib = snapshot_lib(tmp_path / "lib")
    out = run_cli("build", "--push", *TARGETS, cwd=digits_repo, env={**store_env(cfg), "MLBUILD_NIX": str(lib)}).stdout
    on_a = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
    assert set(on_a) == set(TARGETS), out
    assert "pushed" in out.splitlines()[-1], out

    # No output refers to the split now (the package names its data by hash), but the push
    # recorded it with the other build-time inputs: gc keeps it for retraining elsewhere.
    kept = gc(cfg, grace=0, keep_last=1)
    assert not kept.removed_paths and any(p.endswith("-digits-split") for p in kept.kept)

    store = reader(cfg)
    b = SandboxedMachine(tmp_path / "B")
    entry = lib / "entry.nix"
    args = {"src": str(digits_repo), "overrides": "{}"}
    on_b = b.build(file=entry, attrs=TARGETS, args=args, substitute_from=store)
    assert on_b.built == [], on_b.log[-3000:]
    assert on_b.outputs == on_a
    fetched = names(on_b.fetched)
    assert {"digits-package", "digits-validation", "digits-model"} <= fetched
    assert any(n.endswith("-toolchain") for n in fetched), fetched
    # The data is not in the model's closure: B got the model without fetching the training data.
    assert not {n for n in fetched if n.startswith("digits-split") or n.startswith("digits-raw")}, fetched

    changed = b.build(file=entry, attrs=TARGETS, args={**args, "overrides": json.dumps(CHANGED)},
                      substitute_from=store)
    assert changed.built_names() == DEPENDENTS, changed.log[-3000:]
    assert not set(changed.outputs.values()) & set(on_a.values())
    # The toolchain and the split were not built on B: substituted, by the first build or (the
    # data, which retraining reads) by this one.
    assert "digits-split" in names(changed.fetched), changed.log[-3000:]
    toolchain = [p for p in _nix.path_info_in([on_a["digits"]], recursive=True) if p.endswith("-toolchain")]
    split = [p for p in changed.fetched if p.endswith("-digits-split")]
    assert len(toolchain) == len(split) == 1 and b.valid(toolchain + split)
    assert verify(cfg).ok
