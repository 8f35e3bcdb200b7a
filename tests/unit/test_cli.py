"""The CLI surface: version, help, and `Error: ...` instead of tracebacks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlbuild import __version__
from tests.conftest import REPO, run_cli


def test_version() -> None:
    """The number alone is the same at every commit: the checkout's commit says which mlbuild it is."""
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    out = run_cli("--version").stdout
    assert out.startswith(f"mlbuild {__version__} ({repo} at ") and head[:12] in out, out


def test_help_lists_commands() -> None:
    out = run_cli("--help").stdout
    for cmd in ("lock", "prefetch", "build"):
        assert cmd in out


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["build", "--help"]])
def test_output_to_a_full_disk_is_one_line_not_a_traceback(tmp_path: Path, args: list[str]) -> None:
    """`mlbuild --help > /dev/full` (and --version, any command's --help) ended in an OSError
    traceback: those write while click parses the arguments, outside the command's handler."""
    import subprocess

    from tests.conftest import MLBUILD

    with open("/dev/full", "w") as full:
        proc = subprocess.run([*MLBUILD, *args], cwd=tmp_path, stdout=full, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == ("Error: No space left on device; free space where it writes (its output too, if it goes "
                           "to a file), then run the command again\n")


def test_ctrl_c_ends_mlbuild_by_the_signal_so_a_calling_script_stops_too() -> None:
    """A Ctrl-C made mlbuild exit 1 (click's "Aborted!"): a shell only stops a loop or script at a
    Ctrl-C when its child died of SIGINT, so `for m in a b; do mlbuild build $m; done` went on to
    the next build, and the next Ctrl-C to the one after."""
    import signal
    import subprocess
    import sys

    script = ("import time\nfrom mlbuild.cli.main import cli, main\n@cli.command()\ndef nap() -> None:\n"
              "    print('napping', flush=True)\n    time.sleep(60)\nmain()\n")
    proc = subprocess.Popen([sys.executable, "-c", script, "nap"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None and proc.stdout.readline() == "napping\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGINT and err == "\nAborted!\n", (proc.returncode, err)


def test_missing_config_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    proc = run_cli("lock", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: no mlbuild.toml")
    assert "Traceback" not in proc.stderr


def test_nix_missing(tree, tmp_path: Path) -> None:
    root = tree({"mlbuild.toml": '[project]\nname = "x"\n', "mlbuild.lock": '{"version": 1, "interpreter": '
                 '{"snapshot": {"name": "s", "sha256": "' + "0" * 64 + '"}}, "requirements": []}'})
    proc = run_cli("prefetch", cwd=root, check=False, env={"PATH": "/nonexistent"})
    assert proc.returncode == 1 and "Nix is not installed" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_interpreter(tree) -> None:
    root = tree({"mlbuild.toml": '[project]\nname = "x"\n[python]\ninterpreter = "python9.99"\n'})
    proc = run_cli("lock", cwd=root, check=False)
    assert proc.returncode == 1 and "'python9.99'" in proc.stderr and "Traceback" not in proc.stderr


def test_lazy_command_map_names_every_command_and_only_loads_what_runs() -> None:
    import importlib
    import pkgutil
    import subprocess
    import sys

    import mlbuild.cli
    from mlbuild.cli.main import COMMANDS, cli

    for mod in pkgutil.iter_modules(mlbuild.cli.__path__):   # every command module registered...
        if mod.name != "__main__":
            importlib.import_module(f"mlbuild.cli.{mod.name}")
    defined = {name: cmd.callback.__module__.rsplit(".", 1)[-1] for name, cmd in cli.commands.items()}
    assert defined == COMMANDS   # ...is in the map, under the module that defines it
    code = ("import sys; from mlbuild.cli.main import cli; import click; "
            "cli.get_command(click.Context(cli), 'data'); "
            "print(sorted(m for m in sys.modules if m.startswith(('mlbuild.cli.', 'cryptography'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "mlbuild.cli.data" in loaded and "mlbuild.cli.store" not in loaded and "cryptography" not in loaded


def test_unknown_targets_are_refused_before_nix_runs(tree) -> None:
    """A typo in a model, dataset, notebook or stage is named with what the project declares,
    without evaluating anything: Nix is not even on PATH here."""
    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[datasets.raw]\npath = "d"\n'
                 '[models.digits]\nscript = "m.py"\n[notebooks.explore]\npath = "e.ipynb"\n'})
    cases = {
        ("build", "digts"): "'digts' is not a target of p: give a model (digits), MODEL.STAGE (model, package, ",
        ("build", "digits.imag"): "'digits.imag': a model has no stage 'imag'; its stages are model, package,",
        ("build", "raw"): "'raw' is not a target: did you mean datasets.raw?",
        ("build", "datasets.rwa"): "'rwa' is not one of the datasets of p (datasets: raw); declare [datasets.rwa]",
        ("build", "notebooks.x"): "'x' is not one of the notebooks of p (notebooks: explore)",
        ("build", "models.digts.image"): "'digts' is not a model of p (models: digits); declare [models.digts]",
        ("validate", "digts"): "'digts' is not a model of p (models: digits)",
        ("serve", "digts"): "'digts' is not a model of p (models: digits)",
        # the server's options before the model: serve takes unknown options for the server, and
        # '--port' was the model ("declare [models.--port]")
        ("serve", "--port", "8080", "digits"): "'--port' is not a model of p (models: digits); it is an option: give "
                                               "the model first, then the server's options (mlbuild serve digits "
                                               "--port ...)",
        ("metrics", "show", "digts"): "'digts' is not a model of p (models: digits)",
        ("exp", "show", "digts"): "'digts' is not a model of p (models: digits)",
        ("exp", "run", "digts", "--set", "lr=1"): "'digts' is not a model of p (models: digits)",
        # MODEL.STAGE where a model is wanted went to Nix ("attribute 'validation' ... not found")
        ("validate", "digits.model"): "'digits.model' is not a model of p (models: digits); give the model's name "
                                      "(digits), not MODEL.STAGE",
        ("build", ".model"): "'.model' is not a target: a name is empty; give a model (digits), MODEL.STAGE",
        ("metrics", "show", "digits.model"): "'digits.model' is not a model of p (models: digits)",
        ("metrics", "history", "digits.model"): "'digits.model' is not a model of p (models: digits)",
        ("metrics", "diff", "digits.model", "HEAD", "HEAD"): "'digits.model' is not a model of p (models: digits)",
        ("monitor", "digits.model", "--url", "http://127.0.0.1:1", "--once"):
            "'digits.model' is not a model of p (models: digits)",
        # a collection: Nix built every member, and mlbuild reported and kept (a GC root) the first
        ("build", "datasets"): "'datasets' names all the datasets at once; give them one by one: datasets.raw",
        ("build", "digits.datasets"): "'digits.datasets' names all the datasets at once; give them one by one: "
                                      "datasets.raw",
        ("build", "models"): "'models' names all the models at once; give them one by one: digits",
        ("build", "digits.notebooks"): "'digits.notebooks' names all the notebooks at once; give them one by one: "
                                       "notebooks.explore",
        # the same through models.MODEL: it reported the first dataset alone, or an IndexError traceback
        ("build", "models.digits.datasets"): "'models.digits.datasets' names all the datasets at once; give them "
                                             "one by one: datasets.raw",
        ("build", "models.digits.notebooks"): "'models.digits.notebooks' names all the notebooks at once; give them "
                                              "one by one: notebooks.explore",
        # a member of MODEL.datasets went to Nix ("attribute 'rwa' in selection path 'digits.datasets.rwa' not found")
        ("build", "digits.datasets.rwa"): "'rwa' is not one of the datasets of p (datasets: raw); declare "
                                          "[datasets.rwa]",
        ("build", "models.digits.notebooks.x"): "'x' is not one of the notebooks of p (notebooks: explore)",
    }
    for args, message in cases.items():
        proc = run_cli(*args, cwd=root, check=False, env={"PATH": "/nonexistent"})
        assert proc.returncode == 1, args
        assert proc.stderr.startswith("Error: " + message), (args, proc.stderr)


def test_declared_targets_pass_the_check(tree) -> None:
    from mlbuild.build import check_targets
    from mlbuild.config import load_project

    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[datasets.raw]\npath = "d"\n'
                 '[models.digits]\nscript = "m.py"\n'})
    check_targets(load_project(root), ["toolchain", "interpreter", "digits", "digits.validation.report",
                                       "models.digits.image", "datasets.raw", "digits.model", "digits.datasets.raw",
                                       "models.digits.datasets.raw"])


def test_metrics_diff_names_an_unknown_revision(tree) -> None:
    import subprocess

    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[models.m]\nscript = "m.py"\n'})
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    proc = run_cli("metrics", "diff", "m", "HEAD", "no-such-rev", cwd=root, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: 'no-such-rev' is not a commit of the git repository"), proc.stderr


def test_build_summary_says_what_a_push_did_even_when_nothing_was_new() -> None:
    from mlbuild.build import Summary, format_summary

    assert not any(line.startswith("pushed") for line in format_summary(Summary()))   # no push asked
    assert format_summary(Summary(shared=86))[-1] == "pushed 0 store paths to the shared store (86 already there) in 0.0 s"
    assert format_summary(Summary(pushed=["/nix/store/a-x"], shared=3))[-1].startswith("pushed 1 store paths")


def test_build_summary_gives_the_push_its_own_time() -> None:
    """`build --push` of two targets already present printed 'already present 2 (34.7 s)': the
    34.4 s were the push's, not the build's."""
    from mlbuild.build import Summary, format_summary

    lines = format_summary(Summary(present=["iris", "iris.validation"], shared=0, seconds=34.7, push_seconds=34.4))
    assert "built 0, substituted 0, already present 2 (0.3 s)" in lines, lines
    assert lines[-1] == "pushed 0 store paths to the shared store (0 already there) in 34.4 s"
    assert "built 0, substituted 0, already present 0 (2.5 s)" in format_summary(Summary(seconds=2.5))   # no push


@pytest.mark.parametrize("filters", [True, False], ids=["tarfile-filters", "python-3.11.2"])
def test_a_revision_with_a_committed_absolute_link_still_unpacks(tree, monkeypatch, filters) -> None:
    """A `result` link to the store committed once made `metrics history` die with
    tarfile.AbsoluteLinkError at that revision; the link is skipped, the project is read. Python
    before 3.11.4 (Debian 12's /usr/bin/python3.11 is 3.11.2) has no tarfile filters: every
    `metrics history` and `diff` died there with `TypeError: TarFile.extractall() got an unexpected
    keyword argument 'filter'`."""
    import os
    import subprocess
    import tarfile
    import tempfile

    if not filters:
        monkeypatch.delattr(tarfile, "data_filter")

    from mlbuild.config import load_project
    from mlbuild.metrics import _at

    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[models.m]\nscript = "m.py"\n', "m.py": "x = 1\n"})
    os.symlink("/nix/store/00000000000000000000000000000000-p-package", root / "result")
    os.symlink("../../etc/passwd", root / "escape")
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        old = _at(load_project(root), "HEAD", Path(tmp))
        assert old.name == "p" and (old.root / "m.py").read_text() == "x = 1\n"
        assert not (old.root / "result").is_symlink() and not (old.root / "escape").is_symlink()


def test_every_writer_of_the_state_folder_ignores_it(tree) -> None:
    """prefetch made .mlbuild/gcroots without .mlbuild/.gitignore: 47 untracked links, so the next
    build was refused as dirty. The state folder is made in one place, ignored from the start."""
    import subprocess

    from mlbuild.config import state_dir

    root = tree({"mlbuild.toml": '[project]\nname = "p"\n'})
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (state_dir(root) / "gcroots").mkdir()
    (root / ".mlbuild" / "gcroots" / "wheel-x").symlink_to("/nix/store/x")
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=root,
                            capture_output=True, text=True, check=True).stdout
    assert status.split() == ["??", "mlbuild.toml"]
    src = "\n".join(p.read_text() for p in (REPO / "mlbuild").rglob("*.py") if "runtime" not in p.parts)
    assert src.count('".mlbuild"') == 1, "make .mlbuild through config.state_dir (or STATE_NAME)"


def test_a_code_file_git_ignores_makes_the_tree_dirty(tree) -> None:
    """An ignored file named by `code` (or under a folder it names) went into a build recorded
    clean, and two such builds at one commit gave two models; `nix build` of the commit lacked it."""
    import subprocess

    from mlbuild.build import DirtyTreeError, check_clean, code_inputs, dirty_files
    from mlbuild.config import load_project

    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[models.m]\nscript = "m.py"\ncode = ["m.py", "extra.py", "lib/"]\n'
                                 '[models.m.validation]\nsuite = "v.py"\n[datasets.s]\nprepare = "prep.py"\ninputs = []\n'
                                 '[notebooks.nb]\npath = "nb.ipynb"\n',
                 "m.py": "", "extra.py": "", "lib/a.py": "", "lib/.cache/x.json": "{}", "lib/__pycache__/a.pyc": "",
                 "lib/.ipynb_checkpoints/a-checkpoint.ipynb": "{}", "lib/.mypy_cache/x.json": "{}",
                 "other.log": "", ".gitignore": "/extra.py\n.cache/\n__pycache__/\n*.log\n.ipynb_checkpoints/\n"
                                             ".mypy_cache/\n"})
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    project = load_project(root)
    assert code_inputs(project) == ["extra.py", "lib", "m.py", "nb.ipynb", "prep.py", "v.py"]
    dirty = dirty_files(project)
    assert dirty.ignored == ["extra.py", "lib/.cache/x.json"] and not dirty.modified and not dirty.untracked
    with pytest.raises(DirtyTreeError, match=r"ignored:   extra.py \(git ignores it[\s\S]*`git add -f` it, or take it "
                                             r"out of `code`"):
        check_clean(project)
    (root / "extra.py").unlink()
    (root / "lib" / ".cache" / "x.json").unlink()
    assert not dirty_files(project)   # other.log is ignored but no stage reads it; tool caches never count
    # nor when git does not ignore them: running model.py, opening a notebook in Jupyter
    for junk in ("__pycache__/m.cpython-311.pyc", ".ipynb_checkpoints/nb-checkpoint.ipynb", "lib/x.pyc"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_text("")
    (root / ".gitignore").write_text("/extra.py\n")
    dirty = dirty_files(project)
    assert (dirty.modified, dirty.untracked, dirty.ignored) == ([".gitignore"], ["other.log"], [])
    # the flake.lock the first `nix run` writes: the message says to commit it
    (root / "flake.lock").write_text("{}")
    with pytest.raises(DirtyTreeError, match=r"untracked: flake\.lock[\s\S]*flake\.lock is what `nix flake lock` "
                                             r"\(or the first `nix build`/`nix run`\) writes: commit it"):
        check_clean(project)


@pytest.mark.parametrize(("table", "key"), [
    ('[models.m]\nscript = "../m.py"\n', "[models.m].script"),
    ('[models.m]\nscript = "m.py"\ncode = ["m.py", "/srv/lib"]\n', "[models.m].code"),
    ('[models.m]\nscript = "m.py"\n[models.m.validation]\nsuite = "../v.py"\n', "[models.m.validation].suite"),
    ('[datasets.s]\nprepare = "p.py"\ncode = ["p.py", "lib/../../x"]\ninputs = []\n', "[datasets.s].code"),
])
def test_code_outside_the_project_is_refused_naming_the_key(tree, table: str, key: str) -> None:  # type: ignore[no-untyped-def]
    """`script = "../x.py"`: every build ended in a screenful of `git ls-files ... is outside
    repository`, asked about the file before anything said it cannot be built."""
    import subprocess

    from mlbuild.build import code_inputs
    from mlbuild.config import load_project
    from mlbuild.errors import ConfigError

    root = tree({"mlbuild.toml": '[project]\nname = "p"\n' + table, "m.py": "", "p.py": ""})
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)} names '[^']+', which is outside the project: a build "
                                          r"sees only the project folder's files; move it into the project"):
        code_inputs(load_project(root))


def test_metrics_history_follows_the_data_code_in_topological_order(tree) -> None:  # type: ignore[no-untyped-def]
    """History skipped a commit that changed only prepare.py (new training and held-out data),
    and listed a branch's commit dated before its fork point first."""
    import os
    import subprocess

    from mlbuild.build import model_code
    from mlbuild.config import load_project
    from mlbuild.git import log_revisions

    root = tree({"mlbuild.toml": '[project]\nname = "p"\n'
                                 '[datasets.raw]\npath = "data"\n'
                                 '[datasets.clean]\nprepare = "clean.py"\ninputs = ["raw"]\n'
                                 '[datasets.split]\nprepare = "split.py"\ncode = ["split.py", "lib/"]\ninputs = ["clean"]\n'
                                 '[datasets.other]\nprepare = "other.py"\ninputs = []\n'
                                 '[models.m]\nscript = "m.py"\ndatasets = ["split"]\n'
                                 '[models.m.validation]\nsuite = "v.py"\ndataset = "split"\n',
                 "m.py": "", "v.py": "", "clean.py": "", "split.py": "", "lib/a.py": "", "other.py": ""})
    assert model_code(load_project(root), "m") == ["m.py", "v.py", "split.py", "lib", "clean.py"]

    def git(*args: str, date: str | None = None) -> str:
        env = {**os.environ, **({"GIT_COMMITTER_DATE": date, "GIT_AUTHOR_DATE": date} if date else {})}
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, env=env,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-qm", "root")
    git("checkout", "-qb", "x")
    (root / "clean.py").write_text("# drop bad rows\n")
    git("commit", "-qam", "old-dated", date="2020-01-01T00:00:00")
    git("checkout", "-q", "main")
    (root / "m.py").write_text("# wider\n")
    git("commit", "-qam", "wider")
    git("merge", "-q", "--no-edit", "x")
    files = ["mlbuild.toml", *model_code(load_project(root), "m")]
    subjects = [git("log", "-1", "--format=%s", rev) for rev in log_revisions(root, files)]
    assert subjects[0] == "root" and set(subjects[1:3]) == {"old-dated", "wider"}
    assert subjects[3:] == ["Merge branch 'x'"]


def test_metrics_diff_across_a_rename_names_the_old_models(tree, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    table = '[project]\nname = "p"\n[models.{0}]\nscript = "m.py"\n[models.{0}.validation]\nsuite = "v.py"\n' \
            'thresholds = {{ accuracy = 0.9 }}\n'
    root = tree({"mlbuild.toml": table.format("wine"), "m.py": "", "v.py": ""})

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                       capture_output=True)

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "wine")
    (root / "mlbuild.toml").write_text(table.format("vino"))
    git("commit", "-qam", "renamed")
    proc = run_cli("metrics", "diff", "vino", "HEAD~1", "HEAD", cwd=root, check=False)
    assert proc.returncode == 1
    assert ("at revision 'HEAD~1', mlbuild.toml declares no model 'vino' (its models: wine; a model renamed since "
            "has its reports under its old name there)") in proc.stderr, proc.stderr
    # the old name, at a commit after the rename: its reports there are under the new name (it said "old")
    proc = run_cli("metrics", "diff", "wine", "HEAD", "HEAD~1", cwd=root, check=False)
    assert ("at revision 'HEAD', mlbuild.toml declares no model 'wine' (its models: vino; a model renamed since "
            "has its reports under its new name there)") in proc.stderr, proc.stderr
    # history: the commits before the rename are not silently dropped
    from mlbuild import metrics
    from mlbuild.config import load_project

    notes: list[str] = []
    revs: list[str] = []

    def fake_report(project, model, rev, **kw):  # type: ignore[no-untyped-def]
        revs.append(rev)
        return metrics.Point(rev, {"metrics": {"accuracy": 0.9}}, "/nix/store/x")
    monkeypatch.setattr(metrics, "_report", fake_report)   # no build: what history asks for, and says
    points = metrics.history(load_project(root), "vino", notes)
    assert len(points) == 1 and len(revs) == 1
    assert notes == ["note: 1 earlier commit(s) declare no model 'vino' but 'wine', which mlbuild.toml no longer "
                     "has: if 'vino' was renamed, its history there is under the old name (`mlbuild metrics "
                     "history wine`)"]
    # a model added beside the others was not renamed: no note
    (root / "mlbuild.toml").write_text(table.format("vino") + table.format("wine").split("\n", 2)[2])
    git("commit", "-qam", "wine again, beside vino")
    notes.clear()
    metrics.history(load_project(root), "vino", notes)
    assert notes == []


def test_a_past_commit_with_a_stale_lock_is_named_not_its_temporary_folder(tree) -> None:  # type: ignore[no-untyped-def]
    """metrics history ended at the first commit whose lock was stale, naming a /tmp folder and
    telling the user to run `mlbuild lock` there."""
    import json
    import subprocess

    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[python]\ninterpreter = "python3"\n'
                                 'requirements = ["numpy", "pandas"]\n[models.m]\nscript = "m.py"\n'
                                 '[models.m.validation]\nsuite = "v.py"\nthresholds = { accuracy = 0.9 }\n',
                 "mlbuild.lock": json.dumps({"version": 1, "requirements": ["numpy"], "wheels": [], "tools": [],
                                             "interpreter": {"libraries": [], "command": "python3",
                                                             "snapshot": {"name": "s", "sha256": "0" * 64}}}),
                 "m.py": "", "v.py": ""})
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    diff = run_cli("metrics", "diff", "m", rev, rev, cwd=root, check=False)
    assert diff.returncode == 1 and "/tmp" not in diff.stderr and "mlbuild-rev-" not in diff.stderr
    assert (f"at revision {rev[:10]}: mlbuild.lock was made for other [python].requirements than mlbuild.toml has "
            '(added ["pandas"]); run `mlbuild lock` (in that commit: it cannot be validated as it was committed)'
            ) in diff.stderr, diff.stderr
    history = run_cli("metrics", "history", "m", cwd=root, check=False)
    assert history.returncode == 1 and "Traceback" not in history.stderr
    assert f"no commit of m could be validated:\n  {rev[:10]}: mlbuild.lock was made for other" in history.stderr


def test_a_reports_folder_that_cannot_be_made_is_refused_before_building(tree) -> None:  # type: ignore[no-untyped-def]
    """`metrics history --out` naming a path under a file ended, after every revision was built, in
    NotADirectoryError's traceback."""
    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[models.m]\nscript = "m.py"\n', "m.py": "", "afile": ""})
    for cmd in ("show", "history"):
        proc = run_cli("metrics", cmd, "m", "--out", "afile/reports", cwd=root, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "Error: Invalid value for --out: cannot make the folder 'afile/reports': Not a directory" in proc.stderr


def test_a_collection_with_no_members_is_refused(tree) -> None:  # type: ignore[no-untyped-def]
    # `build notebooks` of a project with none: Nix built nothing and mlbuild ended in IndexError
    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[models.m]\nscript = "m.py"\n'})
    proc = run_cli("build", "notebooks", cwd=root, check=False, env={"PATH": "/nonexistent"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr == "Error: 'notebooks' names all the notebooks at once, and p declares none\n"


def test_a_dataset_file_in_code_is_named_as_data(tree) -> None:
    """A notebook reading data/clean.csv by a relative path, with that file listed in its code:
    the clean-tree check said to `git add -f` it, putting the data into git."""
    import subprocess

    from mlbuild.build import DirtyTreeError, check_clean
    from mlbuild.config import load_project

    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[datasets.raw]\npath = "data"\n'
                                 '[notebooks.nb]\npath = "nb.ipynb"\ncode = ["nb.ipynb", "data/clean.csv"]\n',
                 "nb.ipynb": "{}", "data/clean.csv": "1,a\n", ".gitignore": "/data/\n"})
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    with pytest.raises(DirtyTreeError) as e:
        check_clean(load_project(root))
    assert ("ignored:   data/clean.csv (the data of dataset raw, which the build reads from the store: take it out "
            'of `code` and list "raw" in the stage\'s datasets)') in str(e.value)
    assert "git add -f" not in str(e.value)


def test_a_build_does_not_load_cryptography_to_read_the_store_configuration() -> None:
    """Every `mlbuild build` reads the shared store's configuration (its trusted keys come from
    files) and imported cryptography with it (~40 ms of a no-op build's CPU), though a build neither
    signs nor checks a signature: it is imported where a key is used."""
    import subprocess
    import sys

    code = ("import sys, mlbuild.build, mlbuild.store; "
            "from mlbuild.store.keys import parse_public_key; parse_public_key('k:' + 'A' * 43 + '='); "
            "print(sorted(m for m in sys.modules if m.startswith('cryptography')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_help_lists_every_command_as_its_own_help_does_without_loading_them() -> None:
    """`mlbuild --help` imported every command module to list their first lines (0.6 s, against
    `--version`'s 0.12 s): the list comes from SHORT_HELP now, which must say what each command's
    own help says, and read the same as click's listing of the loaded commands."""
    import importlib
    import os
    import pkgutil
    import subprocess
    import sys

    from click.testing import CliRunner

    import mlbuild.cli
    from mlbuild.cli.main import COMMANDS, SHORT_HELP, cli

    code = ("import sys; from mlbuild.cli.main import cli\ntry:\n  cli(['--help'], prog_name='mlbuild')\n"
            "except SystemExit:\n  pass\nprint(sorted(m for m in sys.modules if m.startswith('mlbuild.cli.')))")
    lazy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "COLUMNS": "80"}).stdout
    listing, loaded = lazy.rstrip("\n").rsplit("\n", 1)
    assert loaded == "['mlbuild.cli.main']"
    for mod in pkgutil.iter_modules(mlbuild.cli.__path__):
        if mod.name != "__main__":
            importlib.import_module(f"mlbuild.cli.{mod.name}")
    assert SHORT_HELP == {name: (cli.commands[name].help or "").partition("\n\n")[0] for name in COMMANDS}
    for width in (40, 80, 200):   # where the truncation falls
        loaded_help = CliRunner().invoke(cli, ["--help"], prog_name="mlbuild", terminal_width=width).output
        saved = cli.commands.copy()
        cli.commands.clear()   # as before any command module ran: from SHORT_HELP
        try:
            lazy_help = CliRunner().invoke(cli, ["--help"], prog_name="mlbuild", terminal_width=width).output
        finally:
            cli.commands.update(saved)
        assert lazy_help == loaded_help
    assert "build     Build TARGETS (default: toolchain), e.g. digits,..." in listing


def test_code_with_converted_line_ends_is_named_with_the_fix(tree) -> None:  # type: ignore[no-untyped-def]
    """core.autocrlf=true: m.py checked out with CRLF, committed with LF; git status is clean and
    the build trained the folder's CRLF bytes marked clean (another store path than `nix build`)."""
    import subprocess

    from mlbuild.build import DirtyTreeError, check_clean
    from mlbuild.config import load_project

    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[models.m]\nscript = "m.py"\n', "m.py": "x = 1\n"})
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                ["config", "core.autocrlf", "true"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    (root / "m.py").unlink()
    subprocess.run(["git", "checkout", "--", "m.py"], cwd=root, check=True)
    with pytest.raises(DirtyTreeError, match=r"line ends: m\.py \(git checks it out with other line ends than it "
                                             r"commits\)[\s\S]*`git config core\.autocrlf input`"):
        check_clean(load_project(root))


def test_serve_checks_the_server_s_options_before_building(tree) -> None:  # type: ignore[no-untyped-def]
    """`mlbuild serve digits --prot 8080` (or `--port 80800`) built and validated the package, a
    training run where it was not built, and only then did bin/serve refuse the option."""
    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[models.digits]\nscript = "m.py"\n'})
    env = {"PATH": "/nonexistent"}   # no Nix: an option that passes reaches the build, which fails here
    for args, message in ((["--prot", "8080"], "unrecognized arguments: --prot 8080"),
                          (["--port", "80800"], "argument --port: '80800' is not an integer in 0..65535"),
                          (["--threads", "0"], "argument --threads: '0' is not an integer in 1..1024")):
        proc = run_cli("serve", "digits", *args, cwd=root, check=False, env=env)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"Error: the server's options: {message} (`nix run .#serve-digits -- --help` lists them" in proc.stderr
        assert "nix" not in proc.stderr.split("Error:")[0]
    proc = run_cli("serve", "digits", "--port", "0", "--max-batch-size", "8", cwd=root, check=False, env=env)
    assert proc.returncode == 1 and "the server's options" not in proc.stderr, proc.stderr
    # the server's help, however abbreviated, is bin/serve's: `--he` printed mlbuild's own process's usage and ended unbuilt
    for asked in ("--he", "--hel"):   # (--help is mlbuild serve's own)
        proc = run_cli("serve", "digits", "--port", "0", asked, cwd=root, check=False, env=env)
        assert proc.returncode == 1 and "usage:" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        assert "mlbuild.lock does not exist" in proc.stderr, proc.stderr   # on to the build, which fails here


@pytest.mark.parametrize("err", ["EROFS", "EIO", "ESTALE"])
def test_a_file_system_that_fails_under_a_command_is_one_line(err: str) -> None:
    """A project or state folder whose file system fails mid-command (ext4 remounted read-only after a
    disk error, an NFS mount that dropped or went stale) ended any command in an OSError traceback:
    it names the file, what happened to its file system and what to do."""
    import errno
    import os
    import subprocess
    import sys

    script = ("import errno, os\nfrom mlbuild.cli.main import cli, main\n@cli.command()\ndef write() -> None:\n"
              f"    raise OSError(errno.{err}, os.strerror(errno.{err}), '/srv/p/.mlbuild/builds.jsonl')\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", script, "write"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"Error: {os.strerror(getattr(errno, err))}: /srv/p/.mlbuild/builds.jsonl: its ")
    if err == "EROFS":   # mounted read-only on purpose (a read-only checkout) is as likely as a disk error
        assert ": its file system is read-only (mounted so, or remounted so by the kernel after a disk error); " \
            in proc.stderr, proc.stderr
    assert proc.stderr.endswith("; check the mount (`findmnt -T /srv/p/.mlbuild/builds.jsonl`), mount it again, then "
                                "run the command again (the files mlbuild replaces are replaced whole)\n")


def test_a_write_into_a_read_only_store_path_keeps_its_traceback() -> None:
    """The Nix store is read-only by design (NixOS mounts it so): an EROFS writing into a store path is
    a bug of mlbuild's (or of the code it runs), and it was one line saying the disk had failed and to
    mount it again, without the traceback that shows where it wrote."""
    import os
    import subprocess
    import sys

    target = "/nix/store/b75g297zvbp3q4lh0sk4jj40nhghf72n-digits-model/model.pt"
    script = ("import errno, os\nfrom mlbuild.cli.main import cli, main\n@cli.command()\ndef write() -> None:\n"
              f"    raise OSError(errno.EROFS, os.strerror(errno.EROFS), {target!r})\nmain()\n")
    env = {k: v for k, v in os.environ.items() if k != "NIX_STORE_DIR"}
    proc = subprocess.run([sys.executable, "-c", script, "write"], cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "mount it again" not in proc.stderr, proc.stderr
    assert proc.stderr.rstrip().endswith(f"OSError: [Errno 30] Read-only file system: '{target}'"), proc.stderr
