"""store-config/setup-store, run as each machine of a team runs it (its own key file and nix.conf)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).resolve().parents[2] / "store-config" / "setup-store"


def setup_store(tmp_path: Path, machine: str, **env: str) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / machine / "nix.conf"
    full = {**os.environ, "MLBUILD_STORE": str(tmp_path / "store"), "MLBUILD_STORE_NIX_CONF": str(conf),
            "MLBUILD_STORE_SECRET_KEY": str(tmp_path / machine / "store.sec"), **env}
    if "MLBUILD_STORE_PUBLIC_KEYS" not in env:
        full.pop("MLBUILD_STORE_PUBLIC_KEYS", None)
    return subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True)


def trusted(tmp_path: Path, machine: str) -> str:
    line = next(x for x in (tmp_path / machine / "nix.conf").read_text().splitlines()
                if x.startswith("extra-trusted-public-keys"))
    return line.split(" = ", 1)[1]


def test_the_store_s_key_is_made_once_and_never_replaced(tmp_path: Path) -> None:
    first = setup_store(tmp_path, "a")
    assert first.returncode == 0, first.stderr
    key = (tmp_path / "a" / "store.pub").read_text().strip()
    published = tmp_path / "store" / "mlbuild" / "public-key"
    assert published.read_text().strip() == key and trusted(tmp_path, "a") == key
    assert setup_store(tmp_path, "a").returncode == 0 and published.read_text().strip() == key   # idempotent

    # A new client with no key: refused, naming the store's key, not given a key of its own
    second = setup_store(tmp_path, "b")
    assert second.returncode == 1 and not (tmp_path / "b" / "store.sec").exists()
    assert f"the store {tmp_path / 'store'} is signed by {key}" in second.stderr
    assert "set MLBUILD_STORE_PUBLIC_KEYS to that key" in second.stderr

    # A client given the key itself, as the README says (base64 holds '/' in about half the keys)
    slash = "store-mlbuild-1:lZy2xPLMWtz3cHSmUZj5+q/j8YUn7OjS+a1HbdIKIvE="
    for given in (key, slash):
        text = setup_store(tmp_path, "k", MLBUILD_STORE_PUBLIC_KEYS=given)
        assert text.returncode == 0, text.stderr
        assert trusted(tmp_path, "k") == given
    # A pushing machine given only the store's secret key: its public half is derived
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "store.sec").write_bytes((tmp_path / "a" / "store.sec").read_bytes())
    pusher = setup_store(tmp_path, "p")
    assert pusher.returncode == 0, pusher.stderr
    assert trusted(tmp_path, "p") == key and (tmp_path / "p" / "store.pub").read_text().strip() == key
    assert "is not one the store names" not in pusher.stderr

    # A read-only client given the key as a .pub file: nix.conf gets the key itself
    (tmp_path / "team.pub").write_text(key + "\n")
    reader = setup_store(tmp_path, "c", MLBUILD_STORE_PUBLIC_KEYS=str(tmp_path / "team.pub"))
    assert reader.returncode == 0, reader.stderr
    assert trusted(tmp_path, "c") == key and published.read_text().strip() == key
    bad = setup_store(tmp_path, "d", MLBUILD_STORE_PUBLIC_KEYS=str(tmp_path / "missing.pub"))
    assert bad.returncode == 1 and f"names '{tmp_path / 'missing.pub'}', which is neither" in bad.stderr

    # A machine with a key of its own (made before): warned, and the published key stays
    (tmp_path / "e").mkdir()
    subprocess.run(["nix-store", "--generate-binary-cache-key", "e-key-1", str(tmp_path / "e" / "store.sec"),
                    str(tmp_path / "e" / "store.pub")], check=True)
    own = setup_store(tmp_path, "e")
    assert own.returncode == 0 and "is not one the store names" in own.stderr
    assert published.read_text().strip() == key
    # the store names two keys (a key change, CRLF from an editor): a machine with either is not warned
    published.write_text(f"{(tmp_path / 'e' / 'store.pub').read_text().strip()}\r\n{key}\r\n")
    assert "is not one the store names" not in setup_store(tmp_path, "e").stderr
    published.write_text(key + "\n")
    # the secret key given as the trusted key: refused, and never shown (it went into the log and nix.conf)
    secret = (tmp_path / "a" / "store.sec").read_text().strip()
    for given in (str(tmp_path / "a" / "store.sec"), secret):
        leak = setup_store(tmp_path, "s", MLBUILD_STORE_PUBLIC_KEYS=given)
        assert leak.returncode == 1 and "holds a secret key (64 bytes): keep it out of this setting" in leak.stderr
        assert secret.split(":")[1][:12] not in leak.stdout + leak.stderr
        assert not (tmp_path / "s" / "nix.conf").exists()
    # a relative store folder: nix.conf gets the absolute path (file://store was no substituter)
    rel = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "MLBUILD_STORE": "store", "MLBUILD_STORE_PUBLIC_KEYS": key,
                              "MLBUILD_STORE_NIX_CONF": str(tmp_path / "r" / "nix.conf")})
    assert rel.returncode == 0, rel.stderr
    assert f"extra-substituters = file://{tmp_path / 'store'}\n" in (tmp_path / "r" / "nix.conf").read_text()
    # a store folder whose path Nix cannot read as a substituter (`file:///x/team store` was two
    # stores in nix.conf) is refused; a link to it is the way out, and is what nix.conf names
    spaced = tmp_path / "team store"
    spaced.mkdir()
    bad = setup_store(tmp_path, "w", MLBUILD_STORE=str(spaced), MLBUILD_STORE_PUBLIC_KEYS=key)
    assert bad.returncode == 1 and "Nix cannot use a store whose path holds a space" in bad.stderr, bad.stderr
    assert not (tmp_path / "w" / "nix.conf").exists() and not (spaced / "nar").exists()
    (spaced / "nix-cache-info").write_text("StoreDir: /nix/store\n")   # made by the machine that keeps it
    (tmp_path / "team-store").symlink_to(spaced)
    linked = setup_store(tmp_path, "w", MLBUILD_STORE=str(tmp_path / "team-store"), MLBUILD_STORE_PUBLIC_KEYS=key)
    assert linked.returncode == 0, linked.stderr
    assert f"extra-substituters = file://{tmp_path / 'team-store'}\n" in (tmp_path / "w" / "nix.conf").read_text()
    assert (spaced / "nar").is_dir()
    # two machines' generated keys never share a name (Nix keeps one trusted key per name)
    other = setup_store(tmp_path / "elsewhere", "a")
    assert other.returncode == 0, other.stderr
    assert (tmp_path / "elsewhere" / "a" / "store.pub").read_text().split(":")[0] != key.split(":")[0]


def test_a_client_given_the_store_s_key_never_makes_a_store(tmp_path: Path) -> None:
    """CI runs `bash .ci/setup` with the store's key given: on a runner whose NFS mount was not up,
    setup-store made an empty store in the mount point, so builds found nothing to fetch (and no
    warning: the store was "set up") and `build --push` "pushed" into the runner's own disk."""
    first = setup_store(tmp_path, "a")
    assert first.returncode == 0, first.stderr
    key = (tmp_path / "a" / "store.pub").read_text().strip()
    mount_point = tmp_path / "mnt" / "mlstore"
    mount_point.mkdir(parents=True)
    for store in (mount_point, tmp_path / "mnt" / "nothing"):
        ci = setup_store(tmp_path, "ci", MLBUILD_STORE=str(store), MLBUILD_STORE_PUBLIC_KEYS=key,
                         MLBUILD_STORE_SECRET_KEY=str(tmp_path / "a" / "store.sec"))
        assert ci.returncode == 1, ci.stderr
        assert f"setup-store: {store} holds no store (no nix-cache-info): an NFS mount that is not up?" in ci.stderr
        assert not (tmp_path / "ci" / "nix.conf").exists()
    assert list(mount_point.iterdir()) == [] and not (tmp_path / "mnt" / "nothing").exists()


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` read-only as CI's /run/secrets is: a read-only bind mount (root may write any
    folder its modes forbid), else its modes."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_secret_key_in_a_read_only_folder(tmp_path: Path) -> None:
    """CI's layout: the secret key in /run/secrets (read-only), the store's key given. setup-store
    wrote the key's public half beside the secret, which it does not need: "Read-only file system"."""
    first = setup_store(tmp_path, "a")
    assert first.returncode == 0, first.stderr
    key = (tmp_path / "a" / "store.pub").read_text().strip()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "mlbuild-store.sec").write_bytes((tmp_path / "a" / "store.sec").read_bytes())
    with read_only(secrets):
        for given in ({"MLBUILD_STORE_PUBLIC_KEYS": key}, {}):   # given, or derived from the secret key
            ci = setup_store(tmp_path, "ci", MLBUILD_STORE_SECRET_KEY=str(secrets / "mlbuild-store.sec"), **given)
            assert ci.returncode == 0, ci.stderr
            assert trusted(tmp_path, "ci") == key and "is not the one the store names" not in ci.stderr
            assert sorted(p.name for p in secrets.iterdir()) == ["mlbuild-store.sec"]


@pytest.mark.parametrize("kind", ["link", "fifo", "folder"])
def test_a_public_key_file_replaced_by_a_writer_is_refused_without_reading_it(tmp_path: Path, kind: str) -> None:
    """Any writer of the store could link <store>/mlbuild/public-key to a file only root may read: setup-store,
    run by root on a new machine, printed that file as the key the store is signed by (the driver stopped
    reading it through a link in ea0eb2f); a FIFO there hung it, and a linked folder got the store's folders."""
    secret = tmp_path / "secret"
    secret.write_text("root-only line\n")
    secret.chmod(0o600)
    folder = tmp_path / "store" / "mlbuild"
    folder.mkdir(parents=True)
    shown = folder / "public-key"
    if kind == "link":
        shown.symlink_to(secret)
    elif kind == "fifo":
        os.mkfifo(shown)
    else:
        os.rmdir(folder)
        (tmp_path / "elsewhere").mkdir()
        folder.symlink_to(tmp_path / "elsewhere")
    try:
        proc = subprocess.run(["bash", str(SCRIPT)], env={
            **{k: v for k, v in os.environ.items() if k != "MLBUILD_STORE_PUBLIC_KEYS"},
            "MLBUILD_STORE": str(tmp_path / "store"), "MLBUILD_STORE_NIX_CONF": str(tmp_path / "nix.conf"),
            "MLBUILD_STORE_SECRET_KEY": str(tmp_path / "m" / "store.sec")}, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("setup-store hung on the public-key FIFO")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "root-only" not in proc.stderr
    if kind == "fifo":
        assert f"setup-store: {shown} is not a file, so it holds no public key; remove it and run again" in proc.stderr
    else:
        link = shown if kind == "link" else folder
        assert f"setup-store: {link} is a symbolic link (to " in proc.stderr, proc.stderr
        assert not (tmp_path / "elsewhere" / "roots").exists()


def test_the_file_system_s_root_is_not_set_up_as_a_store(tmp_path: Path) -> None:
    """MLBUILD_STORE="$CACHE/" with CACHE unset is /: setup-store (run by root) made nar/, mlbuild/, log/...
    and nix-cache-info at the top of the machine's file system. (The key given keeps the unfixed script
    from making anything there: it refuses a folder with no nix-cache-info first.)"""
    proc = setup_store(tmp_path, "m", MLBUILD_STORE="file:///",
                       MLBUILD_STORE_PUBLIC_KEYS="store-mlbuild-1:lZy2xPLMWtz3cHSmUZj5+q/j8YUn7OjS+a1HbdIKIvE=")
    assert proc.returncode == 1
    assert "setup-store: MLBUILD_STORE=file:/// is the file system's root, not a store folder" in proc.stderr, proc.stderr


def test_a_full_store_disk_leaves_no_empty_cache_info(tmp_path: Path) -> None:
    """nix-cache-info was written in place (tee): a full disk left it empty, setup-store kept it so
    (only a missing one was written), and mlbuild took it for another Nix store's ("is for another
    Nix store folder than /nix/store"). Now it is written whole, and an empty one is written again,
    by setup-store and by `mlbuild store init`."""
    import shlex

    from tests.conftest import MLBUILD

    store = tmp_path / "store"
    store.mkdir()
    s = shlex.quote(str(store))
    env = {**os.environ, "MLBUILD_STORE": str(store), "MLBUILD_STORE_NIX_CONF": str(tmp_path / "nix.conf"),
           "MLBUILD_STORE_SECRET_KEY": str(tmp_path / "store.sec")}
    env.pop("MLBUILD_STORE_PUBLIC_KEYS", None)
    setup = f"bash {shlex.quote(str(SCRIPT))}"
    script = (f"mount -t tmpfs -o size=64k tmpfs {s} && (dd if=/dev/zero of={s}/fill bs=1k count=100 2>/dev/null; "
              f"true) && {{ {setup} >/dev/null 2>&1; ls -A {s}; rm {s}/fill; {setup} >/dev/null && cat {s}/nix-cache-info; }}")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.stdout.startswith("fill\nlog\nmlbuild\nnar\nrealisations\nStoreDir: /nix/store\n"), \
        proc.stdout + proc.stderr
    # One left empty by an older setup-store: both write it again
    assert setup_store(tmp_path, "a").returncode == 0
    for again in (lambda: setup_store(tmp_path, "a"),
                  lambda: subprocess.run([*MLBUILD, "store", "init"], capture_output=True, text=True,
                                         env={**os.environ, "MLBUILD_STORE": str(tmp_path / "store"),
                                              "MLBUILD_STORE_SECRET_KEY": str(tmp_path / "a" / "store.sec")})):
        (tmp_path / "store" / "nix-cache-info").write_text("")
        proc = again()
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "store" / "nix-cache-info").read_text().startswith("StoreDir: /nix/store\n")


def test_a_ci_log_gets_plain_lines_and_no_secret(tmp_path: Path) -> None:
    """Run as a CI runner runs it (output to a file, NO_COLOR, TERM=dumb), setup-store's log
    held "\\033[1m==> ...\\033[0m" on every line; the bold is for terminals only. Its log never shows
    the secret key it made."""
    done = setup_store(tmp_path, "ci", NO_COLOR="1", TERM="dumb")
    assert done.returncode == 0, done.stderr
    assert "==> " in done.stdout and "\x1b" not in done.stdout + done.stderr
    secret = (tmp_path / "ci" / "store.sec").read_text().strip().split(":", 1)[1]
    assert secret not in done.stdout + done.stderr
    # a terminal still gets the bold (util-linux's script(1), in every Debian, gives it a TTY)
    env = {**os.environ, "MLBUILD_STORE": str(tmp_path / "store"), "MLBUILD_STORE_NIX_CONF": str(tmp_path / "ci" / "nix.conf"),
           "MLBUILD_STORE_SECRET_KEY": str(tmp_path / "ci" / "store.sec"), "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    tty = subprocess.run(["script", "-qec", f"bash {SCRIPT}", "/dev/null"], env=env, capture_output=True, text=True)
    assert tty.returncode == 0 and "\x1b[1m==> " in tty.stdout, tty.stdout


def test_a_secret_key_given_as_the_variable_s_value_is_refused_never_shown(tmp_path: Path) -> None:
    """A CI job handed the key itself as MLBUILD_STORE_SECRET_KEY (a secret variable, not a file):
    setup-store said "copy the store's secret key to <the key>" in the job's log (or, on a store
    with no key yet, made a key in folders named after it). Refused, and not shown."""
    assert setup_store(tmp_path, "a").returncode == 0
    key = (tmp_path / "a" / "store.sec").read_text().strip()
    for value in (key, key.split(":", 1)[1], key + "\n"):
        done = setup_store(tmp_path, "ci", MLBUILD_STORE_SECRET_KEY=value)
        assert done.returncode == 1 and "holds a secret key itself" in done.stderr, done.stderr
        assert key.split(":", 1)[1][:12] not in done.stdout + done.stderr
        assert not (tmp_path / "ci").exists() or not any((tmp_path / "ci").iterdir())
    # the key's file, as before
    assert setup_store(tmp_path, "ci", MLBUILD_STORE_SECRET_KEY=str(tmp_path / "a" / "store.sec")).returncode == 0


def test_a_secret_key_given_as_a_trusted_key_is_refused_never_shown(tmp_path: Path) -> None:
    """Its base64 alone in MLBUILD_STORE_PUBLIC_KEYS was shown in "names '<the key>', which is
    neither a readable .pub file nor a name:base64 key"."""
    assert setup_store(tmp_path, "a").returncode == 0
    secret = (tmp_path / "a" / "store.sec").read_text().strip().split(":", 1)[1]
    done = setup_store(tmp_path, "r", MLBUILD_STORE_PUBLIC_KEYS=secret)
    assert done.returncode == 1 and "holds a secret key (not shown here)" in done.stderr, done.stderr
    assert secret[:12] not in done.stdout + done.stderr


def test_a_secret_key_in_quotes_wrapped_or_with_its_public_key_is_refused_never_shown(tmp_path: Path) -> None:
    """The key handed over as MLBUILD_STORE_SECRET_KEY in quotes (a YAML or .env file's
    `"name:..."`), wrapped by base64 at 76 columns, or followed by its public key was taken for the
    path of a key to make: setup-store printed "generating the store's signing key ... in
    "name:..."" and wrote a new key to a file named after the old one, in the job's folder."""
    assert setup_store(tmp_path, "a").returncode == 0
    key = (tmp_path / "a" / "store.sec").read_text().strip()
    public = (tmp_path / "a" / "store.pub").read_text().strip()
    body = key.split(":", 1)[1]
    work = tmp_path / "job"
    work.mkdir()
    for value in (f'"{key}"', f"'{key}'", f"{key}\n{public}\n", f"{body[:76]}\n{body[76:]}\n", f" {key}"):
        done = subprocess.run(["bash", str(SCRIPT)], cwd=work, capture_output=True, text=True, env={
            **os.environ, "MLBUILD_STORE": str(tmp_path / "store"), "MLBUILD_STORE_NIX_CONF": str(tmp_path / "ci.conf"),
            "MLBUILD_STORE_SECRET_KEY": value})
        assert done.returncode == 1 and "holds a secret key itself" in done.stderr, done.stdout + done.stderr
        assert not any(body[i:i + 8] in done.stdout + done.stderr for i in range(len(body) - 8))
        assert list(work.iterdir()) == [] and not (tmp_path / "ci.conf").exists()
    quoted = setup_store(tmp_path, "b", MLBUILD_STORE_SECRET_KEY=str(tmp_path / "a" / "store.sec"),
                         MLBUILD_STORE_PUBLIC_KEYS=f"'{body}'")
    assert quoted.returncode == 1 and "MLBUILD_STORE_PUBLIC_KEYS holds a secret key" in quoted.stderr, quoted.stderr
