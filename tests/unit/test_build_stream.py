"""build.py's reading of Nix's internal-json stream: the failure's log tail, in bounded memory."""

from __future__ import annotations

import json
from pathlib import Path

from mlbuild.build import _Stream

LOG_TAIL = 30   # the lines a failure shows
DRV = "/nix/store/00000000000000000000000000000000-m-model.drv"


def _msg(**fields: object) -> str:
    return "@nix " + json.dumps(fields)


def test_a_chatty_build_keeps_only_the_tail_it_shows(tmp_path: Path) -> None:
    # A training printing a line per batch for days: its build log went whole into mlbuild's
    # memory (~1.6 bytes per byte printed), to show the last 30 lines if the build failed.
    stream = _Stream("m.model", None)
    stream.line(_msg(action="start", id=1, type=105, fields=[DRV]))
    for i in range(100_000):
        stream.line(_msg(action="result", id=1, type=101, fields=[f"batch {i}"]))
    stream.line(_msg(action="msg", level=0, msg=f"error: builder for '{DRV}' failed with exit code 1"))
    assert len(stream.logs[DRV]) == LOG_TAIL
    text = str(stream.failure(tmp_path))
    assert "batch 99999" in text and f"batch {100_000 - LOG_TAIL}" in text
    assert f"batch {100_000 - LOG_TAIL - 1}\n" not in text
