"""A restore (or a fast `data add`) that finds the store path's lock held says it is waiting, then
takes it when freed: held by Nix itself (a substitution, `nix-store --add-fixed`: an flock, as
strace shows Nix 2.8 takes it) or by an older mlbuild (a POSIX lock)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlbuild.storepath import PathLock

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
getattr(fcntl, sys.argv[3])(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.mark.parametrize("how", ["flock", "lockf"])   # Nix's own lock; an older mlbuild's
def test_a_held_lock_is_announced_then_waited_for(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  how: str) -> None:
    real = str(tmp_path / "abc-weights")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, real + ".lock", "0.5", how], stdout=subprocess.PIPE,
                              text=True)
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
