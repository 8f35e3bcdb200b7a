"""mlbuild.interpreter: what the snapshot copies must not depend on the caller's PATH."""

from __future__ import annotations

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
