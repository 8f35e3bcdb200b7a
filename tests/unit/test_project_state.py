"""`.mlbuild`, the project's state folder, where it cannot be used: a file in its place, a
read-only checkout. Each command says so in one line (it was a FileExistsError or OSError
traceback, after the build for `mlbuild build`); commands that only read keep working."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlbuild.nar import nar_sha256
from tests.conftest import MLBUILD, run_cli, write_tree


def project(root: Path) -> Path:
    write_tree(root, {"mlbuild.toml": '[project]\nname = "p"\n[datasets.raw]\npath = "data/x.csv"\n'
                                      '[models.m]\nscript = "m.py"\ndatasets = ["raw"]\n[models.m.params]\nlr = 0.1\n',
                      "data": {"x.csv": "1,2\n"}})
    lock = {"version": 1, "interpreter": {"snapshot": {"name": "s", "sha256": "0" * 64}},
            "datasets": {"raw": {"sha256": nar_sha256(str(root / "data" / "x.csv")), "kind": "path"}}}
    (root / "mlbuild.lock").write_text(json.dumps(lock))
    return root


def read_only(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``mlbuild ARGS`` in ``root``, in a mount namespace where it is a read-only bind mount."""
    r = shlex.quote(str(root))
    script = f"mount --bind {r} {r} && mount -o remount,bind,ro {r} && cd {r} && exec {shlex.join(MLBUILD)} {shlex.join(args)}"
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)


def test_a_file_named_mlbuild_is_named_with_the_fix(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    (root / ".mlbuild").write_text("notes\n")
    for args in (["build", "datasets.raw"], ["data", "add", "raw", "data/x.csv"], ["exp", "run", "m"],
                 ["metrics", "history", "m"]):
        proc = run_cli(*args, cwd=root, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert f"Error: {root / '.mlbuild'} is a file, not a folder" in proc.stderr, (args, proc.stderr)
        assert f"`mv {root / '.mlbuild'} {root / '.mlbuild'}.old`" in proc.stderr
    assert run_cli("data", "status", cwd=root).stdout.startswith("raw ")   # reading needs no state
    assert (root / ".mlbuild").read_text() == "notes\n"


def test_a_read_only_checkout_refuses_to_write_and_still_reads(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    # The pinned version is in the store (else status says "missing", whatever the files): the test
    # passed only after another test had imported the same bytes under the same name.
    shutil.copy(root / "data" / "x.csv", tmp_path / "raw")
    subprocess.run(["nix-store", "--add-fixed", "--recursive", "sha256", str(tmp_path / "raw")], check=True,
                   capture_output=True)
    (root / ".mlbuild").mkdir()
    (root / "data" / "x.csv").write_text("3,4\n")   # changed: status hashes it, and cannot cache the hash
    before = {f: (root / f).read_text() for f in ("mlbuild.toml", "mlbuild.lock")}
    for args in (["build", "datasets.raw"], ["data", "add", "raw", "data/x.csv"]):
        proc = read_only(root, *args)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert f"Error: {root / '.mlbuild'} cannot be written (Read-only file system)" in proc.stderr, proc.stderr
    proc = read_only(root, "data", "status")
    assert proc.returncode == 0 and "changed" in proc.stdout, proc.stdout + proc.stderr
    proc = read_only(root, "exp", "show", "m")
    assert proc.returncode == 0 and "no experiments of m yet" in proc.stdout, proc.stdout + proc.stderr
    assert {f: (root / f).read_text() for f in before} == before and list((root / ".mlbuild").iterdir()) == []


def full(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``mlbuild ARGS`` in ``root``, in a mount namespace where its .mlbuild is a full 64 KiB tmpfs."""
    s = shlex.quote(str(root / ".mlbuild"))
    script = (f"mount -t tmpfs -o size=64k tmpfs {s} && echo '*' > {s}/.gitignore && "
              f"(dd if=/dev/zero of={s}/fill bs=1k count=100 2>/dev/null; true) && "
              f"cd {shlex.quote(str(root))} && exec {shlex.join(MLBUILD)} {shlex.join(args)}")
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)


def test_a_full_mlbuild_folder_is_named_and_the_project_files_are_kept(tmp_path: Path) -> None:
    """A full disk stopped `data add` (and build, exp, metrics) with an OSError traceback that
    named no file."""
    root = project(tmp_path / "p")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / ".mlbuild").mkdir()
    before = {f: (root / f).read_text() for f in ("mlbuild.toml", "mlbuild.lock")}
    write_tree(root, {"data": {"new": {"rows.txt": "1\n2\n"}}})
    proc = full(root, "data", "add", "new", "data/new")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("Error: No space left on device"), proc.stderr
    assert f"{root / '.mlbuild'}" in proc.stderr and "free space there, then run the command again" in proc.stderr
    assert {f: (root / f).read_text() for f in before} == before


def test_a_full_disk_leaves_no_empty_gitignore_in_mlbuild(tmp_path: Path) -> None:
    """.mlbuild/.gitignore was written in place: a full disk left it empty, and kept so (only a
    missing one was written), so every file of .mlbuild was untracked and each build refused the
    dirty worktree for good, after space was freed. An empty one left so is written again."""
    root = project(tmp_path / "p")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / ".gitignore").write_text("/data/\n")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    (root / ".mlbuild").mkdir()
    s, r = shlex.quote(str(root / ".mlbuild")), shlex.quote(str(root))
    add = f"{shlex.join(MLBUILD)} data add raw data/x.csv"
    script = (f"mount -t tmpfs -o size=64k tmpfs {s} && (dd if=/dev/zero of={s}/fill bs=1k count=100 2>/dev/null; true) "
              f"&& cd {r} && {{ {add}; echo \"size $(stat -c %s .mlbuild/.gitignore 2>/dev/null)\"; rm .mlbuild/fill; "
              f"{add} >/dev/null && git status --porcelain; }}")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert "cannot be written (No space left on device)" in proc.stderr and "free space there" in proc.stderr, proc.stderr
    assert "size \n" in proc.stdout and ".mlbuild" not in proc.stdout.split("size", 1)[1], proc.stdout + proc.stderr
    (root / ".mlbuild" / ".gitignore").write_text("")   # left by an older mlbuild
    run_cli("data", "add", "raw", "data/x.csv", cwd=root)
    assert (root / ".mlbuild" / ".gitignore").read_text() == "*\n"


def test_appended_records_start_on_a_line_of_their_own(tmp_path: Path) -> None:
    from mlbuild import atomic

    log = tmp_path / "builds.jsonl"
    log.write_text('{"target": "a"}\n{"targ')   # torn: a command killed while writing it
    atomic.append_line(log, '{"target": "b"}')
    assert log.read_text().splitlines()[-1] == '{"target": "b"}'


def test_a_replaced_file_is_on_disk_before_its_rename(tmp_path: Path) -> None:
    """mlbuild.lock, mlbuild.toml, stat caches were renamed into place unsynced: after a power cut
    the rename alone may be on disk, an empty file where the old one was. Traced: the temp file is
    fsynced before the rename."""
    target = tmp_path / "mlbuild.lock"
    code = f"from pathlib import Path; from mlbuild import atomic; atomic.write_text(Path({str(target)!r}), '{{}}')"
    proc = subprocess.run(["strace", "-f", "-e", "trace=openat,fsync,rename", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    calls = [line for line in proc.stderr.splitlines() if str(tmp_path) in line or line.startswith("fsync(")]
    opened = next(line for line in calls if "openat(" in line and ".mlbuild.lock." in line)
    fd = opened.rsplit("=", 1)[1].strip()
    assert f"fsync({fd})" in calls[calls.index(opened) + 1:][0], calls
    assert "rename(" in calls[-1] and target.read_text() == "{}", calls


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_a_lock_file_another_account_made_is_taken(tmp_path: Path) -> None:
    """In a shared checkout, .mlbuild/lock made by a teammate (0644 by their umask) could not be
    opened for writing: `data add` ended in a PermissionError traceback after its import, and
    `mlbuild lock` after its resolve. flock needs no write access."""
    lock = tmp_path / "lock"
    lock.touch(mode=0o644)
    os.chown(lock, 12345, 12345)
    script = ("import sys; from pathlib import Path; from mlbuild import atomic\n"
              "with atomic.exclusive(Path(sys.argv[1])): print('held')")
    # root without the capability that lets it write another account's files: as a teammate is
    proc = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                           "--inh-caps=-dac_override,-dac_read_search", sys.executable, "-c", script, str(lock)],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0 and proc.stdout == "held\n", proc.stderr


def test_a_read_only_checkout_is_refused_before_the_import(tmp_path: Path) -> None:
    """`data add` imported the data (minutes for a big dataset) and only then found .mlbuild
    read-only, at the project lock; `mlbuild lock` resolved and snapshotted first."""
    from mlbuild.storepath import fixed_output_path

    root = project(tmp_path / "p")
    (root / ".mlbuild").mkdir()
    write_tree(root, {"data": {"fresh.csv": f"{tmp_path}\n"}})   # content no store holds yet
    proc = read_only(root, "data", "add", "fresh", "data/fresh.csv")
    assert proc.returncode == 1 and f"{root / '.mlbuild'} cannot be written" in proc.stderr, proc.stderr
    path = fixed_output_path(nar_sha256(str(root / "data" / "fresh.csv")), "fresh", recursive=True)
    assert subprocess.run(["nix-store", "--check-validity", path], capture_output=True).returncode != 0
    proc = read_only(root, "lock")
    assert proc.returncode == 1 and f"{root / '.mlbuild'} cannot be written" in proc.stderr, proc.stderr
