"""A store mounted read-only (as consumers may mount it) reads fine; every writing command says
the store is read-only here, naming it, instead of a traceback half-way through a push."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from mlbuild.store.layout import Layout
from tests.conftest import MLBUILD


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    Layout(root).init()
    return root


def read_only(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``mlbuild store --store STORE ARGS`` in a mount namespace where STORE is a read-only bind mount."""
    s = shlex.quote(str(store))
    script = (f"mount --bind {s} {s} && mount -o remount,bind,ro {s} && "
              f"exec {shlex.join(MLBUILD)} store --store {s} {shlex.join(args)}")
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, what", [
    (["push", "/nix/store/00000000000000000000000000000000-x"], "push"),
    (["tag", "v1", "/nix/store/00000000000000000000000000000000-x"], "tag v1"),
    (["gc"], "collect garbage"),
    (["verify", "--repair"], "repair"),
    (["init"], "initialise"),
])
def test_writing_commands_name_the_read_only_store(store: Path, args: list[str], what: str) -> None:
    proc = read_only(store, *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"cannot {what}: the shared store {store} is not writable ({store}: it is mounted read-only here)" \
        in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_reading_commands_work_on_a_read_only_store(store: Path) -> None:
    for args in (["verify"], ["stats"], ["gc", "--dry-run"]):
        proc = read_only(store, *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_store_this_user_may_not_write_names_its_group(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It said "do it from a machine that mounts the store read-write" of a read-write mount."""
    import grp
    import os

    from mlbuild.errors import StoreError

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    group = grp.getgrgid(store.stat().st_gid).gr_name
    with pytest.raises(StoreError) as e:
        Layout(store).require_writable("push")
    assert str(e.value) == (f"cannot push: the shared store {store} is not writable ({store}: this user may not write "
                            f"it); run it as a member of the folder's group ({group}: see store-config/README.md), "
                            f"or ask the store's owner to make the folder group-writable")
