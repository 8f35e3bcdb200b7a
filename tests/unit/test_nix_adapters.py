"""JSON shapes of Nix 2.8 and of newer Nix, normalised by mlbuild._nix."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlbuild import _nix
from mlbuild.errors import NixError

P = "/nix/store/lifmwrbx8filj6vz3zk86h3nyhdbacx4-d"


def test_path_info_nix_2_8_list() -> None:
    text = json.dumps([{"path": P, "narHash": "sha256:abc", "narSize": 10, "references": []}])
    assert _nix.parse_path_info(text) == {P: {"narHash": "sha256:abc", "narSize": 10, "references": []}}


def test_path_info_nix_2_19_object() -> None:
    text = json.dumps({P: {"narHash": "sha256-xyz=", "narSize": 10, "references": [P]}})
    assert _nix.parse_path_info(text)[P]["references"] == [P]


def test_path_info_invalid_path_is_null_in_new_nix() -> None:
    assert _nix.parse_path_info(json.dumps({P: None})) == {P: {}}


def test_path_info_garbage() -> None:
    with pytest.raises(NixError):
        _nix.parse_path_info('"nope"')


def test_build_json_both_versions() -> None:
    out = [{"drvPath": "/nix/store/x.drv", "outputs": {"out": P}}]
    assert _nix.parse_build_json(json.dumps(out)) == out
    with pytest.raises(NixError):
        _nix.parse_build_json("{}")


def test_missing_nix_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    _nix.nix_version.cache_clear()
    with pytest.raises(_nix.NixNotFoundError, match="apt-get install nix-bin"):
        _nix.nix_version()
    _nix.nix_version.cache_clear()


def test_an_unwritable_state_folder_is_named_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only or missing HOME (a CI container's HOME=/, a user with no home) stopped every build
    with a PermissionError traceback while making ~/.cache/mlbuild for the flake registry."""
    (tmp_path / "file").write_text("")
    monkeypatch.delenv("MLBUILD_STATE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "file"))   # no folder can be made under it, root or not
    with pytest.raises(NixError, match=f"cannot write {tmp_path}/file/.cache/mlbuild/registry.json, the empty flake "
                                       "registry mlbuild gives Nix .Not a directory.; set MLBUILD_STATE .or HOME. to a "
                                       "folder you can write"):
        _nix.common_options()
    monkeypatch.setenv("MLBUILD_STATE", str(tmp_path / "state"))
    assert str(tmp_path / "state" / "registry.json") in _nix.common_options()


def test_a_full_state_folder_leaves_no_empty_registry_and_is_named(tmp_path: Path) -> None:
    """registry.json was written in place: a full disk left it empty (Nix then warned "cannot parse
    flake registry" at each lookup, and it was never written again), and the CLI said "No space
    left on device" naming no file (the OSError had none; the CLI names the one it has)."""
    state = tmp_path / "state"
    state.mkdir()
    s = shlex.quote(str(state))
    code = ("from mlbuild import _nix\ntry: _nix.common_options()\n"
            "except OSError as e: print(e.strerror, e.filename)")
    script = (f"mount -t tmpfs -o size=64k tmpfs {s} && (dd if=/dev/zero of={s}/fill bs=1k count=100 2>/dev/null; "
              f"true) && MLBUILD_STATE={s} {shlex.quote(sys.executable)} -c {shlex.quote(code)}; ls -A {s}")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parents[2])
    assert proc.stdout == f"No space left on device {state / 'registry.json'}\nfill\n", proc.stdout + proc.stderr
    # left so by an older mlbuild; cut short or garbled (a crash, a disk error): Nix warned "cannot
    # parse flake registry" at each lookup, for good
    # JSON objects Nix does not read as a registry either ('unsupported version 0', 'cannot parse')
    for left in (b"", b'{"flakes": [', b"\xff\xfe\x00", b"[]", b"{}", b'{"flakes": 5, "version": 2}',
                 b'{"flakes": [], "version": 1}'):
        (state / "registry.json").write_bytes(left)
        with pytest.MonkeyPatch.context() as m:
            m.setenv("MLBUILD_STATE", str(state))
            _nix.common_options()
        assert json.loads((state / "registry.json").read_text()) == {"flakes": [], "version": 2}, left


def test_the_nix_version_is_asked_once_per_nix_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every build records the Nix version and ran `nix --version` for it (~0.05 s). It is kept by
    the binary's path, inode, size and times now: the same binary is not asked again, another is."""
    import os

    log = tmp_path / "asked"
    nix = tmp_path / "bin" / "nix"
    nix.parent.mkdir()
    nix.write_text(f"#!/bin/sh\necho \"$*\" >> {log}\necho 'nix (Nix) 2.8.0'\n")
    nix.chmod(0o755)
    monkeypatch.setenv("PATH", f"{nix.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("MLBUILD_STATE", str(tmp_path / "state"))

    def version() -> tuple[int, ...]:
        _nix.nix_version.cache_clear()   # as a new command does
        return _nix.nix_version()

    try:
        assert version() == (2, 8, 0) and version() == (2, 8, 0)
        assert log.read_text() == "--version\n"
        nix.write_text(f"#!/bin/sh\necho \"$*\" >> {log}\necho 'nix (Nix) 2.26.3'\n")   # an upgrade
        assert version() == (2, 26, 3) and version() == (2, 26, 3)
        assert log.read_text() == "--version\n--version\n"
        (tmp_path / "state" / "nix-version.json").write_text("{not json")
        assert version() == (2, 26, 3) and log.read_text().count("--version") == 3
    finally:
        _nix.nix_version.cache_clear()


def test_an_empty_mlbuild_state_is_no_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLBUILD_STATE="" (an unset variable in a script) was the path "": the working folder, which
    is the project's, so the flake registry, the Nix version and the plot cache were written into
    it and the next build refused the untracked files. It means ~/.cache/mlbuild, as unset does."""
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLBUILD_STATE", "")
    assert _nix.state_home() == tmp_path / "home" / ".cache" / "mlbuild"
    assert str(tmp_path / "home" / ".cache" / "mlbuild" / "registry.json") in _nix.common_options()
    assert list(project.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to run as a user with no home")
def test_no_home_at_all_is_named_with_the_fix(tmp_path: Path) -> None:
    """HOME unset, as a container run with an arbitrary uid has it (no entry in /etc/passwd):
    every build ended in pathlib's "RuntimeError: Could not determine home directory" traceback."""
    # The user database without this uid, as in such a container (running the interpreter as
    # another uid needs it readable by that uid, which the Debian 13 tree's pyenv is not).
    code = ("import pwd\ndef nobody(uid): raise KeyError(f'getpwuid(): uid not found: {uid}')\n"
            "pwd.getpwuid = nobody\n"
            "from mlbuild import _nix\nfrom mlbuild.errors import NixError\ntry: _nix.common_options()\n"
            "except NixError as e: print(e)")
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "MLBUILD_STATE")}
    proc = subprocess.run([sys.executable, "-B", "-c", code], capture_output=True, text=True, timeout=60, env=env,
                          cwd=Path(__file__).parents[2])
    assert proc.stdout.startswith("cannot find the home folder for ~/.cache/mlbuild") and \
        "set MLBUILD_STATE (or HOME) to a folder you can write" in proc.stdout, proc.stdout + proc.stderr
