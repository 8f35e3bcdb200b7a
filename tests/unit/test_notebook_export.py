"""`mlbuild notebook export`: notebooks as plain modules (mlbuild/notebook/export.py)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_raw_cell

from mlbuild.notebook import NotebookExportError, export_notebook
from mlbuild.notebook.export import MARKER
from tests.conftest import REPO, run_cli

CELLS = [
    new_markdown_cell("# Sums and squares\nA *small* notebook."),
    new_code_cell("from pathlib import Path\nPARAMS = {'n': 5}", metadata={"tags": ["parameters"]}),
    new_code_cell("%matplotlib inline\nimport math\nsquares = [i * i for i in range(PARAMS['n'])]"),
    new_markdown_cell("## Totals"),
    new_code_cell("%time total = sum(squares)\nroot = math.sqrt(total)\ntotal"),
    new_raw_cell("raw text, not code"),
    new_code_cell("def describe():\n    return f'{total} {root:.3f}'\n\nlabel = describe()"),
    new_code_cell(""),
]


def write_nb(path: Path, cells: list[Any], **meta: Any) -> Path:
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "language": "python",
                                                            "display_name": "Python 3"}, **meta})
    nbformat.write(nb, str(path))
    return path


def import_file(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cells(cells: list[Any]) -> dict[str, Any]:
    """The notebook's code run in one namespace, as a kernel would (harmless magics removed)."""
    ns: dict[str, Any] = {}
    for cell in cells:
        if cell.cell_type == "code":
            src = "\n".join(l for l in cell.source.splitlines() if not l.startswith("%matplotlib"))
            exec(compile(src.replace("%time ", ""), "<cell>", "exec"), ns)
    return ns


def test_round_trip_gives_the_notebooks_values(tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "sums.ipynb", CELLS)
    result = export_notebook(nb)
    assert result.output == tmp_path / "sums.py" and result.code_cells == 4 and result.markdown_cells == 2
    module = import_file(tmp_path / "sums.py")
    ns = run_cells(CELLS)
    for name in ("squares", "total", "root", "label"):
        assert getattr(module, name) == ns[name]
    assert module.__doc__ is not None and module.__doc__.startswith("Sums and squares (exported from the notebook sums.ipynb)")


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_the_module_gets_the_mode_open_would_give(tmp_path: Path, umask: int) -> None:
    nb = write_nb(tmp_path / "sums.ipynb", CELLS)
    old = os.umask(umask)
    try:
        export_notebook(nb)
    finally:
        os.umask(old)
    assert (tmp_path / "sums.py").stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sums.ipynb", "sums.py"]


def test_module_layout(tmp_path: Path) -> None:
    text = export_notebook(write_nb(tmp_path / "sums.ipynb", CELLS), to_stdout=True).source
    lines = text.splitlines()
    assert lines[0].startswith(MARKER) and "sums.ipynb" in lines[0]
    assert "# %% cell 1 [markdown]\n# # Sums and squares\n# A *small* notebook." in text
    assert "# %% cell 6 [raw]\n# raw text, not code" in text
    assert "# [mlbuild export] dropped IPython line magic: %matplotlib inline" in text
    assert text.index("# %% cell 3") < text.index("# %% cell 5") < text.index("# %% cell 7")
    assert "# %% cell 8" not in text  # empty cells are left out
    assert not (tmp_path / "sums.py").exists()


def test_injected_and_raising_cells(tmp_path: Path) -> None:
    cells = [new_code_cell("DATA = {'x': 1}", metadata={"tags": ["injected-by-mlbuild"]}),
             new_code_cell("1 / 0", metadata={"tags": ["raises-exception"]}),
             new_code_cell("ok = True")]
    out = tmp_path / "m.py"
    export_notebook(write_nb(tmp_path / "m.ipynb", cells), out)
    text = out.read_text()
    assert "DATA" not in text and "# 1 / 0" in text
    assert import_file(out).ok is True


def test_refused_magics_are_listed(tmp_path: Path) -> None:
    cells = [new_code_cell("files = !ls\n!pip install x"), new_code_cell("%cd /tmp")]
    nb = write_nb(tmp_path / "shell.ipynb", cells)
    with pytest.raises(NotebookExportError) as e:
        export_notebook(nb, policy="error")
    msg = str(e.value)
    assert "3 IPython line(s)" in msg and "cell 1, line 1: files = !ls" in msg and "cell 2, line 1: %cd /tmp" in msg
    assert "rewrite them in Python" in msg and "--on-magic comment" not in msg  # `files = !ls` is never droppable
    with pytest.raises(NotebookExportError, match="1 IPython line"):
        export_notebook(nb)  # with comments, only the used value is refused
    assert not (tmp_path / "shell.py").exists()


def test_a_capture_variable_a_later_cell_reads_is_refused(tmp_path: Path) -> None:
    """`%%capture out` keeps its body, but `out` is never bound: a later `out.show()` failed at
    import with a bare NameError."""
    used = write_nb(tmp_path / "cap.ipynb", [new_code_cell("%%capture out\nprint('c')\nx = 1"),
                                             new_markdown_cell("then"), new_code_cell("out.show()\ny = x")])
    with pytest.raises(NotebookExportError) as e:
        export_notebook(used)
    assert "cell 1, line 1: %%capture out (cell 3 uses out)  (cell magic, its value is used)" in str(e.value)
    assert "contextlib.redirect_stdout into an io.StringIO" in str(e.value)
    unused = write_nb(tmp_path / "cap2.ipynb", [new_code_cell("%%capture output\nx = 1"), new_code_cell("y = x + 1")])
    assert import_file(export_notebook(unused).output).y == 2   # type: ignore[arg-type]
    # the word in a comment or a string, or the name bound again before any read: no use of it
    rebound = write_nb(tmp_path / "cap3.ipynb", [
        new_code_cell("%%capture out\nx = 1"), new_code_cell("# out is noise\ns = 'out'"),
        new_code_cell("out = 3\nz = out + x"), new_code_cell("w = out * 2")])
    assert import_file(export_notebook(rebound).output).w == 6   # type: ignore[arg-type]
    late = write_nb(tmp_path / "cap4.ipynb", [new_code_cell("%%capture out\nx = 1"), new_code_cell("out = out + 1")])
    with pytest.raises(NotebookExportError, match=r"%%capture out \(cell 2 uses out\)"):
        export_notebook(late)


def test_syntax_error_and_top_level_await_name_the_cell(tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "bad.ipynb", [new_code_cell("x = 1"), new_code_cell("def f(:\n  pass")])
    with pytest.raises(NotebookExportError, match="cell 2 is not valid Python"):
        export_notebook(nb)
    nb = write_nb(tmp_path / "aw.ipynb", [new_code_cell("import asyncio\nawait asyncio.sleep(0)")])
    with pytest.raises(NotebookExportError, match="cell 1 uses top-level `await`.*asyncio.run"):
        export_notebook(nb)


def test_not_a_notebook(tmp_path: Path) -> None:
    (tmp_path / "x.ipynb").write_text("not json")
    with pytest.raises(NotebookExportError, match="not a Jupyter notebook"):
        export_notebook(tmp_path / "x.ipynb")
    (tmp_path / "y.ipynb").write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "cells": "no", "metadata": {}}))
    with pytest.raises(NotebookExportError, match="y.ipynb"):
        export_notebook(tmp_path / "y.ipynb")
    with pytest.raises(NotebookExportError, match="does not exist"):
        export_notebook(tmp_path / "missing.ipynb")
    r = write_nb(tmp_path / "r.ipynb", [new_code_cell("x <- 1")],
                 kernelspec={"name": "ir", "language": "R", "display_name": "R"})
    with pytest.raises(NotebookExportError, match="R notebook"):
        export_notebook(r)


def test_a_notebook_against_the_schema_is_refused(tmp_path: Path) -> None:
    """nbformat.read only logs a schema violation: a cell of an unknown type was exported as code,
    and JSON of another shape (a list, a kernelspec string) ended in a traceback."""
    cell = {"cell_type": "code", "id": "a", "metadata": {}, "source": "x = 1", "outputs": [], "execution_count": None}
    cases = {
        "weird": ({"cells": [{**cell, "cell_type": "weird"}]}, "(at cells/0)"),
        "tags": ({"cells": [{**cell, "metadata": {"tags": "raises-exception"}}]},
                 "'raises-exception' is not of type 'array' (at cells/0/metadata/tags)"),
        "kernel": ({"cells": [cell], "metadata": {"kernelspec": "python3"}},
                   "'python3' is not of type 'object' (at metadata/kernelspec)"),
        "list": ([1, 2], "(AttributeError: "),
        "ints": ({"cells": [5]}, "(TypeError: "),
    }
    for name, (content, said) in cases.items():
        if isinstance(content, dict):
            content = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, **content}
        (tmp_path / f"{name}.ipynb").write_text(json.dumps(content))
        with pytest.raises(NotebookExportError) as e:
            export_notebook(tmp_path / f"{name}.ipynb")
        assert f"{name}.ipynb does not follow the notebook format" in str(e.value) and said in str(e.value), name
        assert not (tmp_path / f"{name}.py").exists()


def test_hand_written_module_is_not_overwritten(tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "sums.ipynb", CELLS)
    (tmp_path / "sums.py").write_text("# my own code\n")
    with pytest.raises(NotebookExportError, match="not written by `mlbuild notebook export`.*--force"):
        export_notebook(nb)
    assert (tmp_path / "sums.py").read_text() == "# my own code\n"
    export_notebook(nb, force=True)
    export_notebook(nb)  # an earlier export may be replaced
    assert (tmp_path / "sums.py").read_text().startswith(MARKER)


def test_an_edited_export_is_not_overwritten(tmp_path: Path) -> None:
    """A module grows into code: edits to an exported module were lost without a word when the
    notebook was exported again."""
    nb = write_nb(tmp_path / "sums.ipynb", CELLS)
    export_notebook(nb)
    exported = (tmp_path / "sums.py").read_text()
    export_notebook(nb)   # unchanged since: replaced
    (tmp_path / "sums.py").write_text(exported + "\ndef mine():\n    return 1\n")
    with pytest.raises(NotebookExportError, match="sums.py exists and was edited after `mlbuild notebook export` "
                                                  "wrote it.*-o, or pass --force"):
        export_notebook(nb)
    assert (tmp_path / "sums.py").read_text().endswith("def mine():\n    return 1\n")
    export_notebook(nb, force=True)
    assert (tmp_path / "sums.py").read_text() == exported


def test_an_export_checked_out_with_crlf_line_endings_is_not_taken_for_edited(tmp_path: Path) -> None:
    # git with core.autocrlf=true writes the committed module with CRLF: it was refused as edited
    nb = write_nb(tmp_path / "sums.ipynb", CELLS)
    export_notebook(nb)
    exported = (tmp_path / "sums.py").read_bytes()
    (tmp_path / "sums.py").write_bytes(exported.replace(b"\n", b"\r\n"))
    export_notebook(nb)
    assert (tmp_path / "sums.py").read_bytes() == exported


def test_cli_export(tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "sums.ipynb", CELLS)
    out = run_cli("notebook", "export", str(nb), "-o", str(tmp_path / "mod.py")).stdout
    assert "-> " in out and "4 code cells, 2 markdown cells" in out and "(line magic, kept statement)" in out
    assert import_file(tmp_path / "mod.py").total == 30
    assert run_cli("notebook", "export", str(nb), "-o", "-").stdout.startswith(MARKER)
    bad = write_nb(tmp_path / "bad.ipynb", [new_code_cell("!ls")])
    proc = run_cli("notebook", "export", str(bad), "--on-magic", "error", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("Error: bad.ipynb: 1 IPython line")
    assert "Traceback" not in proc.stderr


def test_a_pipe_or_device_as_output_is_written_to_not_replaced(tmp_path: Path) -> None:
    """`-o /dev/stdout` (a pipe) waited forever reading its own stdout for the export marker, and with
    --force died in a traceback making a temp file in /proc/PID/fd; `-o /dev/null --force` as root
    renamed a regular file over the device (the machine's /dev/null became a file)."""
    import subprocess
    import threading

    from tests.conftest import MLBUILD

    nb = write_nb(tmp_path / "sums.ipynb", CELLS)
    proc = subprocess.run([*MLBUILD, "notebook", "export", str(nb), "-o", "/dev/stdout"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith(MARKER), proc.stderr
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for force in (False, True):   # a device (/dev/null) is the same case; making one needs root
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
        reader.start()
        export_notebook(nb, fifo, force=force)
        reader.join(30)
        assert fifo.is_fifo() and got and got[0].decode().startswith(MARKER)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "sums.ipynb"]


def test_example_notebook_exports(tmp_path: Path) -> None:
    result = export_notebook(REPO / "examples" / "digits" / "explore.ipynb", tmp_path / "explore.py")
    assert result.code_cells >= 5 and not [m for m in result.magics if m.action == "refused"]
    compile((tmp_path / "explore.py").read_text(), "explore.py", "exec")


def test_an_empty_output_is_refused_not_a_traceback(tmp_path: Path) -> None:
    """`notebook export nb.ipynb -o "$OUT"` with OUT unset: `-o ""` is the current folder, which
    export opened as its earlier module (IsADirectoryError traceback)."""
    nb = write_nb(tmp_path / "sums.ipynb", CELLS)
    proc = run_cli("notebook", "export", str(nb), "-o", "", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "Error: the output '.' is a folder; pass -o MODULE.py (a file in it)" in proc.stderr
    with pytest.raises(NotebookExportError, match="is a folder; pass -o MODULE.py"):
        export_notebook(nb, tmp_path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sums.ipynb"]
