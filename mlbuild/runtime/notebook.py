"""Builder of a notebook run: execute a project notebook top to bottom, headless, in the toolchain.

The spec (from ``nix/notebook.nix``) names the notebook (``path``, relative to ``code``, the store
path holding the project files the notebook uses), its ``datasets`` (name -> store path),
``params`` and a per-cell ``timeout``. The run:

- copies ``code`` into a writable work folder (the kernel's working directory), so relative paths
  and ``import`` of project modules behave as in Jupyter;
- injects one code cell, tagged ``injected-by-mlbuild``, after the cell tagged ``parameters``
  (or first, when there is none)::

      DATA = {"digits-raw": Path("/nix/store/...-digits-raw")}   # the datasets, by name
      PARAMS = {**PARAMS, ...}     # the notebook's defaults, then [notebooks.NAME.params]
      OUTPUTS = Path("/nix/store/...-explore-notebook/outputs")  # files the notebook keeps

  The same values are in the environment as ``MLBUILD_DATA`` / ``MLBUILD_PARAMS`` (JSON) and
  ``MLBUILD_OUTPUTS``;
- runs it with nbclient and a ``python3`` kernel spec written for the run: the toolchain's own
  interpreter (``sys.executable``) running ipykernel, over ZeroMQ ``ipc`` sockets in the build's
  temporary folder (no TCP port, no network; in a folder of their own in /tmp where that path is
  too long for a socket), with ``HOME``, ``IPYTHONDIR`` and the Jupyter
  folders there too (nothing is written to a home folder);
- stores ``$out/<notebook>.ipynb`` (executed, with outputs), ``$out/outputs/`` and
  ``$out/summary.json``. Timing metadata is not recorded and consecutive stream outputs are
  merged (stdout, then stderr: how the kernel split and interleaved them depends on timing), and
  widgets' random ids are numbered, so an unchanged notebook gives the same bytes (``nix-build --check``).

A cell that raises fails the build; the last lines of the log show the cell's source and its
traceback (ANSI colours removed).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import sys
import time
from pathlib import Path
from typing import Any

from .prepare import missing_module_hint
from .stagespec import load_spec

__all__ = ["main", "run", "inject_inputs", "normalize", "format_failure", "kernel_spec", "missing_program",
           "module_hint", "INJECTED_TAG"]

INJECTED_TAG = "injected-by-mlbuild"
EVENT_PREFIX = "MLBUILD "
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
SOURCE_LINES = 10     # at most this many lines of the failing cell in the log,
OUTPUT_LINES = 4      # of what it printed (the last ones),
TRACEBACK_LINES = 13  # and of its traceback (the last ones): 30 lines in all


def kernel_spec(python: str) -> dict[str, Any]:
    """The ``python3`` kernel spec of a run: this interpreter, no user site, no history file."""
    return {
        "argv": [python, "-s", "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--HistoryManager.enabled=False"],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "metadata": {"debugger": False},
    }


def _environment(tmp: Path, spec: dict[str, Any], outputs: Path) -> None:
    """Point every per-user folder at the build's temporary folder and publish the inputs."""
    dirs = {"HOME": "home", "IPYTHONDIR": "ipython", "JUPYTER_CONFIG_DIR": "jupyter-config",
            "JUPYTER_DATA_DIR": "jupyter-data", "JUPYTER_RUNTIME_DIR": "jupyter-runtime",
            "JUPYTER_PATH": "jupyter-path", "MPLCONFIGDIR": "matplotlib", "XDG_CACHE_HOME": "cache"}
    for var, sub in dirs.items():
        (tmp / sub).mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(tmp / sub)
    kernels = tmp / "jupyter-path" / "kernels" / "python3"
    kernels.mkdir(parents=True, exist_ok=True)
    (kernels / "kernel.json").write_text(json.dumps(kernel_spec(sys.executable), indent=1))
    os.environ.update({
        "JUPYTER_PLATFORM_DIRS": "1", "JUPYTER_ALLOW_INSECURE_WRITES": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1", "MPLBACKEND": "Agg", "PYTHONNOUSERSITE": "1",
        "MLBUILD_DATA": json.dumps(spec["datasets"], sort_keys=True),
        "MLBUILD_PARAMS": json.dumps(spec.get("params", {}), sort_keys=True),
        "MLBUILD_OUTPUTS": str(outputs),
    })


def _copy_code(code: Path, work: Path) -> None:
    """A writable copy of the project files (store files are read-only)."""
    shutil.copytree(code, work, symlinks=True)
    for root, dirnames, filenames in os.walk(work):
        for name in [*dirnames, *filenames]:
            p = Path(root) / name
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | stat.S_IWUSR)
    work.chmod(work.stat().st_mode | stat.S_IWUSR)


def _read(path: Path, name: str | None = None) -> Any:
    """Read a notebook as nbformat 4, giving cells without an id a fixed one (not a random one).
    A file that is not a notebook exits with a message naming it (``name``: as the project
    names it)."""
    import nbformat

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("nbformat") == 4 and raw.get("nbformat_minor", 0) >= 5:
            for i, cell in enumerate(raw.get("cells", [])):
                cell.setdefault("id", f"cell-{i}")
        return nbformat.reads(json.dumps(raw), as_version=4)  # type: ignore[no-untyped-call]
    except (ValueError, AttributeError, TypeError, KeyError) as e:   # not JSON, not UTF-8, not a notebook
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise SystemExit(f"mlbuild: {name or path.name} is not a Jupyter notebook ({why}); open it in Jupyter "
                         "and save it again, then commit it") from None


def _literal(value: Any) -> str:
    """``value`` as Python source: repr, but a float inf or nan (TOML's ``inf``, which reaches the
    spec exactly) as ``float('inf')``, since the bare name is a NameError in the notebook."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def inject_inputs(nb: Any, datasets: dict[str, str], params: dict[str, Any], outputs: str) -> int:
    """Insert the ``DATA``/``PARAMS``/``OUTPUTS`` cell; returns its index."""
    import nbformat

    lines = ["# Injected by mlbuild: the notebook's inputs (see [notebooks.NAME] in mlbuild.toml).",
             "from pathlib import Path",
             "DATA = {" + ", ".join(f"{k!r}: Path({v!r})" for k, v in sorted(datasets.items())) + "}",
             "# [notebooks.NAME.params] over the notebook's own PARAMS (its defaults), key by key",
             f"PARAMS = {{**globals().get('PARAMS', {{}}), **{_literal(params)}}}",
             f"OUTPUTS = Path({outputs!r})"]
    cell = nbformat.v4.new_code_cell(  # type: ignore[no-untyped-call]
        "\n".join(lines), metadata={"tags": [INJECTED_TAG]})
    if nb.get("nbformat_minor", 0) >= 5:
        cell["id"] = "mlbuild-inputs"
    else:
        cell.pop("id", None)
    where = 0
    for i, c in enumerate(nb.cells):
        if "parameters" in c.get("metadata", {}).get("tags", []):
            where = i + 1
            break
    nb.cells.insert(where, cell)
    return where


def _merge_streams(run: list[Any]) -> list[Any]:
    """One output per stream name (stdout, then stderr) for consecutive stream outputs."""
    by_name: dict[str, Any] = {}
    for out in run:
        if out.get("name") in by_name:
            by_name[out["name"]]["text"] += out["text"]
        else:
            by_name[out.get("name")] = out
    return [by_name[n] for n in sorted(by_name, key=lambda n: (n != "stdout", n != "stderr", str(n)))]


def normalize(nb: Any, tmp: str | None = None) -> Any:
    """Drop what differs between two runs of the same notebook: timing metadata, and the way
    stdout/stderr happened to be split into messages. The kernel sends each stream's buffer on a
    timer, so how a cell's stdout and stderr interleave depends on timing: consecutive stream
    outputs become one stdout then one stderr output (a display or result between them is kept in
    place, as the kernel flushes both streams before it). With ``tmp`` (the build's folder), the
    paths under it in the outputs are made relative to it, and the kernel's file of a cell,
    ``TMP/ipykernel_PID/N.py`` (a warning names it), becomes ``ipykernel/N.py``: the folder
    differs from machine to machine and the pid from run to run."""
    if tmp is not None:
        _unpin_paths(nb, tmp)
    for cell in nb.cells:
        cell.get("metadata", {}).pop("execution", None)
        if cell.get("cell_type") != "code":
            continue
        merged: list[Any] = []
        run: list[Any] = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                run.append(out)
                continue
            merged += _merge_streams(run) + [out]
            run = []
        cell["outputs"] = merged + _merge_streams(run)
    nb.metadata.pop("papermill", None)
    _number_widgets(nb)
    return nb


def _unpin_paths(nb: Any, tmp: str) -> None:
    pattern = re.compile(re.escape(tmp.rstrip("/")) + r"/(ipykernel_\d+/)?")

    def swap(v: Any) -> Any:
        if isinstance(v, str):
            return pattern.sub(lambda m: "ipykernel/" if m.group(1) else "", v)
        if isinstance(v, list):
            return [swap(x) for x in v]
        if isinstance(v, dict):
            return type(v)({k: swap(x) for k, x in v.items()})
        return v

    for cell in nb.cells:
        if cell.get("outputs"):
            cell["outputs"] = swap(cell["outputs"])


_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _number_widgets(nb: Any) -> None:
    """ipywidgets names each widget by a random uuid4 (its comm id), in the outputs that show it,
    in the widget state nbclient stores (``metadata.widgets``) and in the references between
    widgets (``IPY_MODEL_<id>``): a notebook showing a slider gave other bytes on every run. They
    are numbered instead, in the order the kernel made them (the state's order), then as shown."""
    import nbformat

    state = nb.metadata.get("widgets", {}).get(_WIDGET_STATE, {}).get("state", {})
    ids = [str(k) for k in state] if isinstance(state, dict) else []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(_WIDGET_VIEW) if isinstance(out.get("data"), dict) else None
            if isinstance(view, dict) and isinstance(view.get("model_id"), str) and view["model_id"] not in ids:
                ids.append(view["model_id"])
    if not ids:
        return
    names = {old: f"{n:032x}" for n, old in enumerate(ids, 1)}
    pattern = re.compile("|".join(re.escape(i) for i in sorted(ids, key=len, reverse=True)))

    def swap(v: Any) -> Any:
        if isinstance(v, str):
            return pattern.sub(lambda m: names[m.group()], v)
        if isinstance(v, list):
            return [swap(x) for x in v]
        return {swap(k): swap(x) for k, x in v.items()} if isinstance(v, dict) else v

    if "widgets" in nb.metadata:
        nb.metadata["widgets"] = nbformat.from_dict(swap(nb.metadata["widgets"]))  # type: ignore[no-untyped-call]
    for cell in nb.cells:
        if cell.get("outputs"):
            cell["outputs"] = nbformat.from_dict(swap(cell["outputs"]))  # type: ignore[no-untyped-call]


def _clip(lines: list[str], keep: int, head: bool) -> list[str]:
    if len(lines) <= keep:
        return lines
    more = f"    ... ({len(lines) - keep + 1} more lines)"
    return [*lines[:keep - 1], more] if head else [more, *lines[-(keep - 1):]]


def format_failure(notebook: str, number: int, cell: Any, error: str) -> str:
    """The message a failed run ends its log with (at most 30 lines, what ``mlbuild build``
    shows): which cell (``number``: 1-based, in the notebook's own file), its source, the end of
    what it printed, and its traceback."""
    tb: list[str] = []
    printed: list[str] = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            tb = [l for t in out.get("traceback", []) for l in _ANSI.sub("", t).splitlines()]
        elif out.get("output_type") == "stream":
            printed += _ANSI.sub("", str(out.get("text", ""))).splitlines()
    if not tb:
        tb = _ANSI.sub("", error).splitlines()
    tb = [l.rstrip() for l in tb if l.strip() and l.strip("- ")]
    count = cell.get("execution_count")
    label = f"cell {number}" + (f" (In [{count}])" if count else "")
    source = [f"  {n:>3} | {l}" for n, l in enumerate(str(cell.get("source", "")).splitlines(), 1)]
    lines = [f"mlbuild: notebook {notebook} failed at {label}; its source:", *_clip(source, SOURCE_LINES, head=True)]
    if printed:
        lines += ["it printed:", *("  " + l for l in _clip(printed, OUTPUT_LINES, head=False))]
    return "\n".join([*lines, "traceback:", *("  " + l for l in _clip(tb, TRACEBACK_LINES, head=False))])


# What IPython prints first, and only, for a script magic whose program is missing (a program
# that ran may print these words later in its own output: that is no failure).
_NOT_FOUND = re.compile(r"\ACouldn't find program: (.+)$", re.MULTILINE)


class _CellFailed(Exception):
    """A cell that IPython let pass although it did not run (the message says why)."""


def missing_program(cell: Any) -> str | None:
    """Why a script cell magic (``%%bash``, ``%%sh``, ``%%script PROG``...) did not run, or None.

    IPython only prints "Couldn't find program" when the program is not on PATH, and the cell
    passes; in a build ``PATH`` holds only the toolchain, so such a cell never runs."""
    lines = [l for l in str(cell.get("source", "")).splitlines() if l.strip()]
    if cell.get("cell_type") != "code" or not lines or not lines[0].lstrip().startswith("%%"):
        return None
    first = next((o for o in cell.get("outputs", []) if o.get("output_type") == "stream"), None)
    if first is not None and first.get("name") == "stdout":
        m = _NOT_FOUND.search(str(first.get("text", "")))
        if m:
            return (f"{lines[0].strip()} did not run: the program {m[1]} is not on the build's PATH, which holds "
                    "only the toolchain (IPython printed \"Couldn't find program\" and went on); do that work "
                    "in Python in the cell instead")
    return None


def module_hint(ename: str, evalue: str, notebook: str) -> str | None:
    """What to do when a cell failed with ``ModuleNotFoundError``: a project module the kernel's
    folder lacks (only ``[notebooks.NAME].code`` is copied there), or a distribution the lock lacks."""
    missing = re.fullmatch(r"No module named '([^']+)'", evalue)
    if ename != "ModuleNotFoundError" or not missing:
        return None
    return missing_module_hint(ModuleNotFoundError(evalue, name=missing[1]), f"[notebooks.{notebook}].code")


def _event(**fields: Any) -> None:
    print(EVENT_PREFIX + json.dumps(fields, sort_keys=True), flush=True)


#: The longest path of a unix socket (``sun_path``: 108 bytes with its NUL), less the ``-N``
#: suffix jupyter_client adds to the prefix for each channel.
_SOCKET_PREFIX_MAX = 107 - 8


def _socket_prefix(tmp: Path) -> tuple[str, Path | None]:
    """The kernel's socket path prefix: in the build folder, or (when that path is too long for a
    socket: a long notebook name or TMPDIR) in a folder of its own in /tmp, which the caller
    removes (the second value). The prefix is not in the outputs."""
    prefix = str(tmp / "kernel")
    if len(os.fsencode(prefix)) <= _SOCKET_PREFIX_MAX:
        return prefix, None
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="mlbuild-kernel-", dir="/tmp"))
    return str(short / "kernel"), short


def run(spec: dict[str, Any], out: Path, tmp: Path) -> Path:
    """Execute the spec's notebook; write the outputs under ``out``; return the stored notebook.
    Exits the process (status 1) with :func:`format_failure`'s message when a cell fails."""
    from nbclient import NotebookClient  # type: ignore[import-not-found,unused-ignore]
    from nbclient.exceptions import (  # type: ignore[import-not-found,unused-ignore]
        CellControlSignal, CellTimeoutError, DeadKernelError)
    from traitlets.config import Config
    import nbformat

    name, rel = spec["notebook"], spec["path"]
    work = tmp / "work"
    _copy_code(Path(spec["code"]), work)
    out.mkdir()
    outputs = out / "outputs"
    outputs.mkdir()
    _environment(tmp, spec, outputs)
    nb = _read(work / rel, rel)
    injected = inject_inputs(nb, spec["datasets"], spec.get("params", {}), str(outputs))
    config = Config()
    config.KernelManager.transport = "ipc"         # unix sockets: no TCP, no ports
    config.KernelManager.ip, sockets = _socket_prefix(tmp)
    state = {"index": 0}
    since = {"cell": 0.0}   # when the running cell started (time.monotonic)
    code_cells = sum(1 for c in nb.cells if c.cell_type == "code")

    def started(cell: Any, cell_index: int) -> None:
        state["index"] = cell_index
        since["cell"] = time.monotonic()
        if cell.cell_type == "code" and cell_index != injected:
            # numbered as the user counts (and as a failure names it): every cell of theirs, the
            # injected one left out
            _event(event="cell", notebook=name, cell=cell_index + 1 if cell_index < injected else cell_index,
                   cells=len(nb.cells) - 1)

    def executed(cell: Any, cell_index: int, execute_reply: Any) -> None:
        why = missing_program(cell)
        if why:
            raise _CellFailed(why)

    timeout = int(spec.get("timeout", 600))
    client = NotebookClient(nb, timeout=timeout, startup_timeout=120,
                            kernel_name="python3", record_timing=False, config=config,
                            on_cell_start=started, on_cell_executed=executed,
                            resources={"metadata": {"path": str((work / rel).parent)}})
    # The kernel process's own stderr (not the cells' output, which comes as messages) goes to a
    # file, replayed into the build log afterwards: at a timeout it is only the interrupted
    # kernel's shutdown noise (ZMQError tracebacks), which came before mlbuild's message.
    kernel_log = tmp / "kernel-stderr.log"

    def replay_kernel_log() -> None:
        text = kernel_log.read_text(errors="replace") if kernel_log.exists() else ""
        if text.strip():
            sys.stderr.write(text if text.endswith("\n") else text + "\n")
            sys.stderr.flush()

    try:
        with open(kernel_log, "wb") as kernel_stderr:
            client.execute(stderr=kernel_stderr)
    except (CellControlSignal, CellTimeoutError, DeadKernelError, _CellFailed) as e:
        i = state["index"]
        number = i + 1 if i < injected else i  # as the user counts: without the injected cell
        sys.stderr.flush()
        # nbclient interrupts a cell at the timeout: it fails with KeyboardInterrupt, or CellTimeoutError
        timed_out = isinstance(e, CellTimeoutError) or (
            getattr(e, "ename", "") == "KeyboardInterrupt" and time.monotonic() - since["cell"] >= timeout)
        why = (f"the cell ran past the notebook's timeout of {timeout} s ([notebooks.{name}].timeout in "
               f"mlbuild.toml); it was interrupted" if timed_out
               else str(e) if isinstance(e, _CellFailed) else f"{type(e).__name__}: {e}")
        if not timed_out:
            replay_kernel_log()
        message = format_failure(rel, number, nb.cells[i], why)
        hint = module_hint(getattr(e, "ename", ""), str(getattr(e, "evalue", "")), name)
        if hint:
            message += "\n" + hint
        if timed_out and why not in message:   # the cell's traceback shows only a KeyboardInterrupt
            message += f"\nmlbuild: {why}"
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        if sockets is not None:
            shutil.rmtree(sockets, ignore_errors=True)
    replay_kernel_log()
    normalize(nb, str(tmp))
    stored = out / Path(rel).name
    with open(stored, "w", encoding="utf-8") as f:
        nbformat.write(nb, f)  # type: ignore[no-untyped-call]
    summary = {"notebook": name, "source": rel, "cells": len(nb.cells), "code_cells": code_cells,
               "datasets": spec["datasets"], "params": spec.get("params", {}),
               "outputs": sorted(str(p.relative_to(outputs)) for p in outputs.rglob("*") if p.is_file())}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    _event(event="notebook", notebook=name, cells=len(nb.cells), status="ok")
    return stored


def main() -> None:
    spec = load_spec()
    tmp = Path(os.environ.get("TMPDIR") or os.environ.get("NIX_BUILD_TOP") or "/tmp")
    run(spec, Path(os.environ["out"]), tmp)


if __name__ == "__main__":
    main()
