"""IPython-only lines rewritten for a plain module (mlbuild/notebook/magics.py)."""

from __future__ import annotations

import ast

import pytest

from mlbuild.notebook.magics import rewrite_cell


def actions(source: str, policy: str = "comment") -> list[tuple[int, str, str]]:
    return [(m.line, m.kind, m.action) for m in rewrite_cell(source, 1, policy)[1]]  # type: ignore[arg-type]


def test_plain_python_is_untouched() -> None:
    src = "import os\nx = 1 % 2\ny = x != 3\nif y:\n    print('!not a magic')\n"
    code, found = rewrite_cell(src, 1)
    assert code == src.rstrip("\n") and found == []


def test_display_magics_and_help_are_dropped_with_a_comment() -> None:
    code, found = rewrite_cell("%matplotlib inline\n%load_ext autoreload\nnp.mean?\n??len\nx = 1", 3)
    assert [m.action for m in found] == ["dropped"] * 4
    assert code.splitlines()[0] == "# [mlbuild export] dropped IPython line magic: %matplotlib inline"
    assert "dropped IPython help: np.mean?" in code and code.endswith("x = 1")
    assert found[2].describe() == "cell 3, line 3: np.mean?  (help, dropped)"
    ast.parse(code)


def test_timing_magics_keep_their_statement() -> None:
    code, found = rewrite_cell("%time y = f(2)\n%timeit -n 10 -r 3 g()\nz = %time h()", 1)
    assert [m.action for m in found] == ["kept statement"] * 3
    lines = [l for l in code.splitlines() if not l.startswith("#")]
    assert lines == ["y = f(2)", "g()", "z = h()"]


def test_shell_escapes_and_other_magics_follow_the_policy() -> None:
    src = "!pip install foo\n%cd /tmp\n%run other.py\nx = 1"
    code, _ = rewrite_cell(src, 1, "comment")
    assert actions(src, "comment") == [(1, "shell escape", "dropped"), (2, "line magic", "dropped"),
                                       (3, "line magic", "dropped")]
    assert "# [mlbuild export] dropped IPython shell escape: !pip install foo" in code
    ast.parse(code)
    assert [a for _, _, a in actions(src, "error")] == ["refused"] * 3


def test_a_used_value_is_always_refused() -> None:
    for policy in ("comment", "error"):
        _, found = rewrite_cell("files = !ls data\nt = %timeit -o f()", 2, policy)  # type: ignore[arg-type]
        assert [m.action for m in found] == ["refused", "refused"] and all(m.assigns for m in found)
        assert "its value is used" in found[0].describe()


def test_magic_inside_a_block_keeps_the_block_valid() -> None:
    code, found = rewrite_cell("for p in paths:\n    !rm {p}\nprint('done')", 1)
    assert "    pass  # [mlbuild export] dropped IPython shell escape: !rm {p}" in code
    ast.parse(code)


def test_lines_inside_triple_quoted_strings_are_not_magics() -> None:
    src = 's = """\n!not a shell escape\n%not a magic\n"""\nt = \'\'\'x\'\'\'\n!ls'
    code, found = rewrite_cell(src, 1)
    assert [m.line for m in found] == [6]
    assert '!not a shell escape\n%not a magic' in code


def test_continued_magic_lines_are_one_magic() -> None:
    code, found = rewrite_cell("!echo a \\\n   b\nx = 2", 1)
    assert len(found) == 1 and found[0].text == "!echo a b"
    assert code.splitlines()[-1] == "x = 2"
    ast.parse(code)


def test_body_cell_magics_keep_their_body() -> None:
    code, found = rewrite_cell("%%time\nx = 1\n%matplotlib inline\ny = x + 1", 1)
    assert [(m.kind, m.action) for m in found] == [("cell magic", "kept body"), ("line magic", "dropped")]
    assert code.splitlines()[1:] == ["x = 1", "# [mlbuild export] dropped IPython line magic: %matplotlib inline",
                                     "y = x + 1"]


def test_other_cell_magics_become_comments_or_errors() -> None:
    code, found = rewrite_cell("%%bash\necho hi\nls", 4)
    assert found[0].action == "dropped" and all(l.startswith("#") for l in code.splitlines())
    assert "# echo hi" in code
    _, found = rewrite_cell("%%writefile out.txt\nhello", 4, "error")
    assert found[0].action == "refused" and found[0].kind == "cell magic"


def test_a_named_capture_keeps_its_body_too() -> None:
    """`%%capture out` was kept as a comment, so its cell's names were undefined in the module."""
    code, found = rewrite_cell("%%capture out\nprint('c')\nx = 1", 4)
    assert found[0].action == "kept body"
    assert code.splitlines() == ["# [mlbuild export] %%capture: cell magic dropped, its body kept (its output is not "
                                 "captured into out)", "print('c')", "x = 1"]


def test_an_indented_cell_is_dedented_as_ipython_does() -> None:
    code, found = rewrite_cell("  %time y = 2", 1)
    assert code.splitlines() == ["# [mlbuild export] %time dropped, its statement kept", "y = 2"]
    code, _ = rewrite_cell("  x = 1\n  if x:\n      print(x)", 1)
    assert code == "x = 1\nif x:\n    print(x)"


def test_unknown_policy() -> None:
    with pytest.raises(ValueError, match="policy 'drop'"):
        rewrite_cell("x = 1", 1, "drop")  # type: ignore[arg-type]


def test_a_cell_magic_s_indented_body_is_dedented() -> None:
    code, _ = rewrite_cell("%%time\n    r = 6\n    s = 7", 1)
    assert code.splitlines()[1:] == ["r = 6", "s = 7"]
