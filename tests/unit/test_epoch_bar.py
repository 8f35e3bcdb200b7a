"""The epoch bar in a log (not a terminal): the first, every ceil(epochs/20)th and the last epoch."""

from __future__ import annotations

import pytest

from mlbuild.build import Progress
from mlbuild.cli.commands import _Bar


def shown(epochs: int, capsys: pytest.CaptureFixture[str]) -> list[int]:
    bar = _Bar()
    bar.tty = False
    for n in range(1, epochs + 1):
        bar(Progress("m.model", {"event": "epoch", "epoch": n, "epochs": epochs, "loss": 0.5}))
    bar(Progress("m.model", {"event": "other"}))
    lines = capsys.readouterr().err.splitlines()
    return [int(line.split("epoch")[1].split("/")[0]) for line in lines]


def test_a_long_run_logs_about_twenty_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert shown(200, capsys) == [1, *range(10, 201, 10)]
    assert shown(30, capsys) == [1, *range(2, 31, 2)]


def test_a_short_run_logs_every_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    assert shown(5, capsys) == [1, 2, 3, 4, 5]
