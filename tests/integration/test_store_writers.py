"""Several writers at once, and a writer killed with SIGKILL mid-push (real Nix, real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlbuild.store import gc, push, verify
from mlbuild.store.layout import TEMP_QUIET_S, Layout
from tests.conftest import MLBUILD, REPO
from tests.integration.test_store_machines import Machine, make_store, store_env, write_graph

pytestmark = pytest.mark.integration


def _push_proc(env: dict[str, str], store: Path, paths: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([*MLBUILD, "store", "push", "--from", str(store), *paths], cwd=REPO,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def test_concurrent_pushes_of_overlapping_closures(tmp_path: Path) -> None:
    graph = write_graph(tmp_path)
    cfg = make_store(tmp_path)
    a = Machine(tmp_path / "A")
    variants = [a.build(file=graph, attrs=["package", "validation"], args={"salt": str(i), "dataMiB": "4"})
                for i in range(4)]
    env = store_env(cfg)
    jobs = [[v.outputs["validation"]] for v in variants]                   # each its own closure...
    jobs += [[variants[0].outputs["package"], variants[1].outputs["package"]]] * 2   # ...and overlaps
    procs = [_push_proc(env, tmp_path / "A", paths) for paths in jobs]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    report = verify(cfg)
    assert report.ok, report.problems
    assert report.checked == 1 + 4 * 3     # the shared weights, and per variant model, package, validation
    assert not list(Layout(cfg.root).temp_files())
    fresh = Machine(tmp_path / "B")
    for i in range(4):
        assert fresh.build(file=graph, attrs=["validation"], args={"salt": str(i), "dataMiB": "4"},
                           substitute_from=cfg).built == []


def test_writer_killed_mid_push_leaves_a_consistent_store(tmp_path: Path) -> None:
    (tmp_path / "big.nix").write_text(r"""
      { big = derivation { name = "store-test-big-dataset"; system = "x86_64-linux"; builder = "/bin/sh";
        PATH = "/usr/bin:/bin";
        args = [ "-c" "head -c 120000000 /dev/urandom | base64 > $out" ]; }; }
    """)
    cfg = make_store(tmp_path)
    a = Machine(tmp_path / "A")
    big = a.build(file=tmp_path / "big.nix", attrs=["big"]).outputs["big"]
    layout = Layout(cfg.root)
    proc = _push_proc(store_env(cfg), tmp_path / "A", [big])
    deadline = time.monotonic() + 60
    temp = None
    while temp is None and time.monotonic() < deadline and proc.poll() is None:
        temp = next((p for p in layout.nar_dir.iterdir() if p.name.startswith(".tmp.")), None)
        time.sleep(0.001)
    assert temp is not None, "the push finished before its temp file was seen"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not layout.narinfo(big).exists()             # nothing points at the partial NAR
    assert list(layout.temp_files())                    # the partial NAR is left, invisible to Nix
    assert verify(cfg).ok
    assert Machine(tmp_path / "B").build(file=tmp_path / "big.nix", attrs=["big"],
                                         substitute_from=cfg).built   # not substitutable: built

    again = push(cfg, [big], local_store=a.store)
    assert [n.store_path for n in again.pushed] == [big] and again.pushed[0].compression == "zstd"
    assert verify(cfg).ok
    # default grace: the dead writer's temp is spared while recent (its pid may be a live writer in
    # another container of this hostname), and goes once nothing wrote it for TEMP_QUIET_S
    assert not gc(cfg).removed_temps and list(layout.temp_files())
    for t in layout.temp_files():
        os.utime(t, (time.time() - TEMP_QUIET_S - 1,) * 2)
    swept = gc(cfg)
    assert swept.removed_temps and not swept.removed_paths and not list(layout.temp_files())
    assert Machine(tmp_path / "C").build(file=tmp_path / "big.nix", attrs=["big"], substitute_from=cfg).built == []


def test_push_republishes_an_entry_whose_nar_is_short_or_gone(tmp_path: Path) -> None:
    """What a power cut on the store's host can leave when NARs are not fsynced (fsync-nars off):
    a narinfo whose NAR was cut short. A push does not count such an entry as present."""
    graph = write_graph(tmp_path)
    cfg = make_store(tmp_path)
    a = Machine(tmp_path / "A")
    built = a.build(file=graph, attrs=["package"], args={"salt": "short", "dataMiB": "2"})
    first = push(cfg, [built.outputs["package"]], local_store=a.store)
    layout = Layout(cfg.root)
    by_size = sorted(first.pushed, key=lambda n: n.file_size)
    cut, gone = by_size[-1], by_size[0]
    with open(layout.nar(cut.url), "r+b") as f:
        f.truncate(cut.file_size // 2)
    layout.nar(gone.url).unlink()
    assert not verify(cfg).ok
    again = push(cfg, [built.outputs["package"]], local_store=a.store)
    assert sorted(n.store_path for n in again.pushed) == sorted([cut.store_path, gone.store_path])
    assert len(again.present) == len(first.pushed) - 2
    report = verify(cfg)
    assert report.ok, report.problems
    assert Machine(tmp_path / "B").build(file=graph, attrs=["package"], args={"salt": "short", "dataMiB": "2"},
                                         substitute_from=cfg).built == []


if __name__ == "__main__":   # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
