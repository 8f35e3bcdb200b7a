"""``mlbuild notebook check``: run the project's test notebooks as builds.

Each notebook is the derivation ``notebooks.NAME`` of the project (``nix/notebook.nix``), built
with :func:`mlbuild.build.build_targets`: the same clean-worktree check, the same summary, the
same record in ``.mlbuild/builds.jsonl``. An unchanged notebook (same file, same data, same
toolchain) has the same store path, so it is not run again. Every selected notebook is tried; if
any fails, one :class:`NotebookCheckError` carries each failure with the tail of its build log
(the failing cell's source and traceback).

``nix flake check`` runs the same derivations when a flake exposes them as checks::

    checks.${system} = mlbuild.notebookChecks digits;   # { digits-notebook-explore = ...; }
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..build import Progress, Summary, build_targets, format_summary
from ..config import Project
from ..errors import BuildError
from .config import select_notebooks
from .errors import NotebookCheckError

__all__ = ["NotebookRun", "CheckResult", "check_notebooks", "format_check"]


@dataclass(frozen=True)
class NotebookRun:
    """One notebook that passed: ``ran`` (executed now) or ``cached`` (already in the store)."""

    name: str
    path: str
    status: str


@dataclass
class CheckResult:
    runs: list[NotebookRun] = field(default_factory=list)
    summary: Summary = field(default_factory=Summary)


def _merge(total: Summary, part: Summary) -> None:
    total.outputs += part.outputs
    total.built += part.built
    total.substituted += part.substituted
    total.present += part.present
    total.seconds += part.seconds


def check_notebooks(project: Project, names: Sequence[str] = (), *, allow_dirty: bool = False,
                    on_progress: Callable[[Progress], None] | None = None) -> CheckResult:
    """Build the notebooks ``names`` (default: those with ``test = true``).

    Raises DirtyTreeError (uncommitted changes, unless ``allow_dirty``), NotebookConfigError (a
    bad table or an unknown name) and NotebookCheckError (one or more notebooks failed)."""
    notebooks = select_notebooks(project, names)
    result = CheckResult()
    failures: dict[str, BuildError] = {}
    for nb in notebooks:
        try:
            summary = build_targets(project, [nb.target], allow_dirty=allow_dirty, on_progress=on_progress)
        except BuildError as e:
            failures[nb.name] = e
            continue
        _merge(result.summary, summary)
        status = "cached" if nb.target in summary.present else "ran"
        result.runs.append(NotebookRun(nb.name, summary.outputs[0].path, status))
    if failures:
        raise NotebookCheckError(failures, [r.name for r in result.runs])
    return result


def format_check(result: CheckResult) -> list[str]:
    """One line per notebook, then the build summary (``built N, substituted N, ...``)."""
    if not result.runs:
        return ['no notebooks marked test = true; add test = true to a [notebooks.NAME] table, '
                'or name notebooks: mlbuild notebook check NAME']
    width = max(len(r.name) for r in result.runs)
    lines = [f"{r.name:<{width}}  ok ({r.status})  {r.path}" for r in result.runs]
    return lines + format_summary(result.summary)[len(result.summary.outputs):]
