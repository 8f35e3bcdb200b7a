"""A restore that finds the store path's lock held says it is waiting, then takes it when freed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlbuild.store.restore import PathLock

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_held_lock_is_announced_then_waited_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real = str(tmp_path / "abc-weights")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, real + ".lock", "0.5"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    t0 = time.monotonic()
    lock = PathLock(real)
    waited = time.monotonic() - t0
    holder.wait()
    assert f"waiting for the lock on {real}" in capsys.readouterr().err
    assert waited > 0.2  # it did wait for the holder to go
    lock.release()
    assert not Path(real + ".lock").exists()


def test_a_free_lock_is_taken_without_a_word(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lock = PathLock(str(tmp_path / "abc-weights"))
    lock.release()
    assert capsys.readouterr().err == ""
