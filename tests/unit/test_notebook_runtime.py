"""The notebook builder's pure parts (mlbuild/runtime/notebook.py): input injection, output
normalization, the failure message. Real runs are in tests/integration/test_notebook.py."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from mlbuild.runtime.notebook import (INJECTED_TAG, _read, format_failure, inject_inputs, kernel_spec,
                                      missing_program, module_hint, normalize)


def test_inputs_go_after_the_parameters_cell() -> None:
    nb = new_notebook(cells=[new_markdown_cell("# t"), new_code_cell("PARAMS = {'a': 1, 'b': 2}",
                             metadata={"tags": ["parameters"]}), new_code_cell("x = 1")])
    where = inject_inputs(nb, {"raw": "/nix/store/abc-raw"}, {"b": 3}, "/nix/store/def-out/outputs")
    assert where == 2 and nb.cells[2].metadata.tags == [INJECTED_TAG] and nb.cells[2].id == "mlbuild-inputs"
    ns: dict[str, object] = {}
    for c in nb.cells[1:3]:
        exec(c.source, ns)
    assert ns["DATA"] == {"raw": Path("/nix/store/abc-raw")}
    assert ns["PARAMS"] == {"a": 1, "b": 3}  # the notebook's defaults, overridden key by key
    assert ns["OUTPUTS"] == Path("/nix/store/def-out/outputs")
    nbformat.validate(nb)


def test_inputs_go_first_without_a_parameters_cell() -> None:
    nb = new_notebook(cells=[new_code_cell("x = 1")])
    assert inject_inputs(nb, {}, {}, "/o") == 0
    ns: dict[str, object] = {}
    exec(nb.cells[0].source, ns)
    assert ns["PARAMS"] == {} and ns["DATA"] == {}


def test_cells_without_ids_get_fixed_ones(tmp_path: Path) -> None:
    raw = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
           "cells": [{"cell_type": "code", "source": "x", "metadata": {}, "outputs": [], "execution_count": None}]}
    (tmp_path / "n.ipynb").write_text(json.dumps(raw))
    assert _read(tmp_path / "n.ipynb").cells[0].id == "cell-0"  # not random: the stored bytes repeat


def test_normalize_merges_streams_and_drops_timing() -> None:
    cell = new_code_cell("print(1); print(2)", metadata={"execution": {"iopub.status.busy": "2026-01-01T00:00:00Z"}})
    cell.outputs = [new_output("stream", name="stdout", text="1\n"), new_output("stream", name="stdout", text="2\n"),
                    new_output("stream", name="stderr", text="w\n"), new_output("stream", name="stdout", text="3\n")]
    nb = normalize(new_notebook(cells=[cell]))
    # how stdout and stderr interleave depends on the kernel's flush timer: one of each, stdout first
    assert [(o.name, o.text) for o in nb.cells[0].outputs] == [("stdout", "1\n2\n3\n"), ("stderr", "w\n")]
    assert "execution" not in nb.cells[0].metadata


def test_normalize_gives_one_notebook_for_any_split_of_the_streams() -> None:
    """A cell printing to stdout and stderr in turn over a few seconds is split by the kernel's
    flush timer, differently on every run (`nix-build --check` failed); a display between
    streams stays where it is (the kernel flushes both streams before it)."""
    def run(*splits: tuple[str, str]) -> list[tuple[str, str]]:
        cell = new_code_cell("...")
        cell.outputs = [new_output("stream", name=n, text=t) for n, t in splits]
        cell.outputs.insert(2, new_output("display_data", data={"text/plain": "plot"}))
        cell.outputs += [new_output("stream", name="stdout", text="z\n")]
        outputs = normalize(new_notebook(cells=[cell])).cells[0].outputs
        return [(o.get("name", o.output_type), o.get("text", "")) for o in outputs]

    one = run(("stderr", "e0\n"), ("stdout", "o0\n"), ("stdout", "o1\n"), ("stderr", "e1\n"), ("stdout", "o2\n"))
    other = run(("stdout", "o0\n"), ("stderr", "e0\n"), ("stdout", "o1\n"), ("stdout", "o2\n"), ("stderr", "e1\n"))
    assert one == other == [("stdout", "o0\n"), ("stderr", "e0\n"), ("display_data", ""),
                            ("stdout", "o1\no2\nz\n"), ("stderr", "e1\n")]


def test_normalize_numbers_the_random_ids_of_widgets() -> None:
    """ipywidgets names each widget by a uuid4, in its output, the stored widget state and the
    references between widgets: a notebook showing a slider gave other bytes on every run."""
    def run(slider: str, layout: str) -> str:
        cell = new_code_cell("w.IntSlider(value=3)", id="c1")
        cell.outputs = [new_output("execute_result", execution_count=1, data={
            "application/vnd.jupyter.widget-view+json": {"model_id": slider, "version_major": 2, "version_minor": 0},
            "text/plain": "IntSlider(value=3)"})]
        nb = new_notebook(cells=[cell])
        nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"version_major": 2, "version_minor": 0,
            "state": {layout: {"model_name": "LayoutModel", "state": {}},
                      slider: {"model_name": "IntSliderModel", "state": {"layout": f"IPY_MODEL_{layout}", "value": 3}}}}}
        normalize(nb)
        nbformat.validate(nb)
        return nbformat.writes(nb)

    one = run("385935404521477b8aa9896bc61d7fd3", "9e107d9d372bb6826bd81d3542a419d6")
    assert one == run("11389221e94b4965a4eb244af002f8a8", "e4d909c290d0fb1ca068ffaddf22cbd0")
    stored = json.loads(one)
    state = stored["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    slider = stored["cells"][0]["outputs"][0]["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert list(state) == [f"{1:032x}", slider] and state[slider]["state"]["layout"] == f"IPY_MODEL_{1:032x}"


def test_failure_shows_cell_output_and_traceback() -> None:
    cell = new_code_cell("def f(v):\n    return 1 / v\nprint('before')\nf(0)")
    cell.execution_count = 4
    cell.outputs = [new_output("stream", name="stdout", text="before\n"),
                    new_output("error", ename="ZeroDivisionError", evalue="division by zero",
                               traceback=["\x1b[0;31m-----\x1b[0m", "\x1b[0;31mZeroDivisionError\x1b[0m  Traceback",
                                          "Cell \x1b[0;32mIn[4], line 4\x1b[0m", "ZeroDivisionError: division by zero"])]
    text = format_failure("explore.ipynb", 3, cell, "CellExecutionError")
    lines = text.splitlines()
    assert lines[0] == "mlbuild: notebook explore.ipynb failed at cell 3 (In [4]); its source:"
    assert "    2 |     return 1 / v" in lines and "it printed:" in lines and "  before" in lines
    assert lines[-1] == "  ZeroDivisionError: division by zero" and "\x1b" not in text
    assert "Cell In[4], line 4" in text


def test_failure_message_fits_the_log_tail() -> None:
    cell = new_code_cell("\n".join(f"x{i} = {i}" for i in range(50)))
    cell.outputs = [new_output("stream", name="stdout", text="".join(f"line {i}\n" for i in range(50))),
                    new_output("error", ename="E", evalue="v", traceback=[f"frame {i}" for i in range(60)])]
    lines = format_failure("n.ipynb", 1, cell, "").splitlines()
    assert len(lines) <= 30 and lines[-1] == "  frame 59" and "line 49" in lines[-15]
    assert any("more lines" in l for l in lines)


def test_failure_without_an_error_output_uses_the_exception() -> None:
    text = format_failure("n.ipynb", 2, new_code_cell("while True: pass"), "CellTimeoutError: cell timed out after 5 s")
    assert text.endswith("  CellTimeoutError: cell timed out after 5 s")


def test_kernel_runs_this_interpreter_without_history() -> None:
    spec = kernel_spec("/nix/store/x-toolchain/bin/python")
    assert spec["argv"][:4] == ["/nix/store/x-toolchain/bin/python", "-s", "-m", "ipykernel_launcher"]
    assert "--HistoryManager.enabled=False" in spec["argv"] and spec["language"] == "python"


def test_a_script_magic_whose_program_is_missing_is_named() -> None:
    """IPython only prints "Couldn't find program" for `%%bash` without bash, and the cell passes."""
    cell = new_code_cell("\n%%bash\necho hi")
    cell.outputs = [new_output("stream", name="stdout", text="Couldn't find program: 'bash'\n")]
    why = missing_program(cell)
    assert why is not None and why.startswith("%%bash did not run: the program 'bash' is not on the build's PATH")
    printed = new_code_cell("print(\"Couldn't find program: 'bash'\")")   # not a cell magic: its own output
    printed.outputs = cell.outputs
    ran = new_code_cell("%%bash\necho hi")
    ran.outputs = [new_output("stream", name="stdout", text="hi\n")]
    assert missing_program(printed) is None and missing_program(ran) is None


@pytest.mark.parametrize("content", [b"not json", b'{"nbformat": 4, "cells": [{"source": "s = \'\xe9\'"}]}', b"[1, 2]",
                                     b'{"nbformat": 4, "nbformat_minor": 5, "cells": [5]}'])
def test_a_file_that_is_not_a_notebook_is_named(tmp_path: Path, content: bytes) -> None:
    """The builder showed a JSONDecodeError (or UnicodeDecodeError...) traceback, under "fix the cell shown"."""
    (tmp_path / "n.ipynb").write_bytes(content)
    with pytest.raises(SystemExit) as e:
        _read(tmp_path / "n.ipynb", "nb/n.ipynb")
    assert str(e.value).startswith("mlbuild: nb/n.ipynb is not a Jupyter notebook (")
    assert str(e.value).endswith("open it in Jupyter and save it again, then commit it")


def test_a_missing_module_gets_the_fix() -> None:
    """`import helpers` of a project module not in [notebooks.NAME].code: a bare ModuleNotFoundError,
    where the other stages say where to list it."""
    hint = module_hint("ModuleNotFoundError", "No module named 'helpers'", "explore")
    assert hint is not None and "(helpers.py or helpers/), list it in [notebooks.explore].code in mlbuild.toml" in hint
    assert "add 'scikit-learn' to [python].requirements" in str(module_hint("ModuleNotFoundError",
                                                                            "No module named 'sklearn'", "explore"))
    assert module_hint("ModuleNotFoundError", "No module named 'json.nope'", "explore") is None   # a submodule
    assert module_hint("ValueError", "No module named 'helpers'", "explore") is None


def test_a_script_magic_that_ran_and_printed_the_words_is_not_failed() -> None:
    # a %%python3 cell (its program is on the build's PATH) reporting a missing tool of its own
    # later in its output failed the run as if IPython had not run it
    ran = new_code_cell("%%python3\nimport shutil\nprint('plotting')\nprint(\"Couldn't find program: 'dot'\")")
    ran.outputs = [new_output("stream", name="stdout", text="plotting\n"),
                   new_output("stream", name="stdout", text="Couldn't find program: 'dot'\n")]
    assert missing_program(ran) is None
    timed = new_code_cell("%%time\n%%bash\necho hi")   # what IPython prints comes first, then the timing
    timed.outputs = [new_output("stream", name="stdout", text="Couldn't find program: 'bash'\nCPU times: 1 ms\n")]
    assert (missing_program(timed) or "").startswith("%%time did not run: the program 'bash' is not on")


def test_params_of_inf_and_nan_are_python_the_notebook_runs() -> None:
    """[notebooks.NAME.params] limit = inf reaches the spec exactly (lib.specJSON); the injected cell
    wrote it as the bare name inf, a NameError in the notebook's first cell."""
    import math

    nb = new_notebook(cells=[new_code_cell("x = 1")])
    inject_inputs(nb, {}, {"limit": math.inf, "t": {"lo": -math.inf, "l": [math.nan, 0.1]}, "n": 2}, "/o")
    ns: dict[str, object] = {}
    exec(nb.cells[0].source, ns)
    params = ns["PARAMS"]
    assert isinstance(params, dict) and params["limit"] == math.inf and params["n"] == 2, params
    assert params["t"]["lo"] == -math.inf and math.isnan(params["t"]["l"][0]) and params["t"]["l"][1] == 0.1


def test_normalize_drops_the_build_folder_and_the_kernels_pid() -> None:
    tmp = "/tmp/nix-build-x-notebook.drv-0"
    nb = new_notebook(cells=[new_code_cell("import helpers", outputs=[
        new_output("stream", name="stderr", text=f"{tmp}/ipykernel_4242/123.py:2: UserWarning: a\n"
                                                 f"{tmp}/work/helpers.py:3: UserWarning: b\n"),
        new_output("error", ename="E", evalue=f"in {tmp}/work", traceback=[f"File {tmp}/ipykernel_7/123.py:1"])])])
    normalize(nb, tmp)
    stream, error = nb.cells[0].outputs
    assert stream.text == "ipykernel/123.py:2: UserWarning: a\nwork/helpers.py:3: UserWarning: b\n"
    assert error.evalue == "in work" and error.traceback == ["File ipykernel/123.py:1"]
    nbformat.validate(nb)
