"""build.py's reading of Nix's internal-json stream: the failure's log tail, in bounded memory."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

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
    # the rest is in Nix's log of the failed build (there is no train.log): say how to read it
    assert text.endswith(f"--- its last {LOG_TAIL} of 100000 lines; the whole log: nix log {DRV} ---")
    assert "nix log" not in _failed(tmp_path, ["Traceback (most recent call last):", "KeyError: 'x'"])


def _failed(tmp_path: Path, log: list[str], datasets: dict[str, str] | None = None) -> str:
    stream = _Stream("m.model", None)
    stream.line(_msg(action="start", id=1, type=105, fields=[DRV]))
    for line in log:
        stream.line(_msg(action="result", id=1, type=101, fields=[line]))
    stream.line(_msg(action="msg", level=0, msg=f"error: builder for '{DRV}' failed with exit code 1"))
    return str(stream.failure(tmp_path, datasets))


def test_a_relative_path_of_the_project_is_explained(tmp_path: Path) -> None:
    # A training opening "extra.json" (listed in code or not) or a notebook opening the CSV it was
    # written against ended in a bare FileNotFoundError: a stage runs in an empty temporary folder.
    (tmp_path / "extra.json").write_text("{}")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "clean.csv").write_text("1,a\n")
    error = "FileNotFoundError: [Errno 2] No such file or directory: '{}'"
    text = _failed(tmp_path, ["Traceback (most recent call last):", error.format("extra.json")])
    assert ('mlbuild: extra.json is in the project, but a stage runs in an empty temporary folder: list "extra.json" '
            "in the failing stage's `code = [...]` in mlbuild.toml and open it beside the script, "
            'Path(__file__).parent / "extra.json"') in text
    notebook = ["mlbuild: notebook explore.ipynb failed at cell 1 (In [2]); its source:", "  " + error.format("data/clean.csv")]
    assert ('mlbuild: data/clean.csv is the dataset raw (data/clean.csv), which a build reads from the store, not from '
            "the project folder: list \"raw\" in the notebook's datasets and read DATA[\"raw\"]") in \
        _failed(tmp_path, notebook, {"raw": "data/clean.csv"})
    assert "to the notebook's `code = [...]`" in _failed(tmp_path, notebook, {"raw": "data/other.csv"})
    assert "ctx.data[\"raw\"]" in _failed(tmp_path, [error.format("./data/clean.csv")], {"raw": "data"})
    # a notebook in a folder of its own runs there: ../data/clean.csv is the project's data/clean.csv,
    # and notebooks/data/clean.csv is not the dataset's (it had no hint, or one for another file)
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "extra.json").write_text("{}")
    nested = ["mlbuild: notebook notebooks/eda.ipynb failed at cell 2 (In [3]); its source:", "  {}"]
    assert ("mlbuild: ../data/clean.csv (data/clean.csv from the notebook's folder) is the dataset raw (data/clean.csv), "
            "which a build reads from the store") in \
        _failed(tmp_path, [l.format(error.format("../data/clean.csv")) for l in nested], {"raw": "data/clean.csv"})
    assert "mlbuild: data/clean.csv" not in \
        _failed(tmp_path, [l.format(error.format("data/clean.csv")) for l in nested], {"raw": "data/clean.csv"})
    assert "add \"notebooks/extra.json\" to the notebook's `code = [...]`" in \
        _failed(tmp_path, [l.format(error.format("extra.json")) for l in nested])
    # not the project's (a file the script was to write first), or absolute and not here either: no hint
    assert "mlbuild:" not in _failed(tmp_path, [error.format("cache/x.npy")])
    assert "mlbuild:" not in _failed(tmp_path, [error.format(str(tmp_path / "gone.json"))])


def test_a_file_of_this_machine_that_the_sandbox_hides_is_explained(tmp_path: Path) -> None:
    """A training opening a host file by its absolute path trained on Debian 12 (Nix without a
    sandbox) and failed on CI (Debian 13's Nix, sandbox on) with a bare FileNotFoundError for a file
    that is plainly there."""
    host = tmp_path / "labels.txt"
    host.write_text("a\n")
    error = f"FileNotFoundError: [Errno 2] No such file or directory: '{host}'"
    assert (f"mlbuild: {host} is a file of this machine, which a build does not see: Nix's sandbox (on here, as "
            "Debian 13's Nix has it) gives a build its inputs only (Debian 12's Nix, sandbox = false, let it read the "
            f"file, though no store path records it); pin it as a dataset, `mlbuild data add NAME {host}`, list NAME in "
            "the failing stage's datasets and read ctx.data[\"NAME\"] (a prepare: inputs[\"NAME\"])") in \
        _failed(tmp_path, ["Traceback (most recent call last):", error])
    notebook = ["mlbuild: notebook explore.ipynb failed at cell 1 (In [2]); its source:", "  " + error]
    assert "list NAME in the notebook's datasets and read DATA[\"NAME\"]" in _failed(tmp_path, notebook)
    # a dangling symlink of this machine is no file to pin either (`data add` of it fails)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert "mlbuild:" not in _failed(tmp_path, [error.replace(str(host), str(tmp_path / "dangling"))])
    # a store path the build did not list as an input is not a file to pin
    stored = next(iter(sorted(Path("/nix/store").glob("*-source"))), None)
    if stored is not None:
        assert "mlbuild:" not in _failed(tmp_path, [error.replace(str(host), str(stored))])


def test_the_build_folders_a_check_kept_are_removed_whole(tmp_path: Path) -> None:
    """`build --check` runs Nix with --keep-failed; Nix 2.26 names the `build` folder inside its
    `nix-build-NAME.drv-N` (Nix 2.8 names that one), and removing the named one left an empty
    folder in /tmp at every check (Debian 13's /tmp held nix-build-digits-model.drv-0 to -3)."""
    from mlbuild.build import _drop_kept

    new = tmp_path / "nix-build-m-model.drv-0"
    (new / "build").mkdir(parents=True)
    (new / "build" / "x").write_text("x")
    old = tmp_path / "nix-build-m-model.drv-1"
    old.mkdir()
    mine = tmp_path / "build"   # a folder named build that is not inside Nix's: only it goes
    mine.mkdir()
    _drop_kept(f"note: keeping build directory '{new / 'build'}'\nnote: keeping build directory '{old}'\n"
               f"note: keeping build directory '{mine}'")
    assert not new.exists() and not old.exists() and not mine.exists() and tmp_path.exists()


def test_waiting_for_another_build_s_lock_is_said(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An mlbuild killed with kill -9 (a CI runner's timeout) leaves its `nix build` training on its own;
    the next build of the same model waited on Nix's lock on the output, silent, for as long as that
    training took, then said `cached`. Nix says it waits (an activity of type 111): mlbuild says so too."""
    out = "/nix/store/b75g297zvbp3q4lh0sk4jj40nhghf72n-m-model"
    stream = _Stream("m.model", None)
    stream.line(_msg(action="start", id=7, level=1, type=111,
                     text=f"waiting for lock on \u001b[35;1m'{out}'\u001b[0m"))
    err = capsys.readouterr().err
    assert err == (f"mlbuild: waiting for another build of m-model to finish (Nix's lock on {out}): a `nix build` or "
                   f"mlbuild of the same thing, or one left running by an mlbuild that was killed (`pgrep -af "
                   f"'nix.*build'` lists them and their trainings); this build takes its output once it is done\n")
    # mlbuild runs `nix <options> build ...`: the pattern finds such a command line ('nix build' did not)
    from mlbuild import _nix

    monkeypatch.setenv("MLBUILD_STATE", str(tmp_path))
    line = " ".join(["/usr/bin/nix", *_nix.common_options(), "build", "--json"])
    assert re.search("nix.*build", line) and not re.search("nix build", line)
    assert not stream.summary.built and not stream.acts


def test_nix_s_other_waits_are_not_said_to_be_another_build_s_lock(capsys: pytest.CaptureFixture[str]) -> None:
    """Nix reports other waits with the same activity (type 111): for a free build user (a daemon's
    nixbld users all busy) and for a remote builder's slot (`builders`, the GPU machines), naming the
    .drv, and a content-addressed derivation's `resolved derivation: ...`, no wait at all. Each was
    said to be 'waiting for another build of m-model.drv to finish (Nix's lock on ...drv)', a build
    `pgrep` would not find. They are said as Nix says them, once each."""
    drv = "/nix/store/b75g297zvbp3q4lh0sk4jj40nhghf72n-m-model.drv"
    stream = _Stream("m.model", None)
    for i, text in enumerate([f"waiting for a machine to build \u001b[35;1m'{drv}'\u001b[0m",
                              f"waiting for a machine to build \u001b[35;1m'{drv}'\u001b[0m",
                              f"waiting for a free build user ID for \u001b[35;1m'{drv}'\u001b[0m",
                              f"resolved derivation: '{drv}' -> '{drv[:-6]}x.drv'"]):
        stream.line(_msg(action="start", id=10 + i, level=0, type=111, text=text))
    assert capsys.readouterr().err == (f"mlbuild: nix is waiting for a machine to build '{drv}'\n"
                                       f"mlbuild: nix is waiting for a free build user ID for '{drv}'\n")
