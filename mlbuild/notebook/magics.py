"""IPython-only syntax in notebook code cells, rewritten for a plain Python module.

What a module cannot run, and what happens to it:

- Display and session settings (``%matplotlib inline``, ``%load_ext autoreload``, ``%config``,
  ``obj?`` help...) change nothing a module computes: always dropped, with a comment.
- Timing wrappers keep their statement: ``%time x = f()`` becomes ``x = f()``; the cell magics
  ``%%time``, ``%%timeit``, ``%%prun`` and ``%%capture`` keep their body (``%%capture out``: its
  output is printed, not captured into ``out``).
- Everything else (shell escapes ``!ls``, ``%cd``, ``%run``, ``%pip``, cell magics such as
  ``%%bash`` or ``%%writefile``) is either dropped with a comment (policy ``"comment"``, the
  default) or refused (policy ``"error"``): refused lines make the export fail, listing each.
- A magic whose *value* is used (``files = !ls``) cannot be dropped without leaving the name
  undefined: it is always refused, with a hint to rewrite it in Python.

Detection is line based, as IPython's own input transformers are: a line is IPython syntax when
it starts (after indentation, outside a triple-quoted string) with ``%``, ``!`` or is ``name?``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["Magic", "MagicPolicy", "rewrite_cell", "POLICIES", "HARMLESS_LINE_MAGICS"]

MagicPolicy = Literal["comment", "error"]
POLICIES: tuple[str, ...] = ("comment", "error")
NOTE = "# [mlbuild export]"

HARMLESS_LINE_MAGICS = frozenset({
    "matplotlib", "config", "load_ext", "reload_ext", "unload_ext", "autoreload", "aimport",
    "precision", "pprint", "xmode", "colors", "automagic", "autocall", "autoawait", "doctest_mode",
    "pdb", "tb", "who", "whos", "who_ls", "lsmagic", "magic", "quickref", "pinfo", "pinfo2",
    "psearch", "history", "page",
})
TIMING_LINE_MAGICS = frozenset({"time", "timeit", "prun"})
BODY_CELL_MAGICS = frozenset({"time", "timeit", "prun", "capture"})
_HELP = re.compile(r"^(\?{1,2}[\w.*]+|[\w.*]+\?{1,2})$")
_ASSIGN = re.compile(r"^(?P<lhs>[^=!%]+?)\s*=\s*(?P<rhs>[%!].*)$")
_OPTION_WITH_VALUE = frozenset({"-n", "-r", "-p", "-s", "-T", "-D", "-l"})


@dataclass(frozen=True)
class Magic:
    """One IPython-only line found in a cell (``cell`` and ``line`` are 1-based)."""

    cell: int
    line: int
    text: str
    kind: str    # "line magic" | "cell magic" | "shell escape" | "help"
    action: str  # "dropped" | "kept statement" | "kept body" | "refused"
    assigns: bool = False  # its value is assigned (``x = !ls``): it can never be dropped
    captures: str | None = None   # ``%%capture out``: the name IPython would bind (the export does not)

    def describe(self) -> str:
        why = "its value is used" if self.assigns else self.action
        return f"cell {self.cell}, line {self.line}: {self.text.strip()}  ({self.kind}, {why})"


def _string_state(line: str, state: str | None) -> str | None:
    """The triple-quote delimiter still open after ``line`` (None: outside a string)."""
    i, n = 0, len(line)
    while i < n:
        if state:
            j = line.find(state, i)
            if j < 0:
                return state
            i, state = j + 3, None
            continue
        c = line[i]
        if c == "#":
            return None
        if line.startswith('"""', i) or line.startswith("'''", i):
            state, i = line[i:i + 3], i + 3
            continue
        if c in "\"'":
            k = i + 1
            while k < n and line[k] != c:
                k += 2 if line[k] == "\\" else 1
            i = k + 1
            continue
        i += 1
    return state


def _strip_options(args: str) -> str:
    """``-n 10 -r 3 f(x)`` -> ``f(x)`` (the statement after %timeit's options)."""
    words = args.split(" ")
    i = 0
    while i < len(words) and (words[i] == "" or words[i].startswith("-")):
        i += 2 if words[i] in _OPTION_WITH_VALUE else 1
    return " ".join(words[i:]).strip()


def _is_target(lhs: str) -> bool:
    try:
        ast.parse(f"{lhs} = None")
        return True
    except SyntaxError:
        return False


def _dropped(indent: str, kind: str, text: str) -> str:
    # Inside a block a bare comment would leave it empty: keep a `pass`.
    body = f"{NOTE} dropped IPython {kind}: {text.strip()}"
    return f"{indent}pass  {body}" if indent else body


def _cell_magic(lines: list[str], cell: int, policy: MagicPolicy,
                found: list[Magic]) -> tuple[list[str], bool]:
    """Handle a leading ``%%magic`` line; returns (lines, whether the rest is still code)."""
    first = next(i for i, l in enumerate(lines) if l.strip())
    head = lines[first].strip()
    name, _, args = head[2:].partition(" ")
    variable = _strip_options(args) if name == "capture" else ""
    if name in BODY_CELL_MAGICS:
        found.append(Magic(cell, first + 1, head, "cell magic", "kept body", captures=variable or None))
        lines[first] = f"{NOTE} %%{name}: cell magic dropped, its body kept" + (
            f" (its output is not captured into {variable})" if variable else "")
        return [*lines[:first + 1], *_leading_indent(lines[first + 1:])], True   # an indented body runs too
    action = "refused" if policy == "error" else "dropped"
    found.append(Magic(cell, first + 1, head, "cell magic", action))
    note = f"{NOTE} dropped IPython cell magic %%{name}: the cell is kept as a comment"
    return [note, *(f"# {l}" if l.strip() else "#" for l in lines)], False


def _line(line: str, cell: int, number: int, policy: MagicPolicy, found: list[Magic]) -> list[str]:
    """Rewrite one logical line that is IPython syntax; returns the replacement lines."""
    stripped = line.lstrip()
    indent = line[:len(line) - len(stripped)]
    text = stripped.rstrip()
    if _HELP.match(text):
        found.append(Magic(cell, number, text, "help", "dropped"))
        return [_dropped(indent, "help", text)]
    if text.startswith("!"):
        action = "refused" if policy == "error" else "dropped"
        found.append(Magic(cell, number, text, "shell escape", action))
        return [_dropped(indent, "shell escape", text)]
    if text.startswith("%"):
        name, _, args = text.lstrip("%").partition(" ")
        if name in HARMLESS_LINE_MAGICS:
            found.append(Magic(cell, number, text, "line magic", "dropped"))
            return [_dropped(indent, "line magic", text)]
        statement = _strip_options(args) if name in TIMING_LINE_MAGICS else ""
        if statement:
            found.append(Magic(cell, number, text, "line magic", "kept statement"))
            return [f"{indent}{NOTE} %{name} dropped, its statement kept", f"{indent}{statement}"]
        action = "refused" if policy == "error" else "dropped"
        found.append(Magic(cell, number, text, "line magic", action))
        return [_dropped(indent, "line magic", text)]
    m = _ASSIGN.match(text)
    assert m is not None
    rhs = m["rhs"]
    name = rhs.lstrip("%").partition(" ")[0]
    if rhs.startswith("%") and name in TIMING_LINE_MAGICS and "-o" not in rhs.split():
        statement = _strip_options(rhs.lstrip("%").partition(" ")[2])
        if statement:
            found.append(Magic(cell, number, text, "line magic", "kept statement"))
            return [f"{indent}{NOTE} %{name} dropped, its statement kept", f"{indent}{m['lhs']} = {statement}"]
    kind = "shell escape" if rhs.startswith("!") else "line magic"
    found.append(Magic(cell, number, text, kind, "refused", assigns=True))
    return [line]


def _is_ipython(line: str) -> bool:
    text = line.strip()
    if not text:
        return False
    if text[0] in "%!" or _HELP.match(text):
        return True
    m = _ASSIGN.match(text)
    return m is not None and _is_target(m["lhs"])


def _leading_indent(lines: list[str]) -> list[str]:
    """IPython's ``leading_indent`` transform: when a cell's first line is indented, that indent is
    taken off every line starting with it (an indented cell runs in Jupyter)."""
    first = next((l for l in lines if l.strip()), "")
    indent = first[:len(first) - len(first.lstrip())]
    if not indent:
        return lines
    return [l[len(indent):] if l.startswith(indent) else l for l in lines]


def rewrite_cell(source: str, cell: int, policy: MagicPolicy = "comment") -> tuple[str, list[Magic]]:
    """Rewrite the code of notebook cell ``cell`` (1-based, for messages) into plain Python.

    Returns the new source and every IPython-only line found; those with ``action ==
    "refused"`` could not be rewritten (the caller refuses the export)."""
    if policy not in POLICIES:
        raise ValueError(f"policy {policy!r}: use one of {POLICIES}")
    found: list[Magic] = []
    lines = _leading_indent(source.splitlines())
    if any(l.strip() for l in lines) and next(l for l in lines if l.strip()).lstrip().startswith("%%"):
        lines, code = _cell_magic(lines, cell, policy, found)
        if not code:
            return "\n".join(lines), found
    out: list[str] = []
    state: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if state is None and _is_ipython(line):
            start = i
            while lines[i].rstrip().endswith("\\") and i + 1 < len(lines):  # a continued magic
                i += 1
            parts = [l.rstrip().rstrip("\\").rstrip() for l in lines[start:i + 1]]
            logical = " ".join([parts[0], *(p.strip() for p in parts[1:])])
            out += _line(logical, cell, start + 1, policy, found)
        else:
            out.append(line)
            state = _string_state(line, state)
        i += 1
    return "\n".join(out), found
