"""mlbuild as most users run Nix: a multi-user install, a root `nix-daemon`, the user neither root
nor trusted (Nix's default `trusted-users = root`), so every store write goes through the daemon.

A throwaway user runs init -> data add -> build -> store push -> store pull against a daemon this
test starts on a socket of its own (``NIX_REMOTE=unix://...``; a daemon the machine already runs
is left alone) and stops after. The pull is first refused by the daemon, which does not trust the
user's store key, and mlbuild names the line to ask the admin for; once "the admin" adds it (the
daemon restarted with it), the pull fetches. Runs as root (it makes the user); ~1-3 minutes.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Iterator

import pytest

from mlbuild.storepath import check_output_path

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NIX_DAEMON = shutil.which("nix-daemon")


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    # errors="replace": `nix-store --roots` lists the roots of every process, whose paths other tests
    # made with names that are not UTF-8 (Debian 13's run failed decoding one)
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", **kw)  # type: ignore[call-overload]


class Daemon:
    """A root nix-daemon on ``socket`` (its own: NIX_DAEMON_SOCKET_PATH), with ``conf_dir`` as
    its NIX_CONF_DIR when given (nix.conf there includes the machine's)."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, conf_dir: Path | None = None) -> None:
        env = {**os.environ, "NIX_DAEMON_SOCKET_PATH": str(self.sock)}
        if conf_dir is not None:
            env["NIX_CONF_DIR"] = str(conf_dir)
        self.sock.unlink(missing_ok=True)
        self.proc = subprocess.Popen([str(NIX_DAEMON)], env=env, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(self.sock))
                    return
                except OSError:
                    time.sleep(0.1)
        raise AssertionError(f"nix-daemon did not listen on {self.sock}")

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)   # its per-connection children too
            self.proc.wait(timeout=30)
            self.proc = None
        self.sock.unlink(missing_ok=True)


def _driver_site(dest: Path) -> None:
    """The driver's dependencies (the `mlbuild` distribution's requirements, recursively) copied
    into ``dest``: the test's venv may live where the user cannot read (root's pyenv, /root)."""
    todo, seen = ["mlbuild"], set()
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:   # a marker that does not apply here
            continue
        todo += [re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in dist.requires or []   # type: ignore[union-attr]
                 if "extra ==" not in r]
        if name == "mlbuild":
            continue   # from the clone, on PYTHONPATH
        for f in dist.files or []:
            if f.parts and f.parts[0] == "..":
                continue   # scripts in bin/
            src = Path(str(dist.locate_file(f)))
            if src.is_file():
                (dest / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / f)


def _copied_python(dest: Path) -> str:
    """The test's interpreter (its binary, libpython and standard library, not its site-packages)
    copied into ``dest``, for a user who may not read where it lives (a pyenv under /root); run it
    with PYTHONHOME=dest and LD_LIBRARY_PATH=dest/lib."""
    base, name = Path(sys.base_prefix), f"python{sys.version_info[0]}.{sys.version_info[1]}"
    shutil.copytree(base / "lib" / name, dest / "lib" / name, symlinks=True,
                    ignore=shutil.ignore_patterns("site-packages", "test", "__pycache__", "idlelib", "tkinter"))
    for lib in (base / "lib").glob("libpython*.so*"):
        shutil.copy2(lib, dest / "lib" / lib.name)
    (dest / "bin").mkdir(parents=True)
    shutil.copy2(os.path.realpath(sys.executable), dest / "bin" / name)
    return str(dest / "bin" / name)


def _csv(path: Path) -> None:
    """Three classes of four features, with a salt: data no store holds yet, so `data add`
    imports it through the daemon."""
    rng = random.Random(os.getpid() ^ int(time.time()))
    rows = ["a,b,c,d,kind"]
    for k, name in enumerate(("red", "green", "blue")):
        rows += [",".join(f"{k * 3 + rng.gauss(0, 0.5):.4f}" for _ in range(4)) + f",{name}" for _ in range(30)]
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture
def walker() -> Iterator[dict[str, object]]:
    if os.geteuid() != 0 or NIX_DAEMON is None or shutil.which("useradd") is None:
        pytest.skip("needs root (it makes a user and starts nix-daemon), useradd and nix-daemon")
    work = Path(tempfile.mkdtemp(prefix="mlbuild-daemon-", dir="/tmp"))
    work.chmod(0o755)
    user = f"mlbd{os.getpid() % 100000}"
    home = work / "home"
    daemon = Daemon(work / "sock" / "socket")
    mine: list[str] = []
    try:
        assert _run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh", user]).returncode == 0
        home.mkdir()
        (work / "sock").mkdir()
        # the CLI as the user runs it: this checkout (tracked files, with the working tree's code
        # and Nix library) and the driver's dependencies, all where the user can read them
        clone = work / "mlbuild"
        assert _run(["git", "clone", "-q", str(REPO), str(clone)]).returncode == 0
        for d in ("mlbuild", "nix"):
            shutil.rmtree(clone / d)
            shutil.copytree(REPO / d, clone / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t"]
        _run([*git, "add", "-A"])
        _run([*git, "commit", "-qm", "working tree"])
        _driver_site(work / "site")
        _run(["chown", "-R", f"{user}:", str(home), str(clone)])
        env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
               "PYTHONPATH": f"{clone}:{work / 'site'}", "PYTHONDONTWRITEBYTECODE": "1",
               "NIX_REMOTE": f"unix://{daemon.sock}", "GIT_AUTHOR_NAME": "w", "GIT_AUTHOR_EMAIL": "w@w",
               "GIT_COMMITTER_NAME": "w", "GIT_COMMITTER_EMAIL": "w@w"}
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        for py in (os.path.realpath(sys.executable), f"/usr/bin/python{version}", "copy"):
            if py == "copy":   # the test's interpreter, copied where the user may run it
                py = _copied_python(work / "python")
                env.update({"PYTHONHOME": str(work / "python"), "LD_LIBRARY_PATH": str(work / "python" / "lib")})
            probe = _run(["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
                          py, "-c", "import mlbuild.cli.main"])
            if probe.returncode == 0:
                break
        else:
            pytest.skip(f"no Python {version} the user may run (the test's is {sys.executable}): {probe.stderr[-300:]}")
        daemon.start()
        yield {"user": user, "home": home, "work": work, "env": env, "py": py, "daemon": daemon, "clone": clone,
               "paths": mine}
    finally:
        daemon.stop()
        shutil.rmtree(home / "iris" / ".mlbuild" / "gcroots", ignore_errors=True)
        for p in reversed(mine):   # this test's own store paths, referrers first
            _run(["nix-store", "--delete", p])
        _run(["userdel", user])
        shutil.rmtree(work, ignore_errors=True)


def _as(w: dict[str, object], *args: str, cwd: Path, extra: dict[str, str] | None = None,
        ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**w["env"], **(extra or {})}   # type: ignore[dict-item]
    cmd = ["runuser", "-u", str(w["user"]), "--", "env", "-i", *(f"{k}={v}" for k, v in env.items())]
    proc = _run([*cmd, *args], cwd=cwd, timeout=600)
    if ok:
        assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_an_untrusted_daemon_user_builds_pushes_and_pulls(walker: dict[str, object]) -> None:
    w, home, work = walker, Path(str(walker["home"])), Path(str(walker["work"]))
    mlbuild = [str(w["py"]), "-m", "mlbuild.cli"]
    proj = home / "iris"
    (proj / "data").mkdir(parents=True)
    _csv(proj / "data" / "iris.csv")
    # init and the lock as root: the interpreter they name and snapshot is root's (a pyenv under
    # /root, which the user cannot run; Debian 13 has no python3.11 of its own); a team's project
    # and lock come from git the same way. The user does the rest.
    root_env = {**os.environ, "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory",
                "GIT_CONFIG_VALUE_0": "*"}
    for step in (["init", "--csv", "data/iris.csv", "--python", "python3.11"], ["lock"], ["prefetch"]):
        proc = _run([sys.executable, "-m", "mlbuild.cli", *step], cwd=proj, env=root_env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    _run(["chown", "-R", f"{w['user']}:", str(proj)])

    # data add without the fast path (the store is the daemon's): nix-store --add-fixed, a
    # content-addressed path
    added = _as(w, *mlbuild, "data", "add", "iris-raw", "data/iris.csv", cwd=proj).stdout
    data_path = re.search(r"/nix/store/\S+-iris-raw", added)
    assert data_path, added
    info = _run(["nix", "--extra-experimental-features", "nix-command", "path-info", "--json", data_path.group(0)])
    w["paths"].append(data_path.group(0))   # type: ignore[attr-defined]
    assert '"ca":"fixed:r:sha256:' in info.stdout.replace(" ", ""), info.stdout
    _as(w, "git", "add", "-A", cwd=proj)
    _as(w, "git", "commit", "-qm", "new project", cwd=proj)
    built = _as(w, *mlbuild, "build", "iris", cwd=proj).stdout
    assert re.search(r"built [1-9]", built) and "iris-model" in built, built
    package = (proj / ".mlbuild" / "gcroots" / "iris").readlink()
    closure = _run(["nix-store", "-qR", str(package)]).stdout.split()
    model = Path(next(p for p in closure if p.endswith("-iris-model")))
    split = proj / ".mlbuild" / "gcroots" / "dataset-iris-split"
    w["paths"] += [str(split.readlink())] * split.is_symlink() + [str(model), str(package)]   # type: ignore
    assert _run(["nix-store", "-q", "--roots", str(package)]).stdout.count(str(proj)) >= 1   # its roots count

    # a check that passed leaves no second copy of the model in the store (Nix's fallback path,
    # which this user may not remove itself: the daemon does)
    drv = re.search(r'"deriver":"([^"]+)"', _run(["nix", "--extra-experimental-features", "nix-command", "path-info",
                                                  "--json", str(model)]).stdout.replace(" ", ""))
    assert drv
    checked = _as(w, *mlbuild, "build", "--check", "iris.model", cwd=proj).stdout
    assert "reproducible: iris.model" in checked, checked
    assert not os.path.lexists(check_output_path(drv.group(1), str(model)))

    # the user's own shared store: init, push
    store, sec = work / "store", home / "keys" / "s.sec"
    keys = {"MLBUILD_STORE": str(store), "MLBUILD_STORE_SECRET_KEY": str(sec),
            "MLBUILD_STORE_PUBLIC_KEYS": str(sec.with_suffix(".pub"))}
    store.mkdir()
    _run(["chown", f"{w['user']}:", str(store)])
    _as(w, *mlbuild, "store", "--store", str(store), "init", "--generate-key", cwd=proj, extra=keys)
    key = sec.with_suffix(".pub").read_text().strip()
    pushed = _as(w, *mlbuild, "store", "push", str(package), cwd=proj, extra=keys).stdout
    assert re.search(r"pushed [1-9]\d* paths", pushed), pushed

    # gone from this machine's store, so the pull must fetch it
    for name in ("iris", "iris.model"):
        (proj / ".mlbuild" / "gcroots" / name).unlink(missing_ok=True)
    gone = _run(["nix-store", "--delete", str(package), str(model)])
    assert gone.returncode == 0, gone.stderr
    # the daemon does not trust the user's key, and ignores the one mlbuild passes
    refused = _as(w, *mlbuild, "store", "pull", str(package), cwd=proj, extra=keys, ok=False)
    assert refused.returncode == 1
    assert f"the Nix daemon does not trust this user (nix.conf's trusted-users), so it ignores the store settings " \
           f"mlbuild passes; ask the machine's admin to add `extra-trusted-public-keys = {key}` to /etc/nix/nix.conf " \
           f"and restart nix-daemon" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    # the admin adds it
    conf = work / "etc-nix"
    conf.mkdir()
    (conf / "nix.conf").write_text(f"!include {os.environ.get('NIX_CONF_DIR', '/etc/nix')}/nix.conf\n"
                                   f"extra-trusted-public-keys = {key}\n")
    daemon = w["daemon"]
    daemon.stop()   # type: ignore[attr-defined]
    daemon.start(conf)   # type: ignore[attr-defined]
    pulled = _as(w, *mlbuild, "store", "pull", str(package), cwd=proj, extra=keys).stdout
    assert re.search(r"fetched [1-9]", pulled), pulled
    assert _run(["nix-store", "--check-validity", str(package), str(model)]).returncode == 0
