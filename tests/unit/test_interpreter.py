"""mlbuild.interpreter: what the snapshot copies must not depend on the caller's PATH."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mlbuild.interpreter import _ldconfig


def test_the_loader_cache_is_read_without_sbin_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's PATH without /sbin made `ldconfig -p` "not found", read as "no libraries": the
    snapshot lacked libstdc++ (another lock hash, and a toolchain that failed to build)."""
    with_sbin = _ldconfig()
    assert "libstdc++.so.6" in with_sbin and "libgcc_s.so.1" in with_sbin
    monkeypatch.setenv("PATH", "/usr/local/bin:/usr/bin:/bin")
    assert _ldconfig() == with_sbin


def test_unresolved_libraries_end_with_the_libraries_and_the_fix() -> None:
    from mlbuild.runtime.elf import describe_unresolved

    lines = [f"torch/lib/lib{i}.so needs {'libstdc++.so.6' if i % 2 else 'libgcc_s.so.1'}" for i in range(540)]
    text = describe_unresolved(lines)
    assert text.splitlines()[0] == "shared libraries not found (540 files need them):"
    assert "  ... and 530 more" in text.splitlines() and len(text.splitlines()) == 13
    assert text.splitlines()[-1].startswith("mlbuild: libgcc_s.so.1, libstdc++.so.6: in neither the wheels nor the "
                                            "interpreter snapshot.")
    assert "run `mlbuild lock` again, or name them in [python].libraries" in text


def test_an_interpreter_that_does_not_run_says_what_it_said(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A pyenv shim for a version not enabled: the error was the probe script itself, exit 127."""
    from mlbuild.errors import InterpreterError
    from mlbuild.interpreter import probe

    shim = tmp_path / "python3.12"
    shim.write_text("#!/bin/sh\necho 'pyenv: python3.12: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    with pytest.raises(InterpreterError) as e:
        probe(str(shim))
    assert str(e.value) == (f"[python].interpreter '{shim}' ({shim}) does not run:\n"
                            "  pyenv: python3.12: command not found\n"
                            "set [python].interpreter to a Python that runs here (e.g. python3.11, or a path)")


@pytest.mark.parametrize(("script", "printed"), [
    ("#!/bin/sh\necho hello\n", "'hello'"),      # a JSONDecodeError traceback
    ("#!/bin/sh\nexit 0\n", "nothing"),
    ('#!/bin/sh\necho \'{"version": "3.11.7"}\'\n', "'{\"version\": \"3.11.7\"}'"),   # a TypeError traceback
])
def test_an_interpreter_that_is_not_python_is_named(tmp_path, script: str, printed: str) -> None:  # type: ignore[no-untyped-def]
    from mlbuild.errors import InterpreterError
    from mlbuild.interpreter import probe

    fake = tmp_path / "python3"
    fake.write_text(script)
    fake.chmod(0o755)
    with pytest.raises(InterpreterError) as e:
        probe(str(fake))
    assert str(e.value) == (f"[python].interpreter '{fake}' ({fake}) is not a Python: asked for its version and paths, "
                            f"it printed {printed}; set [python].interpreter to a Python 3 (e.g. python3.11, or a path)")


def _prints(tmp_path: Path, text: str) -> Path:
    fake = tmp_path / "python3"
    fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{text}\nEOF\n")
    fake.chmod(0o755)
    return fake


def test_python_2_is_named_as_such(tmp_path: Path) -> None:
    """It refused -I: 'does not run: Unknown option: -I'. The probe's Python 2 branch prints this
    (checked by hand with pyenv's 2.7.18; CI machines have no Python 2)."""
    from mlbuild.errors import InterpreterError
    from mlbuild.interpreter import probe

    fake = _prints(tmp_path, '{"python2": "2.7.18"}')
    with pytest.raises(InterpreterError) as e:
        probe(str(fake))
    assert str(e.value) == (f"[python].interpreter '{fake}' ({fake}) is Python 2.7.18; mlbuild needs Python 3: "
                            "set [python].interpreter to one (e.g. python3.11, or a path)")


@pytest.mark.parametrize("version", ["3.8.18", "3.6.15"])
def test_a_python_older_than_the_build_stages_need_is_refused(tmp_path: Path, version: str) -> None:
    """Python 3.8 locked and snapshotted; the validation stage then failed on str.removeprefix."""
    import json
    from dataclasses import asdict

    from mlbuild.errors import InterpreterError
    from mlbuild.interpreter import probe

    fake = _prints(tmp_path, json.dumps({**asdict(probe(sys.executable)), "version": version}))
    with pytest.raises(InterpreterError) as e:
        probe(str(fake))
    assert str(e.value) == (f"[python].interpreter '{fake}' ({fake}) is Python {version}; mlbuild's build stages "
                            "need Python 3.9 or newer: set [python].interpreter to one (e.g. python3.11, or a path)")


def test_the_probe_does_not_import_from_the_current_folder(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from mlbuild.interpreter import probe

    (tmp_path / "json.py").write_text("raise SystemExit('the project json.py was imported')\n")
    monkeypatch.chdir(tmp_path)
    assert probe(sys.executable).implementation == "cpython"


def test_a_snapshot_that_cannot_be_written_is_named_with_the_fix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A full /tmp ended `mlbuild lock` in an OSError traceback from inside shutil. A file-size limit
    stands in for the full disk (EFBIG where a full one gives ENOSPC); Nix is not reached."""
    import subprocess

    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
            "from mlbuild.errors import InterpreterError\n"
            "from mlbuild.interpreter import probe\n"
            "from mlbuild.toolchain import snapshot_into_store\n"
            "try:\n    snapshot_into_store(probe(sys.executable), ())\n"
            "except InterpreterError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.startswith(f"cannot write the snapshot of {probe_executable()} in {tmp_path}/mlbuild-snapshot-")
    assert proc.stdout.rstrip().endswith(f"free space in {tmp_path} or point TMPDIR at a folder with room, then run "
                                         "`mlbuild lock` again")
    assert list(tmp_path.iterdir()) == []     # the partial snapshot is gone


def probe_executable() -> str:
    from mlbuild.interpreter import probe

    return probe(sys.executable).executable


def test_a_snapshot_the_store_holds_is_not_added_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `mlbuild lock` streamed the interpreter snapshot into the store with `nix-store
    --add-fixed` (~1 s), though an unchanged interpreter gives the same hash, whose path was there."""
    from mlbuild import _nix
    from mlbuild.interpreter import probe
    from mlbuild.toolchain import snapshot_into_store

    ident = probe(sys.executable)
    path, sha, loader = snapshot_into_store(ident, ())
    added: list[str] = []
    add_fixed = _nix.add_fixed
    monkeypatch.setattr(_nix, "add_fixed", lambda folder, recursive: added.append(str(folder)) or
                        add_fixed(folder, recursive))
    assert snapshot_into_store(ident, ()) == (path, sha, loader) and added == []
    assert _nix.invalid_paths([path]) == []
