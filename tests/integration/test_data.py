"""Datasets with real Nix: add, re-add, change detection, missing data, dirty trees, derived
datasets, URL sources."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest

from mlbuild.nar import nar_sha256
from tests.conftest import MLBUILD, run_cli, write_tree
from tests.integration.conftest import commit_all, git, git_repo, small_project

pytestmark = pytest.mark.integration

PREPARE = '''
from pathlib import Path
from typing import Any

def prepare(inputs, out, params):
    rows = (inputs["raw"] / "rows.txt").read_text().split()
    cut = int(len(rows) * params["train"])
    (out / "train.txt").write_text("\\n".join(rows[:cut]))
    (out / "test.txt").write_text("\\n".join(rows[cut:]))
'''


@pytest.fixture
def data_project(small_project: Path, tmp_path: Path) -> Path:
    """A git repo with a local dataset (added) and a derived one; the small toolchain."""
    toml = (small_project / "mlbuild.toml").read_text() + (
        '\n[datasets.split]\nprepare = "prepare.py"\ninputs = ["raw"]\nparams = { train = 0.5 }\n')
    root = write_tree(tmp_path / "proj", {
        "mlbuild.toml": toml, "mlbuild.lock": (small_project / "mlbuild.lock").read_text(),
        "prepare.py": PREPARE, "README.md": "hello\n",
    })
    git_repo(root)
    write_tree(root, {"data": {"raw": {"rows.txt": "\n".join(str(i) for i in range(100)),
                                       "sub": {"x.bin": b"\x00\x01" * 100}}}})
    out = run_cli("data", "add", "raw", "data/raw", cwd=root)
    assert "2 files" in out.stdout
    commit_all(root, "add raw")
    return root


def lock(root: Path) -> dict:
    return json.loads((root / "mlbuild.lock").read_text())


def build(root: Path, target: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli("build", *extra, target, cwd=root, check=check)


def test_add_pins_hash_and_ignores_data(data_project: Path) -> None:
    entry = lock(data_project)["datasets"]["raw"]
    assert entry["sha256"] == nar_sha256(str(data_project / "data/raw"))
    assert entry["files"] == 2
    assert "[datasets.raw]" in (data_project / "mlbuild.toml").read_text()
    assert "/data/raw/" in (data_project / ".gitignore").read_text()
    status = run_cli("data", "status", cwd=data_project).stdout
    assert "raw" in status and "present" in status


def test_readd_is_a_noop_and_change_is_detected(data_project: Path) -> None:
    assert "unchanged" in run_cli("data", "add", "raw", "data/raw", cwd=data_project).stdout
    f = data_project / "data/raw/rows.txt"
    f.write_text(f.read_text() + "\n100")
    assert "changed" in run_cli("data", "status", cwd=data_project).stdout
    diff = run_cli("data", "diff", "raw", cwd=data_project).stdout
    assert "changed  rows.txt" in diff
    (data_project / "data/raw/new.txt").write_text("n")
    assert "added    new.txt" in run_cli("data", "diff", "raw", cwd=data_project).stdout
    old = lock(data_project)["datasets"]["raw"]["sha256"]
    rev = git(data_project, "rev-parse", "HEAD").strip()
    run_cli("data", "add", "raw", "data/raw", cwd=data_project)
    new = lock(data_project)["datasets"]["raw"]["sha256"]
    assert new != old and new == nar_sha256(str(data_project / "data/raw"))
    commit_all(data_project, "new data")
    between = run_cli("data", "diff", "raw", rev, cwd=data_project).stdout
    assert "removed  new.txt" in between and "changed  rows.txt" in between


def test_an_undone_edit_is_pinned_back_and_said(data_project: Path) -> None:
    """Edit, add, undo the edit, add: it said "unchanged" while the pin moved back, and the lock
    kept the edited version's size."""
    rows = data_project / "data/raw/rows.txt"
    original = rows.read_text()
    first = lock(data_project)["datasets"]["raw"]
    rows.write_text(original + "\n100")
    run_cli("data", "add", "raw", "data/raw", cwd=data_project)
    edited = lock(data_project)["datasets"]["raw"]
    assert edited["size"] == first["size"] + 4
    rows.write_text(original)
    assert "changed" in run_cli("data", "status", cwd=data_project).stdout
    out = run_cli("data", "add", "raw", "data/raw", cwd=data_project).stdout
    assert out.strip() == (f"raw: pinned {first['sha256'][:16]}... (was {edited['sha256'][:16]}...), a version the "
                           f"store already holds: nothing imported")
    assert lock(data_project)["datasets"]["raw"] == first
    assert run_cli("data", "add", "raw", "data/raw", cwd=data_project).stdout.startswith("raw: unchanged")
    # undone by an editor that writes a new file (sed -i): hashed again, found in the store, said
    rows.write_text(original + "\n100")
    run_cli("data", "add", "raw", "data/raw", cwd=data_project)
    fresh = rows.with_name("rows.txt.new")
    fresh.write_text(original)
    fresh.replace(rows)
    out = run_cli("data", "add", "raw", "data/raw", cwd=data_project).stdout
    assert out.strip() == (f"raw: pinned {first['sha256'][:16]}... (was {edited['sha256'][:16]}...), a version the "
                           f"store already holds: nothing imported")
    rows.write_text(original)   # new mtime, same content: hashed again, still the pinned version
    assert run_cli("data", "add", "raw", "data/raw", cwd=data_project).stdout.startswith("raw: unchanged")


def test_diff_shows_every_change_the_hash_sees(data_project: Path) -> None:
    """An executable bit, a new symlink, an empty folder: status said changed (the NAR hash
    covers them), while diff said "no differences"."""
    import os

    root = data_project / "data/raw"
    rows = root / "rows.txt"
    rows.chmod(0o755)
    os.symlink("rows.txt", root / "alias")
    (root / "empty").mkdir()
    assert "changed" in run_cli("data", "status", cwd=data_project).stdout
    lines = run_cli("data", "diff", "raw", cwd=data_project).stdout.splitlines()
    size = rows.stat().st_size
    assert lines[0] == "added    alias  - -> -  (symlink to rows.txt)"
    assert lines[1] == "added    empty/  - -> -  (empty folder)"
    assert lines[2].startswith("changed  rows.txt") and lines[2].endswith("(file -> executable file)")
    assert len(lines) == 3 and size > 0
    run_cli("data", "add", "raw", "data/raw", cwd=data_project)
    (root / "alias").unlink()
    os.symlink("empty", root / "alias")
    assert run_cli("data", "diff", "raw", cwd=data_project).stdout.splitlines() == [
        "changed  alias  - -> -  (symlink to rows.txt -> symlink to empty)"]


def test_a_dataset_declared_as_a_symlink_is_its_content_everywhere(data_project: Path, tmp_path: Path) -> None:
    """`data add` hashes what a declared symlink points at; status, diff and the build's warning
    hashed the link itself, and called the data they had just pinned changed."""
    far = write_tree(tmp_path / "lab", {"iris.csv": IRIS})
    (data_project / "data" / "iris.csv").symlink_to(far / "iris.csv")     # the data kept elsewhere
    toml = data_project / "mlbuild.toml"
    toml.write_text(toml.read_text() + '\n[datasets.iris-raw]\npath = "data/iris.csv"\n')
    run_cli("data", "add", "iris-raw", "data/iris.csv", cwd=data_project)
    assert 'path = "data/iris.csv"' in toml.read_text()
    assert "present" in _status(data_project, "iris-raw")
    assert run_cli("data", "diff", "iris-raw", cwd=data_project).stdout == "iris-raw: no differences\n"
    commit_all(data_project, "iris")
    assert "differs from the version" not in build(data_project, "datasets.iris-raw").stderr
    (far / "iris.csv").write_text(IRIS.replace("5.1,5.2", "5.1,7.7"))
    assert "changed" in _status(data_project, "iris-raw")
    assert run_cli("data", "diff", "iris-raw", cwd=data_project).stdout.startswith("changed  iris.csv  ")


def test_diff_reads_only_the_files_it_must(data_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`data diff` hashed every file of both versions: 8.6 s for a dataset of 100,000 small files
    that had not changed, 2.6 s for one unchanged 1 GB file. Data the stat cache knows unchanged,
    and a revision pinning the same version, are read no more; otherwise only files of equal size
    on both sides (an added, removed or resized file differs by its stat)."""
    from mlbuild.config import load_project
    from mlbuild.data import datasets as ds, statcache

    reads: list[Path] = []
    real = ds.sha256_file
    monkeypatch.setattr(ds, "sha256_file", lambda p: (reads.append(Path(p)), real(p))[1])
    time.sleep(statcache.RACY_NS / 1e9)   # files written just now prove nothing by their stat (racy clean)
    run_cli("data", "status", cwd=data_project)   # the stat cache, as data add, status and builds leave it
    project = load_project(data_project)
    assert ds.diff(project, "raw") == [] and reads == []
    assert ds.diff(project, "raw", "HEAD") == [] and reads == []
    root = data_project / "data" / "raw"
    (root / "rows.txt").write_text((root / "rows.txt").read_text() + "\n100")
    (root / "sub" / "new.txt").write_text("new\n")
    assert [(d.path, d.change) for d in ds.diff(project, "raw")] == [("rows.txt", "changed"),
                                                                      ("sub/new.txt", "added")]
    assert sorted(p.name for p in reads) == ["x.bin", "x.bin"]   # the one file whose size is the same
    reads.clear()
    (root / "sub" / "x.bin").write_bytes(b"\x01\x00" * 100)   # same size, other bytes
    assert ("sub/x.bin", "changed") in [(d.path, d.change) for d in ds.diff(project, "raw")]


def test_diff_shows_a_name_holding_a_newline_on_one_line(data_project: Path) -> None:
    """A file named "new\\nline.txt" was printed as two lines, the first saying a file "new" was added."""
    root = data_project / "data" / "raw"
    (root / "new\nline.txt").write_text("x\n")
    (root / "-dash and space.txt").write_text("y\n")
    (root / 'say "hi".txt').write_text("z\n")    # a quote or a backslash: else read as a quoted name
    (Path(os.fsdecode(bytes(root) + b"/caf\xe9.csv"))).write_text("w\n")   # Latin-1: shown as git does
    assert run_cli("data", "diff", "raw", cwd=data_project).stdout.splitlines() == [
        "added    -dash and space.txt  - -> 2 B", 'added    "caf\\351.csv"  - -> 2 B',
        'added    "new\\nline.txt"  - -> 2 B', 'added    "say \\"hi\\".txt"  - -> 2 B']


def test_diff_shows_a_symlink_target_holding_a_newline_on_one_line(data_project: Path) -> None:
    """The names were quoted (3d66043), the targets of symlinks were not: "symlink to a\nb" printed
    as two lines, the second looking like another entry; a Latin-1 target reached the terminal as is."""
    root = data_project / "data" / "raw"
    (root / "link").symlink_to("rows\nremoved  x.txt")
    (root / "latin").symlink_to(os.fsdecode(b"caf\xe9.csv"))
    assert run_cli("data", "diff", "raw", cwd=data_project).stdout.splitlines() == [
        'added    latin  - -> -  (symlink to "caf\\351.csv")',
        'added    link  - -> -  (symlink to "rows\\nremoved  x.txt")']


def test_a_deeply_nested_dataset_is_added_diffed_and_pushed(data_project: Path) -> None:
    """1,500 folders deep (paths of ~3,000 bytes, within PATH_MAX): `data add` stopped in a
    RecursionError traceback (os.walk and the NAR walkers recurse once a folder)."""
    deep = data_project / "data" / "deep"
    deep.mkdir()
    fd = os.open(deep, os.O_RDONLY)
    try:
        for _ in range(1500):   # relative to an open folder: no single call takes the whole path
            os.mkdir("d", dir_fd=fd)
            fd, old = os.open("d", os.O_RDONLY, dir_fd=fd), fd
            os.close(old)
        leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"x\n")
        os.close(leaf)
    finally:
        os.close(fd)
    try:
        for args in (["data", "add", "deep", "data/deep"], ["data", "status"], ["data", "diff", "deep"]):
            proc = run_cli(*args, cwd=data_project, check=False)
            assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "deep: no differences" in proc.stdout
    finally:   # pytest's own clean-up (shutil.rmtree) recurses too; rm does not
        subprocess.run(["rm", "-rf", str(deep)], check=True)


def test_diff_of_a_deleted_dataset_says_so(data_project: Path) -> None:
    shutil.rmtree(data_project / "data" / "raw")
    proc = run_cli("data", "diff", "raw", cwd=data_project, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("Error: data/raw (dataset 'raw') does not exist here (moved, deleted, or a "
                                  "fresh clone)"), proc.stderr
    assert "`mlbuild data add raw PATH`" in proc.stderr


def test_tracked_data_refused(data_project: Path) -> None:
    (data_project / "tracked.csv").write_text("1,2\n")
    commit_all(data_project, "oops")
    proc = run_cli("data", "add", "t", "tracked.csv", cwd=data_project, check=False)
    assert proc.returncode == 1 and "tracked by git" in proc.stderr and "git rm -r --cached" in proc.stderr


def test_data_tracked_by_a_repository_of_its_own_is_named(data_project: Path) -> None:
    # a dataset cloned into the project (a Hugging Face dataset repository, say): it said to
    # `git rm -r --cached` it, which fails in the project ("did not match any files")
    clone = data_project / "ds"
    clone.mkdir()
    (clone / "a.csv").write_text("1,2\n")
    for args in (["init", "-q"], ["add", "a.csv"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "d"]):
        subprocess.run(["git", "-C", str(clone), *args], check=True, capture_output=True)
    try:
        for path in ("ds", "ds/a.csv"):
            proc = run_cli("data", "add", "t", path, cwd=data_project, check=False)
            assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
            assert proc.stderr.startswith(f"Error: {data_project / path} is tracked by the git repository at {clone}, "
                                          "not the project's (a clone or a submodule)"), proc.stderr
            assert "git rm -r --cached" not in proc.stderr
    finally:
        shutil.rmtree(clone)


def test_missing_dataset_names_hash_and_command(data_project: Path) -> None:
    lk = lock(data_project)
    lk["datasets"]["raw"]["sha256"] = hashlib.sha256(b"nowhere").hexdigest()
    (data_project / "mlbuild.lock").write_text(json.dumps(lk))
    commit_all(data_project, "lock data that is nowhere")
    proc = build(data_project, "datasets.raw", check=False)
    assert proc.returncode == 1
    assert "dataset raw" in proc.stderr and lk["datasets"]["raw"]["sha256"] in proc.stderr
    assert "mlbuild data pull raw" in proc.stderr and "mlbuild data add raw data/raw" in proc.stderr
    # The files on disk are not what the lock pins, and the pinned version is nowhere (a teammate's
    # pin, pulled over older files): it said "changed", `data add` pins the new version, which
    # would have pinned the old files back over theirs, and not that builds lack the pinned one.
    status = run_cli("data", "status", cwd=data_project).stdout
    line = next(l for l in status.splitlines() if l.startswith("raw"))
    assert "missing" in line and "changed" not in line, status
    assert "data/raw holds other files than the pinned version (`mlbuild data add raw data/raw` pins them instead)" \
        in line, status
    (data_project / "data").rename(data_project / "away")
    try:   # no files here: status names what can bring it back, and no pull the store cannot answer
        status = run_cli("data", "status", cwd=data_project).stdout
    finally:
        (data_project / "away").rename(data_project / "data")
    line = next(l for l in status.splitlines() if l.startswith("raw"))
    assert "missing" in line and "`mlbuild data add raw PATH` with its files" in line, status
    assert "neither here nor in the shared store" in line or "no shared store is set up" in line, status


def test_dirty_tree_refused_then_allowed(data_project: Path) -> None:
    (data_project / "notes.txt").write_text("untracked\n")
    (data_project / "README.md").write_text("edited\n")
    proc = build(data_project, "datasets.split", check=False)
    assert proc.returncode == 1
    assert "untracked: notes.txt" in proc.stderr and "modified:  README.md" in proc.stderr
    assert "--allow-dirty" in proc.stderr
    assert build(data_project, "datasets.split", "--allow-dirty").returncode == 0


def test_derived_dataset_is_cached_and_traced(data_project: Path) -> None:
    first = build(data_project, "datasets.split").stdout
    path = first.split("\t")[1].split("\n")[0]
    assert (Path(path) / "train.txt").read_text().split() == [str(i) for i in range(50)]
    again = build(data_project, "datasets.split").stdout
    assert path in again and "built 0" in again
    (data_project / "README.md").write_text("unrelated edit\n")
    commit_all(data_project, "readme")
    assert path in build(data_project, "datasets.split").stdout
    # a change no earlier run of this test made (the store outlives test runs, and pytest reuses its
    # temporary folders' names once /tmp/pytest-of-* is cleared)
    (data_project / "prepare.py").write_text(PREPARE.replace('params["train"]', '0.8') + f"# {uuid.uuid4()}\n")
    commit_all(data_project, "prepare changed")
    changed = build(data_project, "datasets.split").stdout
    assert path not in changed and "built 1" in changed


def test_build_check_of_a_dataset_added_here(data_project: Path) -> None:
    """`build --check datasets.raw`: rebuilding a fixed-output dataset runs its placeholder builder,
    which said the dataset (in the store) is 'neither in the Nix store nor in a substituter'."""
    proc = build(data_project, "datasets.raw", "--check", check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "not built again: datasets.raw (fixed-output: its bytes are checked against the pinned hash)" in proc.stdout
    both = build(data_project, "datasets.split", "--check").stdout   # a derived one is built again
    assert "reproducible: datasets.split (built again, the same bytes)" in both


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to build on one")
def test_a_derived_dataset_is_the_same_on_fewer_cores(data_project: Path) -> None:
    """numpy's BLAS (and torch) split a matrix product or a sum by the number of CPUs it may use,
    so a prepare() doing arithmetic gave other bytes on a machine with another core count (here:
    `taskset -c 0`), and `build --check` there said it was not reproducible."""
    (data_project / "prepare.py").write_text(
        "import numpy as np\n\ndef prepare(inputs, out, params):\n"
        "    a = np.random.default_rng(0).standard_normal((600, 900))\n"
        "    b = np.random.default_rng(1).standard_normal((900, 300))\n"
        f"    (out / 'x.bin').write_bytes((a @ b).tobytes() + a.sum(0).tobytes())  # {uuid.uuid4()}\n")
    commit_all(data_project, "prepare with arithmetic")
    build(data_project, "datasets.split")   # on every core this machine has
    proc = subprocess.run(["taskset", "-c", "0", *MLBUILD, "build", "--check", "datasets.split"], cwd=data_project,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reproducible: datasets.split (built again, the same bytes)" in proc.stdout


def test_build_check_builds_in_another_folder_on_fewer_cpus(data_project: Path) -> None:
    """The second build of `build --check` ran in the same build folder (`$TMPDIR/nix-build-NAME.drv-0`)
    on the same CPUs as the first: an output holding the build's folder or a count of its CPUs was
    called reproducible, and a teammate's build of it gave other bytes."""
    proc = checked_again(data_project, "prepare that records its machine",
                         "import os\n\ndef prepare(inputs, out, params):\n"
                         "    (out / 'where.txt').write_text(os.getcwd())\n"
                         f"    (out / 'cpus.txt').write_text(str(len(os.sched_getaffinity(0))))  # {uuid.uuid4()}\n")
    # in Nix's sandbox both builds run in /build: the folder cannot differ there
    differ = ", ".join([*(["cpus.txt"] if len(os.sched_getaffinity(0)) > 1 else []), *([] if sandboxed() else ["where.txt"])])
    assert f"datasets.split is not reproducible: built again, it gave other bytes in {differ} (" in proc.stderr, \
        proc.stderr[-2000:]
    assert not list(Path(tempfile.gettempdir()).glob("mlbuild-check-*/nix-build-split.drv-*"))   # its folder is gone


def checked_again(data_project: Path, message: str, prepare: str) -> subprocess.CompletedProcess[str]:
    """Commit ``prepare`` as the split's prepare.py, build it, then `build --check` it, which must
    find it not reproducible (exit 1): the check's process, for its message."""
    (data_project / "prepare.py").write_text(prepare)
    commit_all(data_project, message)
    build(data_project, "datasets.split")
    proc = build(data_project, "datasets.split", "--check", check=False)
    assert proc.returncode == 1, proc.stdout
    return proc


def sandboxed() -> bool:
    """Whether Nix builds in its sandbox here (Debian 13's nix-bin; Debian 12's nix.conf turns it
    off): the build folder is /build in every build, bound in from TMPDIR by Nix itself."""
    from mlbuild import _nix

    return _nix.nix_config().get("sandbox", "false") in ("true", "relaxed")


@pytest.mark.skipif(os.geteuid() != 0, reason="root without a daemon builds as Nix's build users")
def test_a_tmpdir_the_build_users_cannot_enter_is_named(data_project: Path) -> None:
    """`export TMPDIR=$(mktemp -d)` (mode 0700) in a CI script run as root: Nix builds as its build
    users, in a folder under TMPDIR they cannot reach, and the build failed with the builder's
    PermissionError on its own spec file, naming neither TMPDIR nor the fix."""
    (data_project / "prepare.py").write_text(PREPARE + f"# {uuid.uuid4()}\n")
    commit_all(data_project, "a prepare to build")
    private = Path(tempfile.mkdtemp(dir="/tmp"))   # 0700, as mktemp -d makes it
    try:
        proc = run_cli("build", "datasets.split", cwd=data_project, check=False, env={"TMPDIR": str(private)})
        if sandboxed():   # Nix binds the build folder in as /build: the build users need not enter TMPDIR
            assert proc.returncode == 0, proc.stderr[-2000:]
            return
        assert proc.returncode == 1
        assert proc.stderr.startswith(f"Error: TMPDIR is {private}, which Nix's build users (group "), \
            proc.stderr[-2000:]
        assert f"chmod o+x {private}" in proc.stderr and "Traceback" not in proc.stderr
        private.chmod(0o755)
        assert run_cli("build", "datasets.split", cwd=data_project, env={"TMPDIR": str(private)}).returncode == 0
    finally:
        shutil.rmtree(private)


def test_build_check_names_a_folder_a_link_or_a_mode_that_differs(data_project: Path) -> None:
    """Only files' bytes were compared: a folder named by the time, a link to a file named so, or
    an executable bit set by chance was "its file metadata (modes or links)", naming nothing."""
    proc = checked_again(data_project, "prepare that names a folder by chance",
                         "import os, uuid\n\ndef prepare(inputs, out, params):\n"
                         "    (out / 'data.txt').write_text('the same')\n"
                         "    (out / 'runs' / ('run-' + uuid.uuid4().hex)).mkdir(parents=True)\n"
                         "    os.symlink('data-' + uuid.uuid4().hex, out / 'latest')\n"
                         "    (out / 'tool').write_text('x')\n"
                         "    if 'mlbuild-check-' in os.getcwd():   # the second build of --check\n"
                         f"        (out / 'tool').chmod(0o755)  # {uuid.uuid4()}\n")
    said = proc.stderr.split(" (the first build:")[0]
    # the executable bit follows the build folder's name, which Nix's sandbox makes /build in both
    tool = "" if sandboxed() else ", tool"
    assert re.search(r"built again, it gave other bytes in latest, runs/run-[0-9a-f]{32}/, "
                     rf"runs/run-[0-9a-f]{{32}}/{tool}$", said), proc.stderr[-2000:]


def test_a_derived_dataset_is_the_same_on_another_cpu_model(data_project: Path, small_toolchain: str) -> None:
    """numpy's OpenBLAS picks its kernels by the CPU model: a matrix product in prepare() gave
    other bytes on an AVX-512 machine than on an AVX2 one. A build computes with the SSE4.2
    (Nehalem) kernels, as MKL's are capped (MKL_ENABLE_INSTRUCTIONS=SSE4_2), on every x86-64 CPU."""
    product = ("import numpy as np\na = np.random.default_rng(0).standard_normal((600, 900))\n"
               "b = np.random.default_rng(1).standard_normal((900, 300))\nx = (a @ b).tobytes()\n")
    (data_project / "prepare.py").write_text(f"{product}\n\ndef prepare(inputs, out, params):\n"
                                             f"    (out / 'x.bin').write_bytes(x)  # {uuid.uuid4()}\n")
    commit_all(data_project, "prepare with a matrix product")
    path = build(data_project, "datasets.split").stdout.split("\t")[1].split("\n")[0]
    nehalem = subprocess.run([f"{small_toolchain}/bin/python", "-c", product + "import sys; sys.stdout.buffer.write(x)"],
                             capture_output=True, check=True, env={"OPENBLAS_CORETYPE": "Nehalem",
                                                                   "OPENBLAS_NUM_THREADS": "1"}).stdout
    assert (Path(path) / "x.bin").read_bytes() == nehalem


def test_a_prepare_that_writes_nothing_fails_naming_it(data_project: Path) -> None:
    """It built an empty dataset, cached for good, and the training failed later on a missing file."""
    (data_project / "prepare.py").write_text(f"def prepare(inputs, out, params):\n    pass  # {uuid.uuid4()}\n")
    commit_all(data_project, "prepare writes nothing")
    proc = build(data_project, "datasets.split", check=False)
    assert proc.returncode == 1, proc.stdout
    assert "mlbuild: prepare() in prepare.py wrote nothing into out, so dataset 'split' would hold no data" \
        in proc.stderr, proc.stderr
    # folders and no file in them: an empty dataset as well, which `data add` refuses too
    (data_project / "prepare.py").write_text("def prepare(inputs, out, params):\n    (out / 'train' / 'x').mkdir("
                                             f"parents=True)  # {uuid.uuid4()}\n")
    commit_all(data_project, "prepare writes an empty folder")
    proc = build(data_project, "datasets.split", check=False)
    assert proc.returncode == 1 and "prepare() in prepare.py wrote nothing into out" in proc.stderr, proc.stderr


def test_a_prepare_that_writes_what_a_dataset_cannot_hold_fails_naming_it(data_project: Path) -> None:
    """A link to a host file (/etc/hostname) built a dataset whose readers read this machine's file,
    in no store path (nothing on another machine); a pipe failed in Nix, naming no script."""
    body = ("import os\ndef prepare(inputs, out, params):\n    (out / 'a.txt').write_text('a')\n"
            "    os.symlink('a.txt', out / 'ok')\n    os.symlink(inputs['raw'] / 'rows.txt', out / 'input')\n"
            "    os.symlink('.', out / 'self')\n")
    for bad, said in (("os.symlink('/etc/hostname', out / 'host')", "host, a symlink to /etc/hostname, outside out "
                       "and the Nix store; copy the file into out (shutil.copy), or link to a file of an input"),
                      ("os.symlink('../../x', out / 'up')", "up, a symlink to ../../x, outside out and the Nix store"),
                      ("os.mkfifo(out / 'fifo')", "fifo, not a file, folder or symlink (a pipe, socket or device)")):
        (data_project / "prepare.py").write_text(f"{body}    {bad}  # {uuid.uuid4()}\n")
        commit_all(data_project, f"prepare writes {bad}")
        proc = build(data_project, "datasets.split", check=False)
        assert proc.returncode == 1, proc.stdout
        assert f"mlbuild: dataset 'split': prepare() in prepare.py wrote {said}" in proc.stderr, proc.stderr
    (data_project / "prepare.py").write_text(f"{body}  # {uuid.uuid4()}\n")   # links inside out, or to an input
    commit_all(data_project, "prepare writes good links")
    out = Path(build(data_project, "datasets.split").stdout.split("\t")[1].split("\n")[0])
    assert os.readlink(out / "ok") == "a.txt" and (out / "input").read_text().startswith("0\n1\n")


def test_a_prepare_that_reads_an_input_it_did_not_list_is_told_to_list_it(data_project: Path) -> None:
    """It was a bare `KeyError: 'other'`."""
    (data_project / "prepare.py").write_text(f"def prepare(inputs, out, params):\n    inputs['other']  # {uuid.uuid4()}\n")
    commit_all(data_project, "prepare reads an input it does not list")
    proc = build(data_project, "datasets.split", check=False)
    assert proc.returncode == 1, proc.stdout
    assert ("KeyError: \"'other' is not an input of dataset 'split', which has 'raw': add it to "
            "[datasets.split].inputs in mlbuild.toml\"") in proc.stderr, proc.stderr


@pytest.fixture
def http_dir(tmp_path: Path):
    """A real HTTP server on loopback serving tmp_path/www."""
    import functools
    import http.server
    import threading

    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_dataset(data_project: Path, http_dir) -> None:
    www, base_url = http_dir
    payload = www / "remote.csv"
    payload.write_text("a,b\n1,2\n")
    good = hashlib.sha256(payload.read_bytes()).hexdigest()
    toml = data_project / "mlbuild.toml"
    base = toml.read_text()
    toml.write_text(base + f'\n[datasets.remote]\nurl = "{base_url}/remote.csv"\nsha256 = "{good}"\n')
    commit_all(data_project, "url dataset")
    out = build(data_project, "datasets.remote").stdout
    assert Path(out.split("\t")[1].split("\n")[0]).read_text() == "a,b\n1,2\n"
    wrong = hashlib.sha256(b"other").hexdigest()
    toml.write_text(base + f'\n[datasets.remote2]\nurl = "{base_url}/remote.csv"\nsha256 = "{wrong}"\n')
    commit_all(data_project, "wrong hash")
    proc = build(data_project, "datasets.remote2", check=False)
    assert proc.returncode == 1
    assert "hash mismatch" in proc.stderr and "remote2" in proc.stderr
    # Nix names a derivation and two base64 hashes; the user needs the dataset, the hex and the fix
    assert (f"dataset remote2: the file at {base_url}/remote.csv has sha256 {good}, not the {wrong} that "
            f'[datasets.remote2].sha256 pins: if the file changed on purpose, set sha256 = "{good}"') in proc.stderr


def test_push_and_pull_datasets_through_the_shared_store(data_project: Path, tmp_path: Path) -> None:
    from tests.integration.test_store_machines import make_store, store_env

    env = store_env(make_store(tmp_path / "shared"))
    # Content no other test run has: the local copy can then really be deleted and pulled back.
    write_tree(data_project, {"data": {"fresh": {"rows.txt": f"{uuid.uuid4()}\n" * 10}}})
    run_cli("data", "add", "fresh", "data/fresh", cwd=data_project)
    out = run_cli("data", "push", "fresh", cwd=data_project, env=env).stdout
    path = out.split()[-1]
    assert out.startswith(f"fresh: pushed {path}") and path.startswith("/nix/store/"), out
    assert run_cli("data", "push", "fresh", cwd=data_project, env=env).stdout.startswith(
        f"fresh: already in the shared store {path}")
    shutil.rmtree(data_project / ".mlbuild" / "gcroots")   # the project's roots: then the path can go
    subprocess.run(["nix-store", "--delete", path], check=True, capture_output=True)
    assert subprocess.run(["nix-store", "--check-validity", path], capture_output=True).returncode != 0
    out = run_cli("data", "pull", "fresh", cwd=data_project, env=env).stdout
    assert out.startswith(f"fresh: pulled {path}"), out
    subprocess.run(["nix-store", "--verify-path", path], check=True)
    assert run_cli("data", "pull", "fresh", cwd=data_project, env=env).stdout.startswith(
        f"fresh: already present {path}")



def test_pull_of_every_dataset_fetches_what_the_store_has_and_names_the_rest(data_project: Path, tmp_path: Path) -> None:
    """`data pull` stopped at the first dataset the shared store lacked, pulling none, naming a store
    path and `mlbuild store push`, even one that was here already (added, not pushed yet)."""
    from tests.integration.test_store_machines import make_store, store_env

    env = store_env(make_store(tmp_path / "shared"))
    write_tree(data_project, {"data": {"fresh": {"rows.txt": f"{uuid.uuid4()}\n" * 10}}})
    run_cli("data", "add", "fresh", "data/fresh", cwd=data_project)
    path = run_cli("data", "push", "fresh", cwd=data_project, env=env).stdout.split()[-1]
    shutil.rmtree(data_project / ".mlbuild" / "gcroots")
    subprocess.run(["nix-store", "--delete", path], check=True, capture_output=True)
    toml = data_project / "mlbuild.toml"
    toml.write_text(toml.read_text() + f'\n[datasets.remote]\nurl = "http://127.0.0.1:9/{uuid.uuid4()}.csv"\n'
                                       f'sha256 = "{hashlib.sha256(uuid.uuid4().bytes).hexdigest()}"\n')
    proc = run_cli("data", "pull", cwd=data_project, env=env, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"fresh: pulled {path}" in proc.stdout and "raw: already present" in proc.stdout, proc.stdout
    assert proc.stderr.startswith(f"Error: not in the shared store {tmp_path / 'shared' / 'cache'} nor here: remote "
                                  "(`mlbuild build datasets.remote` fetches it from http://127.0.0.1:9/"), proc.stderr
    subprocess.run(["nix-store", "--verify-path", path], check=True)


def _refused(root: Path, *expected: str, path: str = "data/new") -> None:
    proc = run_cli("data", "add", "new", path, cwd=root, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(e in proc.stderr for e in expected), proc.stderr


def test_files_that_cannot_go_into_the_store_are_refused_and_nothing_is_written(data_project: Path,
                                                                             tmp_path: Path) -> None:
    before = {f: (data_project / f).read_text() for f in ("mlbuild.toml", "mlbuild.lock")}
    outside = write_tree(tmp_path / "elsewhere", {"big.csv": "1,2\n"})
    new = write_tree(data_project / "data" / "new", {"a.csv": "1\n", "sub": {"b.csv": "2\n"}})
    link = new / "link.csv"
    link.symlink_to(outside / "big.csv")
    _refused(data_project, f"{link} is a symlink to {outside / 'big.csv'}, an absolute path",
             "in the Nix store it would point at nothing")
    link.unlink()
    up = new / "sub" / "up.csv"
    up.symlink_to("../../../elsewhere/big.csv")
    _refused(data_project, f"{up} is a symlink to ../../../elsewhere/big.csv, outside {new}",
             f"copy the file into {new}")
    up.unlink()
    os.mkfifo(new / "pipe")
    _refused(data_project, f"{new / 'pipe'} is not a file, folder or symlink")
    (new / "pipe").unlink()
    # Nothing was declared or locked by the refused adds.
    assert {f: (data_project / f).read_text() for f in before} == before
    # A link inside the dataset stays a link; a symlinked dataset folder is read through.
    (new / "sub" / "same.csv").symlink_to("../a.csv")
    (data_project / "data" / "alias").symlink_to(new)
    assert "2 files" in run_cli("data", "add", "new", "data/alias", cwd=data_project).stdout
    assert lock(data_project)["datasets"]["new"]["sha256"] == nar_sha256(str(new))


def test_a_new_name_for_a_declared_dataset_s_data_is_refused(data_project: Path) -> None:
    """`data add raw-typo data/raw` declared a second dataset over raw's data, and raw stayed on
    its old version."""
    before = {f: (data_project / f).read_text() for f in ("mlbuild.toml", "mlbuild.lock")}
    proc = run_cli("data", "add", "rwa", "data/raw", cwd=data_project, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (f"{data_project / 'data/raw'} is dataset 'raw' already, and mlbuild.toml declares no 'rwa': to pin its "
            "new version, run `mlbuild data add raw data/raw`") in proc.stderr, proc.stderr
    assert {f: (data_project / f).read_text() for f in before} == before
    # declared by hand, a second name over the same data is taken
    (data_project / "mlbuild.toml").write_text(before["mlbuild.toml"] + '\n[datasets.copy]\npath = "data/raw"\n')
    assert "unchanged" not in run_cli("data", "add", "copy", "data/raw", cwd=data_project).stdout


def test_an_empty_dataset_is_refused_and_nothing_is_written(data_project: Path) -> None:
    """An empty file or a folder of empty folders (data not exported yet) is no dataset."""
    before = {f: (data_project / f).read_text() for f in ("mlbuild.toml", "mlbuild.lock")}
    (data_project / "data" / "later" / "sub").mkdir(parents=True)
    _refused(data_project, f"{data_project / 'data' / 'later'} is a folder without a single file in it: "
             "dataset 'new' would hold no data", "then run `mlbuild data add new PATH` again", path="data/later")
    (data_project / "data" / "later" / "sub" / "dangling").symlink_to("nowhere")   # links only: no data either
    _refused(data_project, f"{data_project / 'data' / 'later'} is a folder without a single file in it",
             path="data/later")
    (data_project / "data" / "later" / "sub" / "dangling").unlink()
    (data_project / "data" / "rows.csv").write_text("")
    _refused(data_project, f"{data_project / 'data' / 'rows.csv'} is an empty file", path="data/rows.csv")
    assert {f: (data_project / f).read_text() for f in before} == before
    (data_project / "data" / "later" / "sub" / "x.csv").write_text("1\n")
    assert "1 file" in run_cli("data", "add", "new", "data/later", cwd=data_project).stdout


def test_status_and_diff_name_a_pipe_instead_of_failing_or_blocking(data_project: Path) -> None:
    os.mkfifo(data_project / "data" / "raw" / "pipe")
    try:
        out = run_cli("data", "status", cwd=data_project).stdout
        line = next(x for x in out.splitlines() if x.startswith("raw "))
        assert "unstorable" in line and "pipe" in line and "move it out of data/raw" in line
        # diff read every file: a pipe blocked it for ever; now it is refused at once
        proc = subprocess.run([*MLBUILD, "data", "diff", "raw"], cwd=data_project, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 1 and "pipe is not a file, folder or symlink" in proc.stderr
    finally:
        (data_project / "data" / "raw" / "pipe").unlink()


IRIS = "sepal,petal,class\n" + "".join(f"{i}.1,{i}.2,{'ab'[i % 2]}\n" for i in range(200))


def test_a_single_file_dataset_diffs_as_its_file(data_project: Path) -> None:
    write_tree(data_project, {"data": {"iris.csv": IRIS}})
    assert "iris-raw: 1 file, " in run_cli("data", "add", "iris-raw", "data/iris.csv", cwd=data_project).stdout
    rev = commit_all(data_project, "iris")
    (data_project / "data/iris.csv").write_text(IRIS.replace("5.1,5.2", "5.1,7.7"))   # one row, same size
    size = "2.5 KiB"
    assert run_cli("data", "diff", "iris-raw", cwd=data_project).stdout.splitlines() == [
        f"changed  iris.csv  {size} -> {size}"]
    run_cli("data", "add", "iris-raw", "data/iris.csv", cwd=data_project)
    commit_all(data_project, "one row changed")
    assert run_cli("data", "diff", "iris-raw", rev, cwd=data_project).stdout.splitlines() == [
        f"changed  iris.csv  {size} -> {size}"]


def _status(root: Path, name: str) -> str:
    out = run_cli("data", "status", cwd=root).stdout
    return next(x for x in out.splitlines() if x.startswith(f"{name} "))


def test_adding_another_path_declares_it(data_project: Path) -> None:
    write_tree(data_project, {"data": {"iris.csv": IRIS, "other.csv": IRIS.replace("7.1", "7.5")}})
    toml = data_project / "mlbuild.toml"
    toml.write_text(toml.read_text() + '\n# the raw export\n[datasets.iris-raw]   # from the lab\n'
                                       'path = "data/iris.csv"   # keep in sync\n# end\n')
    run_cli("data", "add", "iris-raw", "data/iris.csv", cwd=data_project)
    before = toml.read_text()
    out = run_cli("data", "add", "iris-raw", "data/other.csv", cwd=data_project).stdout
    assert "iris-raw: path data/iris.csv -> data/other.csv in mlbuild.toml" in out
    assert toml.read_text() == before.replace('path = "data/iris.csv"', 'path = "data/other.csv"')
    assert "present" in _status(data_project, "iris-raw")
    assert lock(data_project)["datasets"]["iris-raw"]["sha256"] == nar_sha256(str(data_project / "data/other.csv"))


def test_a_declaration_add_cannot_rewrite_is_refused_and_nothing_is_written(data_project: Path) -> None:
    write_tree(data_project, {"data": {"iris.csv": IRIS, "other.csv": IRIS.replace("7.1", "7.5")}})
    toml = data_project / "mlbuild.toml"
    toml.write_text(toml.read_text() + '\n[datasets]\niris-raw = { path = "data/iris.csv" }\n')
    run_cli("data", "add", "iris-raw", "data/iris.csv", cwd=data_project)
    before = {f: (data_project / f).read_text() for f in ("mlbuild.toml", "mlbuild.lock", ".gitignore")}
    proc = run_cli("data", "add", "iris-raw", "data/other.csv", cwd=data_project, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = len(before["mlbuild.toml"].splitlines())
    assert f"mlbuild.toml:{line}" in proc.stderr and 'path = "data/other.csv"' in proc.stderr, proc.stderr
    assert {f: (data_project / f).read_text() for f in before} == before


def test_a_dataset_outside_the_repository(data_project: Path, tmp_path: Path) -> None:
    far = write_tree(tmp_path / "elsewhere" / "far", {"rows.txt": f"{uuid.uuid4()}\n"})
    ignored = (data_project / ".gitignore").read_text()
    out = run_cli("data", "add", "far", str(far), cwd=data_project).stdout
    assert "far: 1 file, " in out
    assert f'[datasets.far]\npath = "{far}"\n' in (data_project / "mlbuild.toml").read_text()
    assert (data_project / ".gitignore").read_text() == ignored    # not git's to ignore
    commit_all(data_project, "far")
    row = _status(data_project, "far")
    assert "present" in row and lock(data_project)["datasets"]["far"]["sha256"] == nar_sha256(str(far))
    assert build(data_project, "datasets.far").stdout.split("\t")[1].split("\n")[0] == row.split()[-1]
    (far / "rows.txt").write_text("edited\n")
    assert "changed" in _status(data_project, "far")
    assert run_cli("data", "diff", "far", cwd=data_project).stdout.startswith("changed  rows.txt")


def test_a_dataset_in_the_repository_outside_the_project(small_project: Path, tmp_path: Path) -> None:
    repo = write_tree(tmp_path / "mono", {"proj": {f: (small_project / f).read_text()
                                                   for f in ("mlbuild.toml", "mlbuild.lock")}})
    git_repo(repo)
    write_tree(repo, {"shared": {"table.csv": IRIS}})
    out = run_cli("data", "add", "table", "../shared/table.csv", cwd=repo / "proj").stdout
    assert "table: 1 file, " in out
    assert f'path = "{repo / "shared" / "table.csv"}"' in (repo / "proj" / "mlbuild.toml").read_text()
    assert (repo / ".gitignore").read_text() == "/shared/table.csv\n"
    assert not (repo / "proj" / ".gitignore").exists()
    assert "shared" not in git(repo, "status", "--porcelain", "--untracked-files=all")
    assert "present" in _status(repo / "proj", "table")


def test_adds_at_once_keep_every_pin(data_project: Path) -> None:
    """Each `data add` read mlbuild.lock and mlbuild.toml before its import and wrote them back
    after it: of four adds run at once, one pin and one declaration survived, and all four said
    they had pinned theirs."""
    names = [f"set{i}" for i in range(4)]
    for n in names:
        write_tree(data_project, {"data": {n: {"rows.txt": f"{n} {uuid.uuid4()}\n" * 20000}}})
    procs = [subprocess.Popen([*MLBUILD, "data", "add", n, f"data/{n}"], cwd=data_project, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in names]
    for p in procs:
        assert p.wait() == 0, p.communicate()
    pins = lock(data_project)["datasets"]
    declared = tomllib.loads((data_project / "mlbuild.toml").read_text())["datasets"]
    for n in names:
        assert pins[n]["sha256"] == nar_sha256(str(data_project / "data" / n)), n
        assert declared[n] == {"path": f"data/{n}"}
    assert sorted((data_project / ".gitignore").read_text().split()) == sorted(["/data/raw/", *(f"/data/{n}/" for n in names)])
    assert "present" in _status(data_project, "set0")


def test_a_pin_made_while_mlbuild_lock_resolves_is_kept(data_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mlbuild lock` read the lock's dataset pins before resolving (seconds) and wrote them back
    after: a `data add` in between said it had pinned its dataset, and the pin was gone."""
    from mlbuild import toolchain
    from mlbuild.config import load_project

    write_tree(data_project, {"data": {"late": {"rows.txt": f"{uuid.uuid4()}\n"}}})
    snapshot = toolchain.snapshot_into_store

    def snapshot_then_add(*args: Any) -> Any:   # the add lands while `mlbuild lock` is under way
        run_cli("data", "add", "late", "data/late", cwd=data_project)
        return snapshot(*args)

    monkeypatch.setattr(toolchain, "snapshot_into_store", snapshot_then_add)
    toolchain.lock_project(load_project(data_project))
    assert lock(data_project)["datasets"]["late"]["sha256"] == nar_sha256(str(data_project / "data/late"))
    assert {"raw", "late"} <= set(lock(data_project)["datasets"])


def test_a_file_this_user_may_not_read_is_named_with_the_fix(data_project: Path, tmp_path: Path) -> None:
    """A file or folder of the data this user may not read (mode 000, an NFS export squashing root):
    `data status`, `data add` and `data diff` stopped in a PermissionError traceback, and `data add`
    of a folder whose only files were in an unreadable sub-folder called it empty."""
    unreadable = data_project / "data" / "raw" / "sub" / "x.bin"
    unreadable.chmod(0)
    # root may read anything: the commands run without the capabilities that let it
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps",
            "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*drop, *MLBUILD, *args], cwd=data_project, capture_output=True, text=True)

    said = (f"{unreadable}: Permission denied (reading dataset 'raw'); let this user read it (`chmod -R u+rX "
            f"{data_project / 'data' / 'raw'}`, or a group it is in), or run as a user who may")
    status = cli("data", "status")
    assert status.returncode == 0 and f"raw    path     unreadable  {said}" in status.stdout, status.stderr
    before = {f: (data_project / f).read_text() for f in ("mlbuild.toml", "mlbuild.lock")}
    for args in (("data", "add", "raw", "data/raw"), ("data", "diff", "raw")):
        proc = cli(*args)
        assert (proc.returncode, proc.stderr.startswith(f"Error: {said}")) == (1, True), proc.stderr
    assert {f: (data_project / f).read_text() for f in before} == before
    hidden = write_tree(tmp_path / "hidden", {"sub": {"only.csv": "1\n"}})
    (hidden / "sub").chmod(0)
    proc = cli("data", "add", "hidden", str(hidden))
    assert proc.returncode == 1 and proc.stderr.startswith(f"Error: {hidden / 'sub'}: Permission denied"), proc.stderr
    (hidden / "sub").chmod(0o755)


def test_a_folder_on_another_file_system_goes_in_without_the_fast_path(data_project: Path) -> None:
    """Without the fast path (no writable store, or staging elsewhere), a folder on another file
    system than the temp folder's (/dev/shm; /tmp a tmpfs) stopped in a FileExistsError traceback:
    its hard-link tree failed half made, and the copy that should replace it found it there."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == Path(tempfile.gettempdir()).stat().st_dev \
            or shm.stat().st_dev == Path("/nix/store").stat().st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    where = shm / f"mlbuild-test-{uuid.uuid4().hex}"
    try:
        data = write_tree(where / "data", {"a.csv": f"{where.name}\n", "sub": {"b.csv": "2\n"}})   # new to the store
        out = run_cli("data", "add", "shm", str(data), cwd=data_project, env={"MLBUILD_STAGING": str(where / "stage")})
        assert "2 files" in out.stdout
        assert lock(data_project)["datasets"]["shm"]["sha256"] == nar_sha256(str(data))
    finally:
        shutil.rmtree(where)


def test_a_full_temp_folder_without_the_fast_path_is_named_not_the_data(data_project: Path, tmp_path: Path) -> None:
    """Without the fast path, data on another file system than the temp folder's is copied there
    for nix-store --add-fixed. With the temp folder full, a folder stopped in a shutil.Error
    traceback, and a file was blamed: '<the dataset's file>: No space left on device (reading
    dataset ...); check the disk or mount it is on'."""
    shm = Path("/dev/shm")
    if os.geteuid() != 0 or not shm.is_dir() or shm.stat().st_dev == Path("/nix/store").stat().st_dev:
        pytest.skip("needs root (to mount a small temp folder) and /dev/shm on a file system of its own")
    where, tiny = shm / f"mlbuild-test-{uuid.uuid4().hex}", tmp_path / "tiny"
    tiny.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tiny)], check=True)
    try:
        data = write_tree(where / "data", {"big.bin": os.urandom(2 << 20), "a.csv": "1\n"})
        env = {"MLBUILD_STAGING": str(where / "stage"), "TMPDIR": str(tiny)}
        for name, path in (("folder", data), ("file", data / "big.bin")):
            proc = run_cli("data", "add", name, str(path), cwd=data_project, env=env, check=False)
            assert proc.returncode == 1 and proc.stderr.startswith(f"Error: {tiny}/mlbuild-import-"), proc.stderr
            assert f": No space left on device (copying {data / 'big.bin'} into the temp folder for nix-store " \
                   "--add-fixed); free space there or set TMPDIR to a folder with room" in proc.stderr
        assert "folder" not in lock(data_project)["datasets"]
    finally:
        subprocess.run(["umount", str(tiny)], check=True)
        shutil.rmtree(where)


def test_data_added_without_the_fast_path_is_known_by_its_stat_facts_after(data_project: Path) -> None:
    """Without the fast path, the files went into the store through a hard-link tree in the temp
    folder: each link, and its removal, changed the file's ctime, so the stat cache `data add`
    wrote missed, and the next command (the first build after it) read the whole dataset again."""
    from mlbuild.data import statcache

    where = Path(tempfile.mkdtemp(prefix="mlbuild-test-stage-", dir="/dev/shm")) if Path("/dev/shm").is_dir() else None
    if where is None or where.stat().st_dev == Path("/nix/store").stat().st_dev:
        pytest.skip("needs /dev/shm on a file system of its own (the staging folder there turns the fast path off)")
    try:
        data = write_tree(data_project / "data" / "fresh", {"a.csv": f"{uuid.uuid4().hex}\n", "sub": {"b.csv": "2\n"}})
        before = statcache.fingerprint(data)
        run_cli("data", "add", "fresh", "data/fresh", cwd=data_project, env={"MLBUILD_STAGING": str(where)})
        assert statcache.fingerprint(data) == before
        cached = json.loads((data_project / ".mlbuild" / "stat-fresh.json").read_text())
        assert cached["entries"] == before
    finally:
        shutil.rmtree(where)


def _another_terminal_edits(monkeypatch: pytest.MonkeyPatch, edit: Any,
                            record: Any = lambda target, cmd: target) -> list[Any]:
    """Run ``edit`` once the build's first Nix call has finished, as another terminal would while
    it ran; what each call was (``record(target, cmd)``) goes into the list returned."""
    from mlbuild import build as build_module

    real = build_module._run_build
    started: list[Any] = []

    def edit_after_the_first(target: str, cmd: list[str], on_progress: Any, **options: Any) -> Any:
        out = real(target, cmd, on_progress, **options)
        if not started:
            edit()
        started.append(record(target, cmd))
        return out

    monkeypatch.setattr(build_module, "_run_build", edit_after_the_first)
    return started


def _change_the_split(project: Path, train: str) -> None:
    """Change mlbuild.toml's split from train = 0.5 to ``train``, with a comment no earlier edit wrote."""
    toml = project / "mlbuild.toml"
    toml.write_text(toml.read_text().replace("train = 0.5", f"train = {train}") + f"# {uuid.uuid4()}\n")


def test_a_change_while_an_earlier_target_built_stops_the_build(data_project: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Nix reads the folder as each target starts: an edit made (in another terminal, by `data add`)
    while `build toolchain datasets.split` built the toolchain went into datasets.split, which was
    marked clean, at a commit that does not hold it."""
    from mlbuild import build as build_module
    from mlbuild.config import load_project
    from mlbuild.build import DirtyTreeError

    started = _another_terminal_edits(monkeypatch, lambda: _change_the_split(data_project, "0.6"))
    records = data_project / ".mlbuild" / "builds.jsonl"
    before = records.read_text() if records.exists() else ""
    with pytest.raises(DirtyTreeError) as e:
        build_module.build_targets(load_project(data_project), ["toolchain", "datasets.split"])
    assert started == ["toolchain"]
    assert str(e.value).startswith("the worktree changed while this build ran (toolchain built from the clean tree, "
                                   "before it changed); the next target would be built from the change and marked "
                                   "clean, so it stops here:\n  modified:  mlbuild.toml")
    assert '"datasets.split"' not in records.read_text()[len(before):]


def test_with_allow_dirty_a_change_while_an_earlier_target_built_is_built_marked_dirty(
        data_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`build --allow-dirty` from a clean tree, changed while the first target built: the build
    stopped with "pass --allow-dirty to build anyway", which it had been given. What it asks for
    is done instead: the rest is built from the change, marked dirty (Nix gets `dirty = true`)."""
    from mlbuild import build as build_module
    from mlbuild.config import load_project

    def edit() -> None:
        (data_project / "README.md").write_text(f"changed {uuid.uuid4()}\n")

    started = _another_terminal_edits(monkeypatch, edit, record=lambda target, cmd: (target, "dirty" in cmd))
    records = data_project / ".mlbuild" / "builds.jsonl"
    before = records.read_text() if records.exists() else ""
    summary = build_module.build_targets(load_project(data_project), ["toolchain", "datasets.split"],
                                         allow_dirty=True)
    assert started == [("toolchain", False), ("datasets.split", True)]
    assert summary.dirty
    new = [json.loads(line) for line in records.read_text()[len(before):].splitlines()]
    assert [(r["target"], r["dirty"]) for r in new] == [("toolchain", False), ("datasets.split", True)]


def test_a_change_before_the_check_rebuild_is_not_checked_instead(data_project: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`build --check`: Nix reads the folder again for the check's rebuild. An edit made while the
    target built was what got rebuilt and compared (another derivation), and the target was
    reported as checked, its own derivation never built again. The check now stops there."""
    from mlbuild import build as build_module
    from mlbuild.config import load_project
    from mlbuild.build import DirtyTreeError

    started = _another_terminal_edits(monkeypatch, lambda: _change_the_split(data_project, "0.6"))
    with pytest.raises(DirtyTreeError) as e:
        build_module.build_targets(load_project(data_project), ["datasets.split"], check=True)
    assert started == ["datasets.split"]   # no rebuild of the change
    assert str(e.value).startswith("the worktree changed while this build ran (datasets.split built from the clean "
                                   "tree, before it changed); the check would build the change again, not what was "
                                   "built, so it stops here:\n  modified:  mlbuild.toml"), str(e.value)


def test_with_allow_dirty_a_change_before_the_check_rebuild_is_not_checked_instead(
        data_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same in a tree dirty from the start (`--allow-dirty --check`): no clean check to stop
    it, so the check's rebuild is compared with the derivation that was built."""
    from mlbuild import build as build_module
    from mlbuild.config import load_project
    from mlbuild.errors import BuildError

    (data_project / "README.md").write_text(f"dirty {uuid.uuid4()}\n")
    _another_terminal_edits(monkeypatch, lambda: _change_the_split(data_project, "0.7"))
    with pytest.raises(BuildError, match=r"datasets\.split changed while it was built .*: its check evaluated "
                                         r"the change, /nix/store/\S+\.drv, not /nix/store/\S+\.drv, so nothing was compared; run `mlbuild "
                                         r"build --check datasets\.split` again"):
        build_module.build_targets(load_project(data_project), ["datasets.split"], check=True, allow_dirty=True)


def test_diff_against_a_revision_whose_lock_a_windows_editor_saved(data_project: Path) -> None:
    """A lock committed with a byte order mark (read_lock and Nix skip it): `data diff NAME REV`
    ended in a JSONDecodeError traceback ('Unexpected UTF-8 BOM'); a lock at REV that is not JSON
    at all did the same."""
    path = data_project / "mlbuild.lock"
    text = path.read_text()
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    commit_all(data_project, "lock saved on Windows")
    assert run_cli("data", "diff", "raw", "HEAD", cwd=data_project).stdout == "raw: no differences\n"
    path.write_text("{ not json\n")
    commit_all(data_project, "a broken lock")
    path.write_text(text)
    commit_all(data_project, "lock restored")
    err = run_cli("data", "diff", "raw", "HEAD~1", cwd=data_project, check=False).stderr
    assert err.startswith("Error: mlbuild.lock at revision 'HEAD~1' is not valid JSON (") and "Traceback" not in err


@pytest.mark.parametrize("entry", ['"0123"', '{}', '{"sha256": 7}', '{"sha256": "not hex"}'])
def test_diff_against_a_revision_whose_lock_entry_is_damaged(data_project: Path, entry: str) -> None:
    """A hand-edited lock at REV whose dataset entry is not {"sha256": HEX}: a TypeError or KeyError
    traceback, where a lock that is not JSON is refused naming the revision."""
    path = data_project / "mlbuild.lock"
    text = path.read_text()
    data = json.loads(text)
    data["datasets"]["raw"] = "@ENTRY@"
    path.write_text(json.dumps(data).replace('"@ENTRY@"', entry))
    commit_all(data_project, "a damaged lock")
    path.write_text(text)
    commit_all(data_project, "lock restored")
    err = run_cli("data", "diff", "raw", "HEAD~1", cwd=data_project, check=False).stderr
    assert err.startswith("Error: mlbuild.lock at revision 'HEAD~1' has no sha256 for dataset 'raw' ("), err
    assert "Traceback" not in err


def test_add_keeps_the_byte_order_mark_a_windows_editor_saved(data_project: Path) -> None:
    """mlbuild.toml with a byte order mark (read past by load_project and Nix): data add wrote it
    back without, a change to line 1 nobody made, as mixed line ends were before 058ba12."""
    config = data_project / "mlbuild.toml"
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes().replace(b"\n", b"\r\n"))
    write_tree(data_project, {"data": {"more.txt": "1\n2\n"}})
    run_cli("data", "add", "more", "data/more.txt", cwd=data_project)
    data = config.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf[") and data.endswith(b'\r\n[datasets.more]\r\npath = "data/more.txt"\r\n')


def test_diff_against_a_revision_from_before_the_dataset_was_renamed(data_project: Path) -> None:
    """A team renames a dataset (`[datasets.raw]` to `[datasets.rows]`, then `data add rows
    data/raw`): `data diff rows REV` with a REV from before said "dataset 'rows' is not in
    mlbuild.lock at revision" and nothing could compare the two versions. REV's pin of the dataset
    it declared at the same path is taken; a name with none says what REV pins."""
    config = data_project / "mlbuild.toml"
    config.write_text(config.read_text().replace("[datasets.raw]", "[datasets.rows]").replace('["raw"]', '["rows"]'))
    (data_project / "prepare.py").write_text(PREPARE.replace('"raw"', '"rows"'))
    write_tree(data_project, {"data": {"raw": {"rows.txt": "1\n2\n"}}})
    run_cli("data", "add", "rows", "data/raw", cwd=data_project)
    commit_all(data_project, "raw is rows now, with other rows")
    out = run_cli("data", "diff", "rows", "HEAD~1", cwd=data_project).stdout
    assert out.startswith("changed  rows.txt  "), out
    assert run_cli("data", "diff", "split", "HEAD~1", cwd=data_project, check=False).stderr.startswith(
        "Error: dataset 'split' is a prepare dataset")
    config.write_text(config.read_text().replace('path = "data/raw"', 'path = "data/rows"'))
    (data_project / "data" / "raw").rename(data_project / "data" / "rows")
    run_cli("data", "add", "rows", "data/rows", cwd=data_project)
    commit_all(data_project, "moved")
    err = run_cli("data", "diff", "rows", "HEAD~2", cwd=data_project, check=False).stderr
    # the revisions to give instead: a user who gave one from before the pin had no next step
    assert err == "Error: dataset 'rows' is not in mlbuild.lock at revision 'HEAD~2' (it pins 'raw' there, none " \
                  "declared at data/rows); give a revision that pins it (`git log --oneline -- mlbuild.lock` lists " \
                  "the lock's commits), or leave REV out to compare with the working copy\n", err
