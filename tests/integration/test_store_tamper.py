"""Tampering is refused by Nix itself (require-sigs, NAR hashes) and reported by verify."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlbuild.errors import NixError, StoreCorruptError
from mlbuild.store import StoreConfig, pull, push, verify
from mlbuild.store.keys import generate_key_pair
from mlbuild.store.layout import Layout
from mlbuild.store.narinfo import NarInfo
from tests.conftest import run_cli
from tests.integration.test_store_machines import Machine, make_store, store_env, write_graph

pytestmark = pytest.mark.integration


def _entry(cfg: StoreConfig, path: str) -> tuple[Path, NarInfo]:
    f = Layout(cfg.root).narinfo(path)
    return f, NarInfo.parse(f.read_text())


def test_tampered_nar_and_unsigned_narinfo_are_refused(tmp_path: Path) -> None:
    graph = write_graph(tmp_path)
    cfg = make_store(tmp_path)
    a = Machine(tmp_path / "A")
    built = a.build(file=graph, attrs=["data", "tool", "package"], args={"dataMiB": "2"})
    push(cfg, built.paths, local_store=a.store)
    data, tool = built.outputs["data"], built.outputs["tool"]

    # 1. One byte of the weights' NAR changed (same size: only the hash can tell).
    _, info = _entry(cfg, data)
    assert info.compression == "none"
    with open(cfg.root / info.url, "r+b") as f:
        f.seek(1 << 20)
        byte = f.read(1)
        f.seek(1 << 20)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(NixError, match="hash mismatch"):           # refused by Nix itself
        pull(cfg, [data], local_store=str(tmp_path / "C1"), fast=False)
    with pytest.raises(StoreCorruptError, match="hash mismatch.*blake3"):   # the fast restore's BLAKE3 check
        pull(cfg, [data], local_store=str(tmp_path / "C1"))
    assert not Machine(tmp_path / "C1").valid([data])
    assert not (tmp_path / "C1" / data.lstrip("/")).exists()

    # 2. The toolchain's narinfo without its signature, and 3. re-signed by an untrusted key.
    f, tinfo = _entry(cfg, tool)
    f.write_text(tinfo.with_sigs(()).render())
    with pytest.raises(NixError, match="signature") as e:
        pull(cfg, [tool], local_store=str(tmp_path / "C2"))
    trusted = str(cfg.trusted_keys()[0])
    assert f"{tool} is not signed (trusted keys here: {trusted}); remove the bad entries with " \
           f"`mlbuild store --store {cfg.root} verify --repair`" in str(e.value)
    f_data, dinfo = _entry(cfg, data)
    f_data.write_text(dinfo.with_sigs(()).render())                  # the fast restore checks too
    with pytest.raises(StoreCorruptError, match="signature"):
        pull(cfg, [data], local_store=str(tmp_path / "C2"))
    f_data.write_text(dinfo.render())
    rogue = generate_key_pair(cfg.trusted_keys()[0].name, tmp_path / "rogue.sec", tmp_path / "rogue.pub")
    f.write_text(tinfo.with_sigs((rogue.sign(tinfo.fingerprint()),)).render())
    with pytest.raises(NixError, match="signature") as e:
        pull(cfg, [tool], local_store=str(tmp_path / "C2"))
    assert f"{tool} is signed by {rogue.name}, a key trusted here, but the signature does not verify: the " \
           f"narinfo was changed after signing (or another key pair has that name); remove the bad entries with " \
           f"`mlbuild store --store {cfg.root} verify --repair`" in str(e.value)
    # A build on a machine that trusts the store builds the tool instead of using the bad entry.
    assert Machine(tmp_path / "C3").build(file=graph, attrs=["tool"], substitute_from=cfg).built_names() == \
        {"store-test-toolchain"}

    report = verify(cfg)
    kinds = {p.store_path: p.kind for p in report.problems}
    assert kinds[data] == "corrupt" and kinds[tool] == "unsigned"
    assert kinds[built.outputs["package"]] == "incomplete"     # its closure includes the weights
    env = store_env(cfg)
    proc = run_cli("store", "verify", env=env, check=False)
    assert proc.returncode == 1 and "verify --repair" in proc.stderr and "corrupt" in proc.stdout
    repaired = run_cli("store", "verify", "--repair", env=env)
    assert (f"repaired: removed the {len(report.problems)} bad entries; push what still matters again"
            in repaired.stderr)
    assert verify(cfg).ok
    again = push(cfg, built.paths, local_store=a.store)
    assert {n.store_path for n in again.pushed} >= {data, tool}
    assert verify(cfg).ok
    pull(cfg, [built.outputs["package"], tool], local_store=str(tmp_path / "C4"))
    assert Machine(tmp_path / "C4").valid(built.paths)


def test_forged_blake3_hash_is_not_trusted(tmp_path: Path) -> None:
    """The fast restore trusts MlbuildB3 only under a trusted MlbuildB3Sig: a NAR swapped together
    with its BLAKE3 hash still meets NarHash (sha256), and verify reports the unsigned hash."""
    from blake3 import blake3

    graph = write_graph(tmp_path)
    cfg = make_store(tmp_path)
    a = Machine(tmp_path / "A")
    data = a.build(file=graph, attrs=["data"], args={"dataMiB": "2"}).outputs["data"]
    push(cfg, [data], local_store=a.store)
    f, info = _entry(cfg, data)
    assert info.b3 and info.b3_sigs
    nar = cfg.root / info.url
    blob = bytearray(nar.read_bytes())
    blob[1 << 20] ^= 1
    nar.write_bytes(bytes(blob))
    f.write_text(info.render().replace(info.b3, f"blake3:{blake3(bytes(blob)).hexdigest()}"))
    with pytest.raises(StoreCorruptError, match="hash mismatch.*sha256"):   # fell back to NarHash
        pull(cfg, [data], local_store=str(tmp_path / "C1"))
    assert not Machine(tmp_path / "C1").valid([data])
    # the damaged NAR is corrupt (it was listed only as "unsigned", behind its unsigned BLAKE3 hash)
    kinds = {p.store_path: (p.kind, p.detail) for p in verify(cfg).problems}
    assert kinds[data][0] == "corrupt" and "hashes to" in kinds[data][1], kinds

    # The right NAR under a forged BLAKE3 hash: restored through sha256, registered as Nix would.
    blob[1 << 20] ^= 1
    nar.write_bytes(bytes(blob))
    f.write_text(info.render().replace(info.b3, "blake3:" + "0" * 64))
    assert pull(cfg, [data], local_store=str(tmp_path / "C2")).fetched == [data]
    assert Machine(tmp_path / "C2").valid([data])
    # a sound NAR whose BLAKE3 hash alone is forged: the hash no longer matches it
    kinds = {p.store_path: (p.kind, p.detail) for p in verify(cfg).problems}
    assert kinds[data][0] == "corrupt" and "BLAKE3 hash is" in kinds[data][1], kinds
