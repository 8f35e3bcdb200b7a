"""``[notebooks.NAME]`` tables of mlbuild.toml, as the driver reads them.

Nix reads the same tables (``nix/notebook.nix``); the driver checks them first so that a typo is
reported with the fix rather than as an evaluation error::

    [notebooks.explore]
    path = "explore.ipynb"        # required, relative to the project
    datasets = ["digits-raw"]     # inputs: DATA["digits-raw"] in the notebook (a store path)
    params = { bins = 8 }         # PARAMS in the notebook
    code = ["explore.ipynb"]      # the project files it uses (default: [path])
    timeout = 600                 # seconds per cell
    test = true                   # run by `mlbuild notebook check` and the flake's checks
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..config import Project
from .errors import NotebookConfigError

__all__ = ["NotebookConfig", "notebook_configs", "select_notebooks", "KEYS"]

KEYS = frozenset({"path", "datasets", "params", "code", "timeout", "test"})
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class NotebookConfig:
    """One ``[notebooks.NAME]`` table, checked, with defaults filled in."""

    name: str
    path: str
    datasets: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    code: tuple[str, ...] = ()
    timeout: int = 600
    test: bool = False

    @property
    def target(self) -> str:
        """The build target (an attribute of mkProject): ``notebooks.NAME``."""
        return f"notebooks.{self.name}"


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise NotebookConfigError(f"{where} must be a list of strings, got {value!r}")
    return tuple(value)


def _inside(project: Project, rel: str) -> bool:
    """Whether the project file ``rel`` is inside the project (not absolute, no ``..`` out of it)."""
    root = project.root.resolve()
    return (root / rel).resolve().is_relative_to(root) and not Path(rel).is_absolute()


def _one(project: Project, name: str, table: Any) -> NotebookConfig:
    where = f"[notebooks.{name}]"
    if not _NAME.match(name):
        raise NotebookConfigError(f"{where}: the name {name!r} must match {_NAME.pattern}")
    if not isinstance(table, dict):
        raise NotebookConfigError(f"{where} must be a table with path = \"<notebook>.ipynb\"")
    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise NotebookConfigError(f"{where} has unknown keys {unknown}; the keys are {sorted(KEYS)}")
    path = table.get("path")
    if not isinstance(path, str) or not path.endswith(".ipynb"):
        raise NotebookConfigError(f'{where}.path is {path!r}; it must name a .ipynb file, e.g. path = "{name}.ipynb"')
    outside = [p for p in [path, *_strings(table.get("code", []), f"{where}.code")] if not _inside(project, p)]
    if outside:
        key = f"{where}.path" if outside[0] == path else f"{where}.code"
        target = (project.root / outside[0]).resolve()
        link = "" if Path(outside[0]).is_absolute() or ".." in Path(outside[0]).parts else \
            f", a link to {target} (a build would see the link, not the file)"
        raise NotebookConfigError(f"{key} names {outside[0]!r}{link}, which is outside the project {project.root}; "
                                  "move it into the project folder and name it relative to it")
    if not (project.root / path).is_file():
        raise NotebookConfigError(f"{where}.path {path!r} does not exist in {project.root}")
    datasets = _strings(table.get("datasets", []), f"{where}.datasets")
    declared = project.raw.get("datasets", {})
    missing = [d for d in datasets if d not in declared]
    if missing:
        raise NotebookConfigError(f"{where}.datasets names {missing}, which are not datasets; "
                                  f"declared: {sorted(declared)}")
    code = _strings(table.get("code", [path]), f"{where}.code")
    absent = [c for c in code if not (project.root / c.rstrip("/")).exists()]
    if absent:
        raise NotebookConfigError(f"{where}.code names {absent}, which do not exist in {project.root}")
    params = table.get("params", {})
    if not isinstance(params, dict):
        raise NotebookConfigError(f"{where}.params must be a table, got {params!r}")
    timeout = table.get("timeout", 600)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0:
        raise NotebookConfigError(f"{where}.timeout is {json.dumps(timeout)}; use a whole number of seconds > 0 "
                                  "(timeout = 600, a TOML integer)")
    test = table.get("test", False)
    if not isinstance(test, bool):
        raise NotebookConfigError(f"{where}.test is {json.dumps(test)}; use true or false")
    return NotebookConfig(name, path, datasets, dict(params), code, timeout, test)


def notebook_configs(project: Project) -> dict[str, NotebookConfig]:
    """Every ``[notebooks.NAME]`` of the project, checked (in the file's order)."""
    tables = project.raw.get("notebooks", {})
    if not isinstance(tables, dict):
        raise NotebookConfigError(f"{project.config_path}: notebooks must be tables [notebooks.NAME]")
    return {name: _one(project, name, table) for name, table in tables.items()}


def select_notebooks(project: Project, names: Sequence[str] = ()) -> list[NotebookConfig]:
    """The notebooks named (all of them may be run, test or not), or, with no names, those marked
    ``test = true``."""
    configs = notebook_configs(project)
    if not names:
        return [c for c in configs.values() if c.test]
    unknown = [n for n in names if n not in configs]
    if unknown:
        declared = ", ".join(configs) or "none"
        raise NotebookConfigError(
            f"{', '.join(unknown)}: no such notebook in {project.config_path} (declared: {declared}); "
            f'add [notebooks.{unknown[0]}] with path = "<notebook>.ipynb"')
    return [configs[n] for n in dict.fromkeys(names)]

