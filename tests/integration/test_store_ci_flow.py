"""The CI flow with real Nix: machine A builds and pushes; machine B substitutes everything.

Then one input of the model changes: on B only the model and what depends on it are built; the
toolchain (a build-time input) and the weights come from the shared store.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlbuild.errors import StoreTargetError
from mlbuild.store import gc, pull, push, stats, tag, verify
from mlbuild.store.layout import Layout
from tests.conftest import run_cli
from tests.integration.test_store_machines import Machine, make_store, store_env, write_graph

pytestmark = pytest.mark.integration
TARGETS = ["package", "validation"]


def test_build_on_a_push_substitute_on_b(tmp_path: Path) -> None:
    graph = write_graph(tmp_path)
    cfg = make_store(tmp_path)
    a, b = Machine(tmp_path / "A"), Machine(tmp_path / "B")

    on_a = a.build(file=graph, attrs=TARGETS)
    assert on_a.built_names() == {"store-test-toolchain", "store-test-weights.safetensors", "store-test-model",
                                  "store-test-package", "store-test-validation"}
    pushed = push(cfg, on_a.paths, local_store=a.store, build_deps=True)
    assert len(pushed.pushed) == 5 and not pushed.present
    by_name = {n.store_path.rsplit("-", 1)[-1]: n for n in pushed.pushed}
    assert by_name["weights.safetensors"].compression == "none"
    assert by_name["package"].compression == "zstd"
    again = push(cfg, on_a.paths, local_store=a.store, build_deps=True)
    assert not again.pushed and len(again.present) == 5

    on_b = b.build(file=graph, attrs=TARGETS, substitute_from=cfg)
    assert on_b.built == [], on_b.log
    assert on_b.paths == on_a.paths and b.valid(on_b.paths)
    assert set(on_b.fetched) >= set(on_a.paths)

    changed = b.build(file=graph, attrs=TARGETS, args={"salt": "2"}, substitute_from=cfg)
    assert changed.built_names() == {"store-test-model", "store-test-package", "store-test-validation"}
    assert any(p.endswith("-store-test-toolchain") for p in changed.fetched)   # a build-time input
    assert verify(cfg).ok

    # The newest push roots what rebuilding needs as well as its targets: gc keeps the toolchain,
    # a build-time input no output refers to, so B's rebuild above keeps working after a gc.
    kept = gc(cfg, grace=0, keep_last=1)
    assert not kept.removed_paths and any(p.endswith("-store-test-toolchain") for p in kept.kept)
    assert len(kept.kept) == 5

    # A release tag keeps the first package; gc drops nothing it needs, B2 still substitutes it.
    tag(cfg, "release-1", [on_a.outputs["package"]])
    report = gc(cfg, grace=0, keep_last=0)
    assert on_a.outputs["package"] in report.kept
    assert on_a.outputs["validation"] in report.removed_paths
    b2 = Machine(tmp_path / "B2")
    only_pkg = b2.build(file=graph, attrs=["package"], substitute_from=cfg)
    assert only_pkg.built == [] and verify(cfg).ok
    # B2 fetched the package, never built it: pushing it with its build deps to a new store says
    # which build inputs it cannot push (it skipped them without a word)
    fresh = make_store(tmp_path / "fresh")
    again = push(fresh, [on_a.outputs["package"]], local_store=b2.store, build_deps=True)
    assert any(p.endswith("-store-test-toolchain") for p in again.absent_build_inputs), again.absent_build_inputs
    push(fresh, [on_a.outputs["package"]], local_store=a.store, build_deps=True)   # from the machine that built it
    assert not push(fresh, [on_a.outputs["package"]], local_store=b2.store, build_deps=True).absent_build_inputs


def test_cli_push_pull_stats(tmp_path: Path) -> None:
    graph = write_graph(tmp_path)
    cfg = make_store(tmp_path)
    a, c = Machine(tmp_path / "A"), Machine(tmp_path / "C")
    pkg = a.build(file=graph, attrs=["package"], args={"dataMiB": "1"}).outputs["package"]
    env = store_env(cfg)
    out = run_cli("store", "push", "--from", str(tmp_path / "A"), pkg, env=env).stdout
    assert out.startswith("pushed 3 paths")
    out = run_cli("store", "pull", "--to", str(tmp_path / "C"), pkg, env=env).stdout
    assert out.startswith("fetched 3 paths") and c.valid([pkg])
    assert run_cli("store", "pull", "--to", str(tmp_path / "C"), pkg, env=env).stdout.startswith("fetched 0")
    out = run_cli("store", "stats", env=env).stdout
    assert "package" in out and "total 3 paths" in out
    assert stats(cfg).items[0].path == pkg
    assert run_cli("store", "verify", env=env).stdout.strip().endswith("0 problems")
    assert pull(cfg, [pkg], local_store=c.store).fetched == []
    assert not list(Layout(cfg.root).temp_files())
    # C fetched the package without its derivation: a push of its build deps says it cannot know them
    again = push(make_store(tmp_path / "other"), [pkg], local_store=c.store, build_deps=True)
    assert again.underived_targets == [pkg] and not again.absent_build_inputs
    assert push(make_store(tmp_path / "third"), [pkg], local_store=a.store, build_deps=True).underived_targets == []


def test_fast_restore_registers_what_nix_would(tmp_path: Path) -> None:
    (tmp_path / "tree.nix").write_text(r"""
      { tree = derivation { name = "store-test-model-dir"; system = "x86_64-linux"; builder = "/bin/sh";
          PATH = "/usr/bin:/bin";
          args = [ "-c" ''
            mkdir -p $out/sub/empty; head -c 3000000 /dev/urandom > $out/w.bin; : > $out/sub/zero
            printf '#!/bin/sh\necho hi\n' > $out/run; chmod +x $out/run; ln -s w.bin $out/link
            ln -s /nix/store/nothing $out/sub/abs
          '' ]; }; }
    """)
    cfg = make_store(tmp_path)
    a = Machine(tmp_path / "A")
    path = a.build(file=tmp_path / "tree.nix", attrs=["tree"]).outputs["tree"]
    info = push(cfg, [path], local_store=a.store).pushed[0]
    assert info.compression == "none" and info.b3 and info.b3_sigs   # Nix (the slow pull) ignores MlbuildB3
    fast, slow = tmp_path / "F", tmp_path / "S"
    assert pull(cfg, [path], local_store=str(fast)).fetched == [path]
    pull(cfg, [path], local_store=str(slow), fast=False)
    from mlbuild import _nix
    f_info = _nix.path_info_in([path], store=str(fast))[path]
    s_info = _nix.path_info_in([path], store=str(slow))[path]
    assert f_info["narHash"] == s_info["narHash"] and f_info["narSize"] == s_info["narSize"]
    check = _nix.run_nix(["--store", str(fast), "--verify-path", path], tool="nix-store", check=False)
    assert check.returncode == 0, check.stderr
    # signed as Nix's own substitution records it, so plain `nix copy` takes it on where the key is
    # trusted (registered without signatures it "lacks a valid signature")
    assert f_info.get("signatures") == s_info.get("signatures") and f_info.get("signatures")
    onward = _nix.run_nix([*_nix.common_options(), "copy", "--from", str(fast), "--to", str(tmp_path / "D"),
                           "--option", "require-sigs", "true", "--option", "trusted-public-keys",
                           " ".join(str(k) for k in cfg.trusted_keys()), path], check=False)
    assert onward.returncode == 0, onward.stderr
    for real in (fast / path.lstrip("/"), slow / path.lstrip("/")):
        assert (real / "run").stat().st_mode & 0o777 == 0o555 and (real / "w.bin").stat().st_mode & 0o777 == 0o444
        assert (real / "sub").stat().st_mode & 0o777 == 0o555 and (real / "w.bin").stat().st_mtime == 1
    assert not list((fast / "nix" / "store").glob("*.lock"))


def test_push_of_a_path_not_built_names_it(tmp_path: Path) -> None:
    graph = write_graph(tmp_path)
    cfg = make_store(tmp_path)
    a = Machine(tmp_path / "A")
    tool = a.build(file=graph, attrs=["tool"]).outputs["tool"]
    missing = "/nix/store/" + "0" * 32 + "-store-test-never-built"
    with pytest.raises(StoreTargetError, match=f"{missing} is not valid in the local store {a.store}"):
        push(cfg, [tool, missing], local_store=a.store)
    assert push(cfg, [tool], local_store=a.store).pushed[0].store_path == tool


def test_gc_lock_keeps_the_datasets_it_pins(small_project: Path, tmp_path: Path) -> None:
    """`mlbuild data push` then `store gc --lock`: the lock's local dataset (its store path computed
    from `datasets.NAME.sha256`, not written in the lock) is kept although no push record is."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    for name in ("mlbuild.toml", "mlbuild.lock"):
        (project / name).write_text((small_project / name).read_text())
    (project / "data" / "rows.csv").write_text("a,b\n" + "".join(f"{i},{i * i}\n" for i in range(100)))
    run_cli("data", "add", "rows-raw", "data", cwd=project)
    cfg = make_store(tmp_path)
    env = store_env(cfg)
    run_cli("data", "push", "rows-raw", cwd=project, env=env)
    (dataset,) = [p for p in stats(cfg).items if p.path.endswith("-rows-raw")]
    lock = str(project / "mlbuild.lock")
    dry = run_cli("store", "gc", "--grace", "0", "--keep-last", "0", "--lock", lock, "--dry-run", env=env).stdout
    assert "would remove 0 entries" in dry and "would remove\t/nix/store/" not in dry, dry
    run_cli("store", "gc", "--grace", "0", "--keep-last", "0", "--lock", lock, env=env)
    assert Layout(cfg.root).narinfo(dataset.path).exists() and verify(cfg).ok
    run_cli("store", "gc", "--grace", "0", "--keep-last", "0", env=env)   # without the lock it goes
    assert not Layout(cfg.root).narinfo(dataset.path).exists()
