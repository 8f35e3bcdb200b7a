"""Notebooks: export to plain modules, and run as build rules (``[notebooks.NAME]``).

- :mod:`.export` / :mod:`.magics`: ``mlbuild notebook export NB.ipynb -o module.py``;
- :mod:`.config`: the ``[notebooks.NAME]`` tables of mlbuild.toml;
- :mod:`.check`: ``mlbuild notebook check``, which builds ``notebooks.NAME`` (``nix/notebook.nix``;
  the run itself is ``mlbuild/runtime/notebook.py``, inside the toolchain).
"""

from __future__ import annotations

from .check import CheckResult, NotebookRun, check_notebooks, format_check
from .config import NotebookConfig, notebook_configs, select_notebooks
from .errors import NotebookCheckError, NotebookConfigError, NotebookError, NotebookExportError
from .export import ExportResult, export_notebook, module_source, read_notebook
from .magics import Magic, rewrite_cell

__all__ = [
    "CheckResult", "NotebookRun", "check_notebooks", "format_check",
    "NotebookConfig", "notebook_configs", "select_notebooks",
    "NotebookError", "NotebookConfigError", "NotebookExportError", "NotebookCheckError",
    "ExportResult", "export_notebook", "module_source", "read_notebook",
    "Magic", "rewrite_cell",
]
