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


@pytest.mark.parametrize("tty", [False, True])
def test_an_epoch_count_that_is_not_a_number_draws_no_bar_and_does_not_stop_the_build(
        tty: bool, capsys: pytest.CaptureFixture[str]) -> None:
    # ctx.log_epoch(epoch, None) or (epoch, 0) in an open-ended run: the bar once raised
    # TypeError / ZeroDivisionError, ending `mlbuild build` (and its training) with a traceback.
    bar = _Bar()
    bar.tty = tty
    for epochs in (None, 0, -1, "x", float("nan")):
        for n in (1, 2, 3):
            bar(Progress("m.model", {"event": "epoch", "epoch": n, "epochs": epochs, "loss": 0.5}))
    bar(Progress("m.model", {"event": "epoch", "epoch": None, "epochs": 3}))
    err = capsys.readouterr().err
    assert "epoch   3 loss 0.5000" in err and "[" not in err
