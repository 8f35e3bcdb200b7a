"""train.log keeps the head and the tail of what training printed, with a line for the gap."""

from __future__ import annotations

import io

from hypothesis import given, strategies as st

from mlbuild.runtime.train import _CappedLog


def written(chunks: list[str], head: int, tail: int) -> str:
    f = io.StringIO()
    log = _CappedLog(f, head=head, tail=tail)
    for c in chunks:
        log.write(c)
    log.close()
    return f.getvalue()


def test_short_output_is_kept_whole() -> None:
    assert written(["epoch 1\n", "epoch 2\n"], head=100, tail=50) == "epoch 1\nepoch 2\n"


def test_long_output_keeps_head_and_tail_and_says_what_was_left_out() -> None:
    lines = [f"step {i}\n" for i in range(10_000)]
    text = "".join(lines)
    got = written(lines, head=1000, tail=500)
    dropped = len(text) - 1500
    note = f"\n[mlbuild: {dropped} characters of output left out here; the build log (nix log) has them]\n"
    assert got == text[:1000] + note + text[-500:]


@given(st.lists(st.text(max_size=40), max_size=60), st.integers(0, 50), st.integers(1, 50))
def test_any_writes_keep_exactly_head_and_tail(chunks: list[str], head: int, tail: int) -> None:
    text = "".join(chunks)
    got = written(chunks, head, tail)
    if len(text) <= head + tail:
        assert got == text
    else:
        assert got.startswith(text[:head]) and got.endswith(text[-tail:])
        assert f"[mlbuild: {len(text) - head - tail} characters" in got


def test_torch_compile_without_a_compiler_gets_the_fix() -> None:
    """A train that ran a torch.compile'd model failed its build with inductor's "No working C++
    compiler found" (raised as torch._dynamo's InductorError, from InvalidCxxCompiler) and a
    traceback, not what to do in a build that has no compiler."""
    from torch._inductor.exc import CppCompileError, InductorError, InvalidCxxCompiler

    from mlbuild.runtime.train import compiler_hint

    for inner in (InvalidCxxCompiler(), CppCompileError(["g++"], "cc1plus: not found")):
        try:
            try:
                raise inner
            except Exception as e:
                raise InductorError(e, None) from e
        except Exception as e:
            hint = compiler_hint(e)
        assert hint is not None and hint.startswith(
            "mlbuild: torch.compile's default backend (inductor) compiles C++ while the model runs, and a build has "
            "no C++ compiler")
        assert hint.endswith('torch.compile(model, backend="aot_eager"), which needs no compiler')
    assert compiler_hint(ValueError("x")) is None and compiler_hint(RuntimeError("g++")) is None
