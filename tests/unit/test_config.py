"""mlbuild/config.py: finding the project folder."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_run_from_a_monorepos_root_names_the_projects_below(tmp_path: Path) -> None:
    """`mlbuild build` at the root of a repository whose project is in ml/ said only that there is
    no mlbuild.toml here or above; now it names the projects below and the -C that reaches one."""
    from mlbuild.config import ConfigError, find_project_root

    for folder in ("ml", "services/churn", ".hidden", "a/b/c"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "mlbuild.toml").write_text('[project]\nname = "p"\n')
    (tmp_path / "src").mkdir()
    with pytest.raises(ConfigError,
                       match=r"\(projects below here: ml, services/churn; e\.g\. `mlbuild -C ml \.\.\.`\)$"):
        find_project_root(tmp_path)
    with pytest.raises(ConfigError, match=r"pass --project PATH$"):
        find_project_root(tmp_path / "src")


def test_a_project_below_whose_name_has_a_space_is_quoted_in_the_suggested_command(tmp_path: Path) -> None:
    """The -C suggested at a monorepo's root was pasted as is: `mlbuild -C ml models ...` for a
    folder named "ml models" ran in ml/, with "models" taken for the command."""
    from mlbuild.config import ConfigError, find_project_root

    (tmp_path / "ml models").mkdir()
    (tmp_path / "ml models" / "mlbuild.toml").write_text('[project]\nname = "p"\n')
    with pytest.raises(ConfigError, match=r"\(projects below here: ml models; e\.g\. `mlbuild -C 'ml models' \.\.\.`\)$"):
        find_project_root(tmp_path)
