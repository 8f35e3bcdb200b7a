"""A user the Nix daemon does not trust (a multi-user install, Nix's default `trusted-users = root`):
the daemon ignores the store settings mlbuild passes, so what only the admin can give is named."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest

from mlbuild import _nix
from mlbuild.build import shared_store, warn_store_keys
from mlbuild.config import load_project
from mlbuild.errors import NixError
from mlbuild.store import StoreConfig, pull
from mlbuild.store.layout import Layout
from tests.unit.test_store_publish import fake_path, put, store  # noqa: F401  (fixture)


@pytest.fixture(autouse=True)
def _no_store_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MLBUILD_STORE", "MLBUILD_STORE_SECRET_KEY", "MLBUILD_STORE_PUBLIC_KEYS", "NIX_REMOTE"):
        monkeypatch.delenv(var, raising=False)


def test_whether_the_daemon_trusts_this_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    monkeypatch.setenv("NIX_REMOTE", "daemon")
    assert _nix.untrusted_daemon_user({"trusted-users": "someone-else @no-such-group"})
    assert not _nix.untrusted_daemon_user({"trusted-users": f"someone-else {me}"})
    assert not _nix.untrusted_daemon_user({"trusted-users": "*"})
    monkeypatch.setenv("NIX_REMOTE", "local")   # no daemon: the options this process passes count
    assert not _nix.untrusted_daemon_user({"trusted-users": "someone-else"})
    # Nix's default (`auto`): the daemon where this user may not write Nix's state and a socket is there
    monkeypatch.delenv("NIX_REMOTE")
    monkeypatch.setenv("NIX_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state" / "daemon-socket").mkdir(parents=True)
    (tmp_path / "state" / "daemon-socket" / "socket").touch()
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert _nix.untrusted_daemon_user({"trusted-users": "someone-else"})
    # a store of its own (a CI user's NIX_CONFIG="store = $HOME/nix") is no daemon's, nor one NIX_REMOTE names
    for config, remote in (("store = /home/ci/nix", ""), ("store = local?root=/home/ci/nix", "daemon")):
        monkeypatch.setenv("NIX_CONFIG", config)
        monkeypatch.setenv("NIX_REMOTE", remote)
        assert not _nix.untrusted_daemon_user({"trusted-users": "someone-else"}), (config, remote)
    monkeypatch.setenv("NIX_CONFIG", "store = daemon")
    assert _nix.untrusted_daemon_user({"trusted-users": "someone-else"})
    monkeypatch.delenv("NIX_CONFIG")
    monkeypatch.delenv("NIX_REMOTE")
    (tmp_path / "state" / "daemon-socket" / "socket").unlink()
    assert not _nix.untrusted_daemon_user({"trusted-users": "someone-else"})


def test_pull_refused_by_the_daemon_names_the_key_to_ask_the_admin_for(store: tuple[StoreConfig, Path],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """mlbuild trusts the store's key, the daemon does not (it ignores `--option trusted-public-keys`
    from a user it does not trust): pull showed Nix's raw `lacks a valid signature`."""
    cfg, chroot = store
    path = put(cfg, chroot, fake_path(chroot, "model", "m")).store_path

    def copy(*args: object, **kw: object) -> None:
        raise NixError("`nix copy` failed", f"error: cannot add path '{path}' because it lacks a valid signature")

    monkeypatch.setattr(_nix, "invalid_paths_in", lambda paths, store=None: list(paths))
    monkeypatch.setattr(_nix, "copy_from_cache", copy)
    monkeypatch.setattr(_nix, "untrusted_daemon_user", lambda config=None: True)
    key = cfg.secret_key().public
    with pytest.raises(NixError) as e:
        pull(cfg, [path], fast=False)
    assert str(e.value).startswith(
        f"cannot fetch {path} from the store {cfg.root}, signed by {key}: the Nix daemon does not trust this user "
        f"(nix.conf's trusted-users), so it ignores the store settings mlbuild passes; ask the machine's admin to "
        f"add `extra-trusted-public-keys = {key}` to /etc/nix/nix.conf and restart nix-daemon")
    monkeypatch.setattr(_nix, "untrusted_daemon_user", lambda config=None: False)   # a trusted user: Nix's words
    with pytest.raises(NixError, match="^`nix copy` failed"):
        pull(cfg, [path], fast=False)


def test_a_build_the_daemon_did_not_let_use_the_store_names_the_lines_to_ask_for(
        store: tuple[StoreConfig, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The daemon ignored the store mlbuild passed (`extra-substituters`, its key) and the model
    was trained again (`built 2, substituted 0`) without a word: mlbuild trusted the key itself."""
    cfg, chroot = store
    key = cfg.secret_key().public
    chroot.mkdir(exist_ok=True)
    (chroot / "mlbuild.toml").write_text(f'[project]\nname = "p"\n\n[store]\npath = "{cfg.root}"\n'
                                         f'public-keys = ["{key}"]\n')
    found = shared_store(load_project(chroot))
    assert found is not None
    conf = {"trusted-users": "root", "substituters": "", "trusted-public-keys": "cache.nixos.org-1:x"}
    monkeypatch.setattr(_nix, "nix_config", lambda: conf)
    monkeypatch.setattr(_nix, "untrusted_daemon_user", lambda config=None: True)
    warn_store_keys(found[0])
    err = capsys.readouterr().err
    assert f"the shared store {cfg.root} was not used, so what it holds was built again: the Nix daemon does " \
           f"not trust this user" in err
    assert f"ask the machine's admin to add `extra-substituters = {cfg.url}`; `extra-trusted-public-keys = {key}` " \
           f"to /etc/nix/nix.conf and restart nix-daemon" in err
    conf.update({"trusted-substituters": cfg.url, "trusted-public-keys": f"cache.nixos.org-1:x {key}"})
    warn_store_keys(found[0])   # the admin did (a trusted substituter lets a call name it)
    assert capsys.readouterr().err == ""


def test_a_user_outside_the_daemon_s_group_is_told_what_to_ask_for() -> None:
    """Not in nix-users (Debian's nix-bin: the socket's folder is 0770 root:nix-users), every
    command showed only Nix's `getting status of /nix/var/nix/daemon-socket/socket: Permission denied`."""
    me = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.stat(os.path.dirname(_nix.DAEMON_SOCKET)).st_gid).gr_name \
        if os.path.exists(os.path.dirname(_nix.DAEMON_SOCKET)) else "nix-users"
    want = (f": this user may not use the Nix daemon (its socket {_nix.DAEMON_SOCKET}: permission denied); ask the "
            f"machine's admin to add it to the daemon's group (`usermod -aG {group} {me}`), then log in again")
    plain = f"error: getting status of {_nix.DAEMON_SOCKET}: Permission denied"
    coloured = f"\x1b[31;1merror:\x1b[0m getting status of \x1b[35;1m{_nix.DAEMON_SOCKET}\x1b[0m: Permission denied"
    assert _nix.daemon_denied_hint(plain) == _nix.daemon_denied_hint(coloured) == want
    assert _nix.daemon_denied_hint("error: cannot connect to socket at "
                                   f"'{_nix.DAEMON_SOCKET}': Permission denied") == want
    assert _nix.daemon_denied_hint("error: builder for 'x.drv' failed with exit code 1") == ""


def test_pull_leaves_the_store_to_the_daemon_when_nix_remote_names_it(
        store: tuple[StoreConfig, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """root with NIX_REMOTE=daemon (the multi-user installer's profile sets it for every user): the
    store is writable, so pull restored an uncompressed NAR straight into it, then `nix-store
    --load-db` through the daemon failed ("you don't have sufficient rights to use this command")
    and the unregistered tree was left in /nix/store."""
    from mlbuild.store.restore import real_store_dir, restore_paths
    cfg, chroot = store
    monkeypatch.setenv("NIX_REMOTE", "daemon")
    assert real_store_dir(None) is None
    monkeypatch.setenv("NIX_REMOTE", "unix:///run/nix/socket")
    assert real_store_dir(None) is None
    # data add's fast path reads NIX_REMOTE alike: `auto` was a daemon to it, the local store to pull
    from mlbuild.data.importer import fast_path_available
    for value in ("daemon", "unix:///run/nix/socket", "ssh-ng://host", "", "local", "auto"):
        monkeypatch.setenv("NIX_REMOTE", value)
        assert fast_path_available() == (real_store_dir(None) is not None), value
    local = tmp_path / "local"
    (local / "nix" / "var" / "nix" / "db").mkdir(parents=True)
    (local / "nix" / "store").mkdir(parents=True)
    assert real_store_dir(str(local)) == local / "nix" / "store"   # a chroot store given by path: this process's
    monkeypatch.delenv("NIX_REMOTE")

    def refused(*args: object, **kw: object) -> None:
        raise NixError("`nix-store --load-db ...` failed (exit 1)", "error: you don't have sufficient rights")

    info = put(cfg, chroot, fake_path(chroot, "w.safetensors", os.urandom(1 << 16)))
    monkeypatch.setattr(_nix, "invalid_paths_in", lambda paths, store=None: list(paths))
    monkeypatch.setattr(_nix, "load_db", refused)
    with pytest.raises(NixError, match="sufficient rights"):
        restore_paths(Layout(cfg.root), [info], cfg.trusted_keys(), str(local), local / "nix" / "store")
    assert [p.name for p in (local / "nix" / "store").iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.parametrize("config", ["store = /tmp/machine-b", "sandbox = false\nstore = daemon\n",
                                    "store=ssh-ng://host   # a comment", "store = local?root=/tmp/machine-b"])
def test_a_store_nix_config_names_is_left_to_nix(monkeypatch: pytest.MonkeyPatch, config: str) -> None:
    """`NIX_CONFIG="store = /tmp/machine-b" mlbuild data add ...` (store-config/README.md's fresh
    machine, a CI runner with a store of its own) wrote the dataset into /nix/store, unregistered
    there, and registered it in /tmp/machine-b, which then held a valid path with no files; `store
    pull` restored NARs the same way. Only Nix writes a store NIX_CONFIG names."""
    from mlbuild.data.importer import fast_path_available
    from mlbuild.store.restore import real_store_dir
    monkeypatch.delenv("NIX_REMOTE", raising=False)
    for local in ("", "store = auto", "store = local", "sandbox = false"):
        monkeypatch.setenv("NIX_CONFIG", local)
        assert _nix.store_is_local(), local
    monkeypatch.setenv("NIX_CONFIG", config)
    assert not _nix.store_is_local()
    assert real_store_dir(None) is None and not fast_path_available()


def test_a_store_path_s_files_are_read_where_the_store_nix_config_names_keeps_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`NIX_CONFIG="store = /tmp/machine-b" mlbuild validate digits` built the report there, then
    read /nix/store/...-digits-validation/metrics.json on the host: a FileNotFoundError traceback;
    `image push` said the archive 'is not an mlbuild image archive'."""
    p = "/nix/store/00000000000000000000000000000000-digits-validation"
    for config, real in [("", p), ("store = auto", p), ("store = daemon", p), ("store = ssh-ng://host", p),
                         ("store = /tmp/machine-b", "/tmp/machine-b" + p),
                         ("sandbox = false\nstore = /tmp/machine-b/\n", "/tmp/machine-b" + p),
                         ("store = local?root=/tmp/machine-c&state=/x", "/tmp/machine-c" + p), ("store = /", p)]:
        monkeypatch.setenv("NIX_CONFIG", config)
        assert _nix.real_path(p) == real, config


def test_a_store_nix_remote_names_is_where_a_store_path_s_files_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nix takes NIX_REMOTE for its store where NIX_CONFIG names none: with NIX_REMOTE=/tmp/machine-b a
    build ran there, then validate read /nix/store/...-digits-validation/metrics.json (a
    FileNotFoundError traceback) and pushes read the host's /nix/store. NIX_CONFIG's store wins."""
    from mlbuild.store.compression import real_path_in

    p = "/nix/store/00000000000000000000000000000000-digits-validation"
    monkeypatch.delenv("NIX_CONFIG", raising=False)
    for remote, real in [("", p), ("auto", p), ("daemon", p), ("unix:///nix/var/nix/daemon-socket/socket", p),
                         ("/tmp/machine-b", "/tmp/machine-b" + p),
                         ("local?root=/tmp/machine-c", "/tmp/machine-c" + p),
                         ("local?real=/tmp/machine-d/store", "/tmp/machine-d/store" + p[len("/nix/store"):])]:
        monkeypatch.setenv("NIX_REMOTE", remote)
        assert _nix.real_path(p) == real, remote
        assert real_path_in(p, None) == real, remote
    monkeypatch.setenv("NIX_CONFIG", "store = daemon")   # NIX_REMOTE is only Nix's default for `store`
    assert _nix.real_path(p) == p and real_path_in(p, None) == p
    monkeypatch.setenv("NIX_CONFIG", "store = /tmp/machine-e")
    assert _nix.real_path(p) == "/tmp/machine-e" + p == real_path_in(p, None)


def test_a_store_program_runs_under_nix_shell_in_a_runner_s_own_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """`NIX_CONFIG="store = /tmp/machine-b" mlbuild serve digits` built the package there, then
    exec'd /nix/store/...-digits-package/bin/serve, which the host lacks: a FileNotFoundError
    traceback (where the host held the path, its copy ran). `nix shell` runs it with that store at
    /nix/store; the machine's own store runs the program itself, as before."""
    monkeypatch.setattr(_nix, "_which", lambda tool: f"/usr/bin/{tool}")
    pkg = "/nix/store/00000000000000000000000000000000-digits-package"
    monkeypatch.delenv("NIX_REMOTE", raising=False)
    for config in ("", "store = auto", "store = daemon"):
        monkeypatch.setenv("NIX_CONFIG", config)
        assert _nix.store_program(f"{pkg}/bin/serve", ["--port", "8080"]) == [f"{pkg}/bin/serve", "--port", "8080"]
    for env, value in (("NIX_CONFIG", "store = /tmp/machine-b"), ("NIX_REMOTE", "/tmp/machine-b")):
        monkeypatch.delenv("NIX_CONFIG", raising=False)
        monkeypatch.setenv(env, value)
        assert _nix.store_program(f"{pkg}/bin/serve", ["--port", "8080"]) == [
            "/usr/bin/nix", "--extra-experimental-features", "nix-command flakes", "shell", pkg,
            "--command", f"{pkg}/bin/serve", "--port", "8080"], env


def test_serve_execs_its_program_under_nix_shell_in_a_runner_s_own_store(
        tree, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from mlbuild import build as b
    from mlbuild.cli.main import cli

    pkg = "/nix/store/00000000000000000000000000000000-m-package"
    root = tree({"mlbuild.toml": '[project]\nname = "p"\n[models.m]\nscript = "model.py"\n', "model.py": ""})
    monkeypatch.setattr(b, "build_targets", lambda project, targets, **kw: b.Summary(outputs=[b.Built(targets[0], pkg)]))
    ran: list[list[str]] = []
    monkeypatch.setattr("os.execv", lambda program, argv: ran.append([program, *argv]))
    monkeypatch.setattr(_nix, "_which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.delenv("NIX_REMOTE", raising=False)
    monkeypatch.setenv("NIX_CONFIG", "store = /tmp/machine-b")
    monkeypatch.chdir(root)
    out = CliRunner().invoke(cli, ["serve", "m", "--port", "8080"])
    assert out.exit_code == 0, out.output
    assert ran == [["/usr/bin/nix", "/usr/bin/nix", "--extra-experimental-features", "nix-command flakes", "shell", pkg,
                    "--command", f"{pkg}/bin/serve", "--port", "8080"]]


def test_a_derivation_is_read_where_a_runner_s_own_store_keeps_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`NIX_CONFIG="store = /tmp/machine-b" mlbuild build digits` after `data add` of a version only
    that store holds trained, then ended in a FileNotFoundError traceback for
    /nix/store/...-digits-raw.drv (read to root the dataset, and by --check) on the host."""
    drv = f"/nix/store/{'d' * 32}-raw.drv"
    out = f"/nix/store/{'o' * 32}-raw"
    (tmp_path / "nix" / "store").mkdir(parents=True)
    (tmp_path / drv.lstrip("/")).write_text(f'Derive([("out","{out}","r:sha256","{"0" * 64}")],[],[],"x","b",[],[])')
    monkeypatch.delenv("NIX_REMOTE", raising=False)
    monkeypatch.setenv("NIX_CONFIG", f"store = {tmp_path}")
    assert _nix.drv_outputs(drv) == {"out": out} and _nix.is_fixed_output(drv)
