"""Errors of the notebook concern (``mlbuild notebook ...``, ``[notebooks.NAME]``).

Each names the bad value and what to do next; only the CLI prints them.
"""

from __future__ import annotations

from ..errors import BuildError, ConfigError, MlbuildError

__all__ = ["NotebookError", "NotebookConfigError", "NotebookExportError", "NotebookCheckError"]


class NotebookError(MlbuildError):
    """Root of the notebook errors."""


class NotebookConfigError(NotebookError, ConfigError):
    """A ``[notebooks.NAME]`` table of mlbuild.toml is wrong, or a name asked for is not declared."""


class NotebookExportError(NotebookError):
    """A notebook cannot be read, or cannot become a plain module (IPython-only syntax that
    cannot be dropped, a syntax error, an output file that would overwrite hand-written code)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        super().__init__(message)


class NotebookCheckError(NotebookError):
    """One or more notebooks failed to run; carries each failure (with the tail of its log)."""

    def __init__(self, failures: dict[str, BuildError], passed: list[str]) -> None:
        self.failures, self.passed = failures, passed
        parts = []
        for name, err in failures.items():
            parts.append(f"notebook {name} failed:\n{err.log_tail or err}")
        ok = f"\npassed: {', '.join(passed)}" if passed else ""
        shown = ("the cell shown (open the notebook and run it top to bottom)"
                 if any("failed at cell" in (e.log_tail or str(e)) for e in failures.values()) else "what it shows")
        fix = f"\nfix {shown}, commit, then run `mlbuild notebook check {' '.join(failures)}` again"
        super().__init__("\n".join(parts) + ok + fix)
