"""Notebooks with real Nix: run as builds in a (small, torch-free) toolchain, export round trip,
failing cells, caching, `nix-build --check`, `nix flake check`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tests.conftest import REPO, run_cli, write_tree
from tests.integration.conftest import commit_all, git, git_repo, instantiate, nix, small_project_tree
from tests.unit.test_notebook_export import import_file

pytestmark = pytest.mark.integration

REQUIREMENTS = ["numpy", "ipykernel", "nbclient", "nbformat"]

STATS = [
    new_markdown_cell("# Row statistics\nReads the `raw` dataset, writes a summary."),
    new_code_cell("from pathlib import Path\nDATA = {'raw': Path('data/raw')}\nPARAMS = {'scale': 1}\n"
                  "OUTPUTS = Path('outputs')", metadata={"tags": ["parameters"]}),
    new_code_cell("%load_ext autoreload\n%autoreload 2\nimport json\nimport numpy as np\n"
                  "rows = np.loadtxt(DATA['raw'] / 'rows.txt')"),
    new_code_cell("def stats(a):\n    return {'n': int(a.size), 'mean': float(a.mean()), 'std': float(a.std()),\n"
                  "            'top': sorted(a.tolist())[-3:]}\n\n"
                  "result = stats(rows * PARAMS['scale'])\nprint(json.dumps(result, sort_keys=True))"),
    new_code_cell("OUTPUTS.mkdir(exist_ok=True)\n(OUTPUTS / 'result.json').write_text(json.dumps(result))\nresult['n']"),
]
FAILING = [
    new_code_cell("x = 1"),
    new_markdown_cell("the next cell fails"),
    new_code_cell("def inverse(v):\n    return 1 / v\n\nprint('about to fail')\ny = inverse(x - 1)"),
    new_code_cell("z = 2"),
]


def notebook(path: Path, cells: list[Any]) -> None:
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "language": "python",
                                                            "display_name": "Python 3"}})
    for i, cell in enumerate(nb.cells):
        cell.id = f"c{i}"
    nbformat.write(nb, str(path))


@pytest.fixture(scope="module")
def nb_lock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project locked and prefetched with numpy + the notebook packages (no torch: fast)."""
    root = write_tree(tmp_path_factory.mktemp("nblock"), small_project_tree(REQUIREMENTS, name="nb"))
    run_cli("lock", cwd=root)
    run_cli("prefetch", cwd=root)
    return root


@pytest.fixture(scope="module")
def nb_project(nb_lock: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repo with a local dataset, a notebook over it (test = true) and a failing one."""
    root = tmp_path_factory.mktemp("nbproj") / "proj"
    toml = (nb_lock / "mlbuild.toml").read_text() + (
        '\n[datasets.raw]\npath = "data/raw"\n\n'
        '[notebooks.stats]\npath = "stats.ipynb"\ndatasets = ["raw"]\nparams = { scale = 2 }\ntest = true\n\n'
        '[notebooks.failing]\npath = "failing.ipynb"\n')
    write_tree(root, {"mlbuild.toml": toml, "mlbuild.lock": (nb_lock / "mlbuild.lock").read_text(),
                      "README.md": "notebooks\n", ".gitignore": "/outputs/\n"})
    # A fresh notebook each session (a nonce in its markdown), so the first check really runs it.
    notebook(root / "stats.ipynb", [new_markdown_cell(f"{STATS[0].source}\n\nsession {uuid.uuid4()}"), *STATS[1:]])
    notebook(root / "failing.ipynb", FAILING)
    git_repo(root)
    write_tree(root, {"data": {"raw": {"rows.txt": "\n".join(str(i) for i in range(1, 21))}}})
    run_cli("data", "add", "raw", "data/raw", cwd=root)
    commit_all(root, "data")
    return root


@pytest.fixture(scope="module")
def stats_run(nb_project: Path) -> tuple[Path, str]:
    """`mlbuild notebook check` (the first run) and the executed notebook's output folder."""
    out = run_cli("notebook", "check", cwd=nb_project).stdout
    path = next(l.split()[-1] for l in out.splitlines() if l.startswith("stats "))
    return Path(path), out


def outputs_of(nb: Any, cell_id: str) -> list[Any]:
    return next(c for c in nb.cells if c.get("id") == cell_id).outputs


def test_run_stores_the_executed_notebook(nb_project: Path, stats_run: tuple[Path, str]) -> None:
    out, log = stats_run
    # The notebook was built (on a fresh Nix store the toolchain is built too, in the same run).
    assert "stats  ok (ran)" in log and "failing" not in log and re.search(r"^  built +stats-notebook ", log, re.M)
    assert sorted(p.name for p in out.iterdir()) == ["outputs", "stats.ipynb", "summary.json"]
    nb = nbformat.read(str(out / "stats.ipynb"), as_version=4)
    injected = nb.cells[2]
    assert injected.metadata.tags == ["injected-by-mlbuild"] and "/nix/store/" in injected.source
    assert all("execution" not in c.metadata for c in nb.cells)
    assert [c.execution_count for c in nb.cells if c.cell_type == "code"] == [1, 2, 3, 4, 5]
    result = json.loads(outputs_of(nb, "c3")[0].text)
    assert result == {"n": 20, "mean": 21.0, "std": pytest.approx(11.532562594670797), "top": [36.0, 38.0, 40.0]}
    assert json.loads((out / "outputs" / "result.json").read_text()) == result
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"] == ["result.json"] and summary["params"] == {"scale": 2}
    assert summary["datasets"]["raw"].startswith("/nix/store/")


def test_export_round_trip(nb_project: Path, stats_run: tuple[Path, str], tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The exported module gives the values the notebook printed in its build."""
    out, _ = stats_run
    executed = nbformat.read(str(out / "stats.ipynb"), as_version=4)
    printed = json.loads(outputs_of(executed, "c3")[0].text)
    run_cli("notebook", "export", "stats.ipynb", "-o", str(tmp_path / "stats_module.py"), cwd=nb_project)
    # The build ran with PARAMS scale = 2 (mlbuild.toml); the module has the notebook's own
    # defaults: run it with the same parameter, on the same data, from the project folder.
    source = (tmp_path / "stats_module.py").read_text().replace("PARAMS = {'scale': 1}", "PARAMS = {'scale': 2}")
    (tmp_path / "stats_module.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(nb_project / "data", tmp_path / "data")
    module = import_file(tmp_path / "stats_module.py")
    assert module.result == printed
    assert json.loads((tmp_path / "outputs" / "result.json").read_text()) == printed
    # The executed notebook (with its injected cell) exports to the same module.
    run_cli("notebook", "export", str(out / "stats.ipynb"), "-o", str(tmp_path / "again.py"), cwd=nb_project)
    assert (tmp_path / "again.py").read_text().split("\n", 1)[1] == \
        run_cli("notebook", "export", "stats.ipynb", "-o", "-", cwd=nb_project).stdout.split("\n", 1)[1]


def test_unchanged_notebook_is_not_run_again(nb_project: Path, stats_run: tuple[Path, str]) -> None:
    out, _ = stats_run
    again = run_cli("notebook", "check", cwd=nb_project).stdout
    assert "stats  ok (cached)" in again and "built 0" in again and str(out) in again
    (nb_project / "README.md").write_text("an unrelated edit\n")
    commit_all(nb_project, "readme")
    assert "built 0" in run_cli("notebook", "check", "stats", cwd=nb_project).stdout
    toml = nb_project / "mlbuild.toml"
    original = toml.read_text()
    toml.write_text(original.replace("scale = 2 }\ntest = true", "scale = 2 }\ntest = false"))
    commit_all(nb_project, "not a test")
    named = run_cli("notebook", "check", "stats", cwd=nb_project).stdout  # `test` is not an input
    assert "built 0" in named and str(out) in named
    assert "no notebooks marked test = true" in run_cli("notebook", "check", cwd=nb_project).stdout
    toml.write_text(original.replace("scale = 2", "scale = 3"))
    commit_all(nb_project, "params")
    changed = run_cli("notebook", "check", cwd=nb_project).stdout
    assert "stats  ok (ran)" in changed and "built 1" in changed and str(out) not in changed
    toml.write_text(original)
    commit_all(nb_project, "back")


def test_failing_cell_fails_the_check_with_the_cell(nb_project: Path, stats_run: tuple[Path, str]) -> None:
    proc = run_cli("notebook", "check", "stats", "failing", cwd=nb_project, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr.split("traceback:")[0]
    err = proc.stderr
    assert "  failing          cell   3/4" in err  # live progress, then the error
    assert "Error: notebook failing failed:" in err
    assert "last lines of the build log of failing-notebook" in err
    assert "mlbuild: notebook failing.ipynb failed at cell 3 (In [3]); its source:" in err
    assert "    2 |     return 1 / v" in err and "    5 | y = inverse(x - 1)" in err
    assert "it printed:\n  about to fail" in err
    assert "ZeroDivisionError: division by zero" in err
    assert "passed: stats" in err and "mlbuild notebook check failing" in err
    build = run_cli("build", "notebooks.failing", cwd=nb_project, check=False)  # the same through mlbuild build
    assert build.returncode == 1 and "failed at cell 3" in build.stderr


def test_notebook_run_is_reproducible(nb_project: Path, stats_run: tuple[Path, str]) -> None:
    drv = instantiate(nb_project, "notebooks.stats")
    proc = subprocess.run(["nix-build", "--check", drv, "--no-out-link"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_bad_table_is_reported_before_nix(nb_project: Path) -> None:
    toml = nb_project / "mlbuild.toml"
    original = toml.read_text()
    toml.write_text(original + '\n[notebooks.typo]\npath = "stats.ipynb"\ndatasets = ["rwa"]\n')
    try:
        proc = run_cli("notebook", "check", "typo", "--allow-dirty", cwd=nb_project, check=False)
        assert proc.returncode == 1 and "[notebooks.typo].datasets names ['rwa']" in proc.stderr
        evaluated = nix("eval", "--file", str(REPO / "nix" / "entry.nix"), "--argstr", "src", str(nb_project),
                        "notebooks.typo.drvPath", check=False)
        assert evaluated.returncode != 0 and "[notebooks.typo].datasets names [\"rwa\"]" in evaluated.stderr
        # a missing notebook (no code list): named by the key the user wrote, path
        toml.write_text(original + '\n[notebooks.ghost]\npath = "ghost.ipynb"\n')
        evaluated = nix("eval", "--file", str(REPO / "nix" / "entry.nix"), "--argstr", "src", str(nb_project),
                        "notebooks.ghost.drvPath", check=False)
        assert evaluated.returncode != 0 and "[notebooks.ghost].path names ghost.ipynb, which does not exist" \
            in evaluated.stderr, evaluated.stderr
    finally:
        toml.write_text(original)


FLAKE = """{
  outputs = { self }:
    let
      mlbuild = import ./nix { };
      proj = mlbuild.mkProject { src = ./proj; };
    in { checks.x86_64-linux = mlbuild.notebookChecks proj; };
}
"""


def test_nix_flake_check_runs_the_test_notebooks(nb_project: Path, stats_run: tuple[Path, str],
                                                 tmp_path: Path) -> None:
    """A flake exposing `mlbuild.notebookChecks project` as checks: `nix flake check`, offline."""
    flake = tmp_path / "flake"
    shutil.copytree(REPO / "nix", flake / "nix")
    (flake / "mlbuild").mkdir()
    shutil.copy(REPO / "mlbuild" / "__init__.py", flake / "mlbuild")
    shutil.copytree(REPO / "mlbuild" / "runtime", flake / "mlbuild" / "runtime",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(nb_project, flake / "proj", ignore=shutil.ignore_patterns(".git", "data", ".mlbuild", "outputs"))
    (flake / "flake.nix").write_text(FLAKE)
    git(flake, "init", "-q", "-b", "main")
    commit_all(flake, "flake")
    registry = tmp_path / "registry.json"
    registry.write_text('{"flakes": [], "version": 2}\n')
    offline = ["--option", "substituters", "", "--option", "flake-registry", str(registry)]
    names = nix("eval", "--json", f"{flake}#checks.x86_64-linux", "--apply", "builtins.attrNames", *offline)
    assert json.loads(names.stdout) == ["nb-notebook-stats"]
    nix("flake", "check", str(flake), *offline)
    toml = flake / "proj" / "mlbuild.toml"
    toml.write_text(toml.read_text().replace('path = "failing.ipynb"', 'path = "failing.ipynb"\ntest = true'))
    commit_all(flake, "failing notebook is a test")
    proc = nix("flake", "check", str(flake), *offline, "-L", check=False)
    assert proc.returncode != 0 and "failed at cell 3" in proc.stderr and "ZeroDivisionError" in proc.stderr


def test_a_cell_past_the_timeout_is_named_as_such(nb_project: Path) -> None:
    """A cell over [notebooks.NAME].timeout showed ZMQ noise and a KeyboardInterrupt, never "timeout"."""
    config = nb_project / "mlbuild.toml"
    original = config.read_text()
    notebook(nb_project / "slow.ipynb", [new_code_cell("import time\ntime.sleep(600)")])
    config.write_text(original + '\n[notebooks.slow]\npath = "slow.ipynb"\ntimeout = 3\n')
    commit_all(nb_project, "a slow notebook")
    try:
        proc = run_cli("build", "notebooks.slow", cwd=nb_project, check=False)
        assert proc.returncode == 1
        assert ("the cell ran past the notebook's timeout of 3 s ([notebooks.slow].timeout in mlbuild.toml)"
                in proc.stderr), proc.stderr[-3000:]
        assert "ZMQError" not in proc.stderr   # the interrupted kernel's shutdown noise is left out
    finally:
        config.write_text(original)
        (nb_project / "slow.ipynb").unlink()
        commit_all(nb_project, "no slow notebook")


def test_a_script_cell_magic_without_its_program_fails_the_run(nb_project: Path) -> None:
    """`%%bash` in a build (PATH holds only the toolchain): IPython printed "Couldn't find program:
    'bash'" and went on, so the check passed without running the cell."""
    config = nb_project / "mlbuild.toml"
    original = config.read_text()
    notebook(nb_project / "shell.ipynb", [new_code_cell("x = 1"), new_code_cell("%%bash\necho hello > made.txt"),
                                          new_code_cell("print('after')")])
    config.write_text(original + '\n[notebooks.shell]\npath = "shell.ipynb"\n')
    commit_all(nb_project, "a bash cell")
    try:
        proc = run_cli("build", "notebooks.shell", cwd=nb_project, check=False)
        assert proc.returncode == 1, proc.stdout
        assert "failed at cell 2 (In [3])" in proc.stderr and "   1 | %%bash" in proc.stderr, proc.stderr[-3000:]
        assert "%%bash did not run: the program 'bash' is not on the build's PATH" in proc.stderr
    finally:
        config.write_text(original)
        (nb_project / "shell.ipynb").unlink()
        commit_all(nb_project, "no bash cell")


def test_a_file_that_is_not_a_notebook_is_named_in_the_check(nb_project: Path) -> None:
    """A notebook saved broken (not JSON) showed the builder's JSONDecodeError traceback, then
    "fix the cell shown"."""
    config = nb_project / "mlbuild.toml"
    original = config.read_text()
    (nb_project / "broken.ipynb").write_text("<<<<<<< HEAD\n{}\n")   # a merge conflict left in it
    config.write_text(original + '\n[notebooks.broken]\npath = "broken.ipynb"\n')
    commit_all(nb_project, "a broken notebook")
    try:
        proc = run_cli("notebook", "check", "broken", cwd=nb_project, check=False)
        assert proc.returncode == 1
        assert "mlbuild: broken.ipynb is not a Jupyter notebook (Expecting value: line 1 column 1 (char 0)); " \
               "open it in Jupyter and save it again" in proc.stderr, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and "fix the cell shown" not in proc.stderr
        assert "fix what it shows, commit, then run `mlbuild notebook check broken` again" in proc.stderr
    finally:
        config.write_text(original)
        (nb_project / "broken.ipynb").unlink()
        commit_all(nb_project, "no broken notebook")


def test_a_project_module_not_in_code_is_named_with_the_fix(nb_project: Path) -> None:
    """`import helpers` (a project file, not in [notebooks.NAME].code) failed with a bare
    ModuleNotFoundError; the other stages' builders say where to list it."""
    config = nb_project / "mlbuild.toml"
    original = config.read_text()
    (nb_project / "helpers.py").write_text("def double(x):\n    return 2 * x\n")
    notebook(nb_project / "imports.ipynb", [new_code_cell("import helpers\nprint(helpers.double(2))")])
    config.write_text(original + '\n[notebooks.imports]\npath = "imports.ipynb"\n')
    commit_all(nb_project, "a notebook importing a project module")
    try:
        proc = run_cli("build", "notebooks.imports", cwd=nb_project, check=False)
        assert proc.returncode == 1 and "ModuleNotFoundError: No module named 'helpers'" in proc.stderr
        assert "if it is the project's own (helpers.py or helpers/), list it in [notebooks.imports].code in " \
               "mlbuild.toml" in proc.stderr, proc.stderr[-3000:]
        config.write_text(original + '\n[notebooks.imports]\npath = "imports.ipynb"\n'
                          'code = ["imports.ipynb", "helpers.py"]\n')
        commit_all(nb_project, "with its module")
        assert "notebooks.imports\t/nix/store/" in run_cli("build", "notebooks.imports", cwd=nb_project).stdout
    finally:
        config.write_text(original)
        (nb_project / "imports.ipynb").unlink()
        (nb_project / "helpers.py").unlink()
        commit_all(nb_project, "no imports notebook")


def test_a_notebook_with_a_long_name_runs(nb_project: Path) -> None:
    """The kernel's sockets are files in the build folder, `$TMPDIR/nix-build-NAME-notebook.drv-0`,
    and a socket's path has at most 107 bytes: a notebook named in 80 characters (or a long TMPDIR)
    failed in the kernel's start with ZMQError "File name too long"."""
    name = "exploratory-analysis-of-the-training-split-before-the-first-model-and-its-baseline"
    config = nb_project / "mlbuild.toml"
    original = config.read_text()
    notebook(nb_project / "long.ipynb", [new_code_cell(f"print('ran {uuid.uuid4()}')")])
    config.write_text(original + f'\n[notebooks.{name}]\npath = "long.ipynb"\n')
    commit_all(nb_project, "a notebook with a long name")
    before = set(Path("/tmp").glob("mlbuild-kernel-*"))
    try:
        proc = run_cli("build", f"notebooks.{name}", cwd=nb_project, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert set(Path("/tmp").glob("mlbuild-kernel-*")) == before   # the short socket folder is gone
    finally:
        config.write_text(original)
        (nb_project / "long.ipynb").unlink()
        commit_all(nb_project, "no long notebook")


def test_a_notebook_that_warns_is_reproducible(nb_project: Path) -> None:
    """A warning names the kernel's file of the cell, `$TMPDIR/ipykernel_<pid>/<hash>.py`, in the
    cell's stderr: the pid differs on every run, so any notebook that warned (a library's
    FutureWarning, pointed at the cell) gave other bytes each time, and `build --check` said so."""
    config = nb_project / "mlbuild.toml"
    original = config.read_text()
    notebook(nb_project / "warns.ipynb", [new_code_cell(f"import warnings\nwarnings.warn('careful {uuid.uuid4()}')")])
    config.write_text(original + '\n[notebooks.warns]\npath = "warns.ipynb"\n')
    commit_all(nb_project, "a notebook that warns")
    try:
        path = run_cli("build", "notebooks.warns", cwd=nb_project).stdout.split("\t")[1].split("\n")[0]
        cell = next(c for c in nbformat.read(str(Path(path, "warns.ipynb")), as_version=4).cells
                    if "warnings.warn" in c.source)
        said = "".join(cell.outputs[0]["text"])
        assert re.match(r"ipykernel/\d+\.py:2: UserWarning: careful ", said), said
        proc = run_cli("build", "--check", "notebooks.warns", cwd=nb_project, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
    finally:
        config.write_text(original)
        (nb_project / "warns.ipynb").unlink()
        commit_all(nb_project, "no notebook that warns")
