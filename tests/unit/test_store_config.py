"""Where the store is and which keys it uses: arguments, environment, mlbuild.toml, defaults."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from mlbuild.errors import ConfigError, StoreConfigError, StoreKeyError
from mlbuild.store.config import StoreConfig, load_store_config
from mlbuild.store.keys import generate_key_pair
from tests.unit.test_store_narinfo import NIX_PUBLIC


def _project(tmp_path: Path, store: str) -> Path:
    (tmp_path / "mlbuild.toml").write_text(f'[project]\nname = "p"\n\n[store]\n{store}\n')
    return tmp_path


def test_precedence(tmp_path: Path) -> None:
    proj = _project(tmp_path, 'path = "cache"\nsecret-key = "k.sec"\nkeep-last = 5')
    cfg = load_store_config(proj, env={})
    assert cfg.root == tmp_path / "cache" and cfg.secret_key_file == tmp_path / "k.sec" and cfg.keep_last == 5
    env = {"MLBUILD_STORE": "file:///mnt/store", "MLBUILD_STORE_SECRET_KEY": "/s.sec"}
    cfg = load_store_config(proj, env=env)
    assert cfg.root == Path("/mnt/store") and cfg.secret_key_file == Path("/s.sec")
    assert cfg.url == "file:///mnt/store"
    assert load_store_config(proj, store="/x", env=env).root == Path("/x")


def test_defaults_outside_a_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_store_config(env={}).root == Path("/var/lib/mlbuild/store")


def test_a_windows_saved_mlbuild_toml_is_read(tmp_path: Path) -> None:
    # A byte order mark and CRLF, as Windows editors save it: load_project and Nix read it, and
    # every build failed 'mlbuild.toml: not valid TOML: Invalid statement (at line 1, column 1)'.
    text = '[project]\nname = "p"\n\n[store]\npath = "cache"\n'.replace("\n", "\r\n")
    (tmp_path / "mlbuild.toml").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_store_config(tmp_path, env={}).root == tmp_path / "cache"
    (tmp_path / "mlbuild.toml").write_bytes(text.encode("utf-16"))
    with pytest.raises(ConfigError, match="not UTF-8 text.*save it as UTF-8"):
        load_store_config(tmp_path, env={})


def test_remote_urls_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreConfigError, match="NFS"):
        load_store_config(tmp_path, store="s3://bucket")


def test_an_empty_store_option_is_refused_not_taken_for_the_default(tmp_path: Path) -> None:
    """`mlbuild store --store "$CACHE" gc` with CACHE unset collected the default shared store."""
    from tests.conftest import run_cli

    proc = run_cli("store", "--store", "", "gc", "--dry-run", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout
    assert proc.stderr.endswith("Error: Invalid value for --store: '' is empty (an unset variable?); give the "
                                "store's folder or file:// URL, or leave --store out for the default "
                                "($MLBUILD_STORE, [store].path, /var/lib/mlbuild/store)\n"), proc.stderr


def test_a_file_url_with_no_folder_is_refused_not_taken_for_the_current_folder(tmp_path: Path) -> None:
    """`mlbuild store --store "file://$CACHE" init` with CACHE unset made a store in the current
    folder; `[store] path = ""` was the project's folder."""
    from tests.conftest import run_cli

    proc = run_cli("store", "--store", "file://", "init", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and list(tmp_path.iterdir()) == [], proc.stdout
    assert "Error: --store = 'file://' names no folder (an unset variable?); give the folder" in proc.stderr, proc.stderr
    for env in ({"MLBUILD_STORE": "file://"}, {"MLBUILD_STORE": "file://  "}):
        with pytest.raises(StoreConfigError, match=r"MLBUILD_STORE = 'file://\s*' names no folder"):
            load_store_config(tmp_path, env=env)
    with pytest.raises(StoreConfigError, match=r"\[store\]\.path = '' names no folder"):
        load_store_config(_project(tmp_path, 'path = ""'), env={})


@pytest.mark.parametrize("given", ["file:///", "/", "//", "file:////", "/.."])
def test_the_file_system_s_root_is_not_taken_for_a_store(tmp_path: Path, given: str) -> None:
    """`--store "file://$CACHE/"` (or `$CACHE/`) with CACHE unset named /: `store init`, run by root,
    made nar/, mlbuild/, log/, realisations/ and nix-cache-info at the top of the machine's file system."""
    for env, store in (({}, given), ({"MLBUILD_STORE": given}, None)):
        with pytest.raises(StoreConfigError, match=r"is the file system's root, not a store folder \(an unset variable"):
            load_store_config(tmp_path, env=env, store=store)


@pytest.mark.parametrize("folder", ["team store", "a?b", "c#d", "tab\there"])
def test_a_store_path_nix_cannot_read_is_refused(tmp_path: Path, folder: str) -> None:
    """Nix 2.8 split `file:///x/team store` into two stores and opened `file:///x/a?b` as /x/a:
    builds rebuilt everything without a word, `store pull` failed with Nix's own error."""
    store = tmp_path / folder
    for kw in ({"store": str(store), "env": {}}, {"env": {"MLBUILD_STORE": f"file://{store}"}}):
        with pytest.raises(StoreConfigError, match=re.escape(repr(folder)[1:-1]) + ".*Nix cannot use a store "
                           "whose path holds .*give a link to it"):
            load_store_config(tmp_path, **kw)   # type: ignore[arg-type]
    proj = _project(tmp_path, f"path = {json.dumps(folder)}")
    with pytest.raises(StoreConfigError, match=r"\[store\]\.path = "):
        load_store_config(proj, env={})
    # a link to it from a path Nix takes is the way out; a key file's path may hold anything
    env = {"MLBUILD_STORE": str(tmp_path / "link"), "MLBUILD_STORE_SECRET_KEY": str(store / "k.sec")}
    assert load_store_config(tmp_path, env=env).secret_key_file == store / "k.sec"


def test_trusted_keys(tmp_path: Path) -> None:
    key = generate_key_pair("t-1", tmp_path / "t.sec", tmp_path / "t.pub")
    assert StoreConfig(tmp_path, secret_key_file=tmp_path / "t.sec").trusted_keys() == (key.public,)
    cfg = StoreConfig(tmp_path, public_keys=(NIX_PUBLIC, str(tmp_path / "t.pub")))
    assert [k.name for k in cfg.trusted_keys()] == ["test-1", "t-1"]
    env_cfg = load_store_config(tmp_path, env={"MLBUILD_STORE_PUBLIC_KEYS": NIX_PUBLIC, "MLBUILD_STORE": "/s"})
    assert [str(k) for k in env_cfg.trusted_keys()] == [NIX_PUBLIC]
    opts = env_cfg.nix_options()
    assert opts[opts.index("extra-substituters") + 1] == "file:///s" and "require-sigs" in opts
    with pytest.raises(StoreKeyError, match="MLBUILD_STORE_PUBLIC_KEYS"):
        StoreConfig(tmp_path).trusted_keys()
    with pytest.raises(StoreKeyError, match="MLBUILD_STORE_SECRET_KEY"):
        StoreConfig(tmp_path).secret_key()


def test_bad_values_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(StoreConfigError, match="keep-last"):
        load_store_config(_project(tmp_path, "keep-last = -1"), env={})


@pytest.mark.parametrize(("body", "message"), [
    ('pth = "/srv/store"', '[store] has unknown key "pth"; it takes "path", "secret-key", "public-keys"'),
    ('secret_key = "k.sec"', '[store] has unknown key "secret_key"'),
    ("keep_last = 1\nzstd = 9", '[store] has unknown keys "keep_last", "zstd"'),
    ("path = 5", "[store].path must be a folder (a string), got 5"),
    ('push = "false"', "[store].push must be true or false (no quotes), got 'false'"),
    ('keep-last = "three"', "mlbuild.toml [store].keep-last must be a whole number (no quotes), got 'three'"),
])
def test_a_misspelled_or_mistyped_setting_is_an_error_not_the_default_store(
        tmp_path: Path, body: str, message: str) -> None:
    """A typo left every store command on the machine's default store and keys, without a word."""
    with pytest.raises(StoreConfigError) as e:
        load_store_config(_project(tmp_path, body), env={})
    assert message in str(e.value)


def test_a_misspelled_store_table_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "mlbuild.toml").write_text('[project]\nname = "p"\n\n[stor]\npath = "/srv/store"\n')
    with pytest.raises(StoreConfigError, match='mlbuild.toml has unknown key "stor"; it takes "project", '):
        load_store_config(tmp_path, env={})


def test_fsync_nars(tmp_path: Path) -> None:
    assert load_store_config(tmp_path, env={}).fsync_nars is False          # like Nix's fsync-store-paths
    proj = _project(tmp_path, "fsync-nars = true")
    assert load_store_config(proj, env={}).fsync_nars is True
    assert load_store_config(proj, env={"MLBUILD_STORE_FSYNC_NARS": "0"}).fsync_nars is False
    assert load_store_config(tmp_path, env={"MLBUILD_STORE_FSYNC_NARS": "yes"}).fsync_nars is True
    with pytest.raises(StoreConfigError, match=r"MLBUILD_STORE_FSYNC_NARS must be true or false, got 'always'"):
        load_store_config(tmp_path, env={"MLBUILD_STORE_FSYNC_NARS": "always"})
    with pytest.raises(StoreConfigError, match=r"fsync-nars must be true or false \(no quotes\), got 'sometimes'"):
        load_store_config(_project(tmp_path, 'fsync-nars = "sometimes"'), env={})
    with pytest.raises(StoreConfigError, match=r"\[store\].fsync-nars must be true or false \(no quotes\), got 'no'"):
        load_store_config(_project(tmp_path, 'fsync-nars = "no"'), env={})   # as push = "no" is refused


@pytest.mark.parametrize("body, message", [
    ('zstd-level = "5"', "zstd-level must be a whole number (no quotes), got '5'"),
    ("zstd-level = 3.9", "zstd-level must be a whole number, got 3.9"),
    ("keep-last = true", "keep-last must be a whole number, got True"),
])
def test_store_numbers_must_be_toml_integers(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(StoreConfigError, match=re.escape(message)):
        load_store_config(_project(tmp_path, body), env={})
    (tmp_path / "env").mkdir()
    assert load_store_config(tmp_path / "env", env={"MLBUILD_STORE_KEEP_LAST": "5"}).keep_last == 5


@pytest.mark.parametrize("level", [0, 23, 99])
def test_a_zstd_level_zstd_lacks_is_refused(tmp_path: Path, level: int) -> None:
    with pytest.raises(StoreConfigError, match=rf"zstd-level must be a zstd level from 1 \(fastest\) to 22 "
                                               rf"\(smallest\), got {level}"):
        load_store_config(_project(tmp_path, f"zstd-level = {level}"), env={})
    assert load_store_config(_project(tmp_path, "zstd-level = 19"), env={}).zstd_level == 19


def test_two_trusted_keys_of_one_name_are_refused(tmp_path: Path) -> None:
    """Nix keeps one key per name: pushes and verify said "0 problems" while Nix refused the
    store's signatures ("lacks a valid signature") and rebuilt everything."""
    generate_key_pair("host-mlbuild-1", tmp_path / "a.sec", tmp_path / "a.pub")
    generate_key_pair("host-mlbuild-1", tmp_path / "b.sec", tmp_path / "b.pub")
    cfg = StoreConfig(tmp_path, public_keys=(str(tmp_path / "a.pub"), str(tmp_path / "b.pub")))
    with pytest.raises(StoreKeyError, match="two trusted keys are named 'host-mlbuild-1'"):
        cfg.trusted_keys()
    same = StoreConfig(tmp_path, public_keys=(str(tmp_path / "a.pub"), (tmp_path / "a.pub").read_text().strip()))
    assert len(same.trusted_keys()) == 2   # the same key twice is harmless


@pytest.mark.parametrize("args,env,want", [
    ([], {}, False), ([], {"MLBUILD_STORE_FSYNC_NARS": "1"}, True),
    (["--fsync-nars"], {}, True), (["--no-fsync-nars"], {"MLBUILD_STORE_FSYNC_NARS": "1"}, False),
])
def test_push_flag_overrides_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                                         env: dict[str, str], want: bool) -> None:
    from click.testing import CliRunner

    import mlbuild.store as st
    from mlbuild.cli.main import cli
    from mlbuild.store.push import PushResult

    seen: list[StoreConfig] = []

    def fake_push(cfg: StoreConfig, targets: object, **kw: object) -> PushResult:
        seen.append(cfg)
        return PushResult(targets=[])

    monkeypatch.setattr(st, "push", fake_push)
    monkeypatch.delenv("MLBUILD_STORE_FSYNC_NARS", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["store", "--store", str(tmp_path / "s"), "push", *args, "/nix/store/x"],
                                env=env)
    assert result.exit_code == 0, result.output
    assert seen[0].fsync_nars is want


def test_init_never_replaces_the_store_s_published_key(tmp_path: Path) -> None:
    """A second machine's init (or setup-store) rewrote <store>/mlbuild/public-key with its own key,
    the one people are told to copy into every client's trusted keys."""
    from mlbuild.store.admin import default_key_name, init_store

    first = init_store(StoreConfig(tmp_path / "s", secret_key_file=tmp_path / "a.sec"), generate_key=True)
    shown = (tmp_path / "s" / "mlbuild" / "public-key").read_text().strip()
    assert first.generated and shown == first.public_key and first.published is None
    again = init_store(StoreConfig(tmp_path / "s", secret_key_file=tmp_path / "a.sec"), generate_key=True)
    assert not again.generated and again.public_key == shown and again.published is None
    # no second key for a store that has one: nothing the store's readers trust would come of it
    with pytest.raises(StoreConfigError, match=re.escape(f"the store {tmp_path / 's'} is already signed by {shown}")):
        init_store(StoreConfig(tmp_path / "s", secret_key_file=tmp_path / "b.sec"), generate_key=True)
    assert not (tmp_path / "b.sec").exists()
    # a key made elsewhere, used on this store: said, and the store's key stays, the one readers get
    generate_key_pair(default_key_name(), tmp_path / "b.sec", tmp_path / "b.pub")
    other = init_store(StoreConfig(tmp_path / "s", secret_key_file=tmp_path / "b.sec"), generate_key=True)
    assert other.public_key != shown and other.published == shown
    assert f"extra-trusted-public-keys = {shown}\n" in other.nix_conf
    # a machine with no key: the store's key and the lines for readers
    reader = init_store(StoreConfig(tmp_path / "s", secret_key_file=tmp_path / "none.sec"))
    assert reader.public_key is None and reader.published == shown
    assert f"extra-trusted-public-keys = {shown}\n" in reader.nix_conf
    assert (tmp_path / "s" / "mlbuild" / "public-key").read_text().strip() == shown
    # default names differ per key: Nix keeps one trusted key per name
    assert first.public_key and other.public_key and first.public_key.split(":")[0] != other.public_key.split(":")[0]
    assert default_key_name() != default_key_name()
    name = first.public_key.split(":")[0]
    with pytest.raises(StoreConfigError, match=f"a trusted key is already named '{name}'"):
        init_store(StoreConfig(tmp_path / "t", secret_key_file=tmp_path / "c.sec", public_keys=(first.public_key,)),
                   generate_key=True, key_name=name)
    assert not (tmp_path / "c.sec").exists()


def test_a_key_name_nix_itself_trusts_is_refused_and_a_shadowed_store_key_is_told(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """--key-name vm-mlbuild-1, the name of the machine's key in /etc/nix: accepted, then every
    build on another machine silently rebuilt (Nix kept the machine's key of that name)."""
    from mlbuild import _nix
    from mlbuild.build import shared_store, warn_store_keys
    from mlbuild.config import load_project
    from mlbuild.store.admin import init_store

    machine = generate_key_pair("vm-mlbuild-1", tmp_path / "m.sec", tmp_path / "m.pub")
    monkeypatch.setattr(_nix, "configured_public_keys", lambda: ["cache.nixos.org-1:x", str(machine.public)])
    with pytest.raises(StoreConfigError, match="a trusted key is already named 'vm-mlbuild-1'"):
        init_store(StoreConfig(tmp_path / "s", secret_key_file=tmp_path / "w.sec"), generate_key=True,
                   key_name="vm-mlbuild-1")
    assert not (tmp_path / "w.sec").exists()
    store_key = generate_key_pair("vm-mlbuild-1", tmp_path / "w.sec", tmp_path / "w.pub")   # made elsewhere
    init_store(StoreConfig(tmp_path / "s", secret_key_file=tmp_path / "w.sec"))
    for var in ("MLBUILD_STORE", "MLBUILD_STORE_SECRET_KEY", "MLBUILD_STORE_PUBLIC_KEYS"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "p").mkdir()
    root = _project(tmp_path / "p", f'path = "{tmp_path / "s"}"\npublic-keys = ["{tmp_path / "w.pub"}"]')
    store = shared_store(load_project(root))
    assert store is not None and store[1]   # still used, and said once a build built something
    warn_store_keys(store[0])
    err = capsys.readouterr().err
    assert f"the shared store's key {store_key.public} shares its name with {machine.public}" in err


def test_a_build_asks_nix_for_its_keys_only_once_it_built_something(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`nix show-config` costs ~0.2 s, a third of a build that builds nothing."""
    from mlbuild import _nix
    from mlbuild.build import store_options
    from mlbuild.config import load_project
    from mlbuild.store.layout import Layout

    def asked() -> list[str]:
        raise AssertionError("nix show-config ran")

    monkeypatch.setattr(_nix, "configured_public_keys", asked)
    for var in ("MLBUILD_STORE", "MLBUILD_STORE_SECRET_KEY", "MLBUILD_STORE_PUBLIC_KEYS"):
        monkeypatch.delenv(var, raising=False)
    generate_key_pair("t-1", tmp_path / "t.sec", tmp_path / "t.pub")
    Layout(tmp_path / "s").init()
    root = _project(tmp_path, f'path = "{tmp_path / "s"}"\npublic-keys = ["{tmp_path / "t.pub"}"]')
    assert f"file://{tmp_path / 's'}" in store_options(load_project(root))


def test_a_key_made_on_a_full_disk_leaves_no_empty_key(tmp_path: Path) -> None:
    """`store init --generate-key` with the key's folder full wrote the secret key in place: it
    left an empty file (the error named none), which the next init took as the user's own key and
    refused ("is not `name:base64` ... give such a key"). Now nothing is left, and the next init,
    with room, makes the key."""
    import shlex
    import subprocess

    from tests.conftest import MLBUILD

    keys = tmp_path / "keys"
    keys.mkdir()
    k = shlex.quote(str(keys))
    init = f"{shlex.join(MLBUILD)} store --store {shlex.quote(str(tmp_path / 'store'))} init --generate-key"
    script = (f"mount -t tmpfs -o size=64k tmpfs {k} && (dd if=/dev/zero of={k}/fill bs=1k count=100 2>/dev/null; "
              f"true) && {{ {init}; ls -A {k}; rm {k}/fill; {init} >/dev/null && ls -A {k}; }}")
    env = {**os.environ, "MLBUILD_STORE_SECRET_KEY": str(keys / "s.sec")}
    env.pop("MLBUILD_STORE_PUBLIC_KEYS", None)
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)
    assert proc.stderr.startswith(f"Error: No space left on device writing {keys / 's.sec'}; free space there"), \
        proc.stderr
    assert proc.stdout == "fill\ns.pub\ns.sec\n", proc.stdout + proc.stderr


def test_init_on_a_full_disk_names_the_store_folder(tmp_path: Path) -> None:
    """A full disk under the store: init said only "No space left on device; free space there",
    naming no folder (nix-cache-info is written with os.write, which carries no file name)."""
    import shlex
    import subprocess

    from tests.conftest import MLBUILD

    disk = tmp_path / "disk"
    disk.mkdir()
    d = shlex.quote(str(disk))
    script = (f"mount -t tmpfs -o size=64k tmpfs {d} && mkdir {d}/store && "
              f"(dd if=/dev/zero of={d}/fill bs=1k count=100 2>/dev/null; true) && "
              f"exec {shlex.join(MLBUILD)} store --store {d}/store init --generate-key")
    env = {**os.environ, "MLBUILD_STORE_SECRET_KEY": str(tmp_path / "k.sec")}
    env.pop("MLBUILD_STORE_PUBLIC_KEYS", None)
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"Error: cannot initialise the store: the store folder {disk / 'store'} is full "
                                  f"(No space left on device); what it made stays; free space there"), proc.stderr


@pytest.mark.parametrize("name", ["", "my key", "ci\t1", "a:b"])
def test_a_key_name_no_reader_can_parse_is_refused_before_anything_is_written(tmp_path: Path, name: str) -> None:
    """`store init --generate-key --key-name "my key"` wrote the key pair and published `my key:...`
    as the store's public key, which every later command then refused (a key is `name:base64` in a
    list split at spaces): the store was stuck. `--key-name ""` made a key of the default name."""
    from mlbuild.store.admin import init_store
    from tests.conftest import run_cli

    with pytest.raises(StoreKeyError, match=re.escape(f"key name {name!r} must be non-empty, with no ':' and no spaces")):
        init_store(StoreConfig(tmp_path / "s", secret_key_file=tmp_path / "k.sec"), generate_key=True, key_name=name)
    assert not (tmp_path / "s").exists() and not (tmp_path / "k.sec").exists() and not (tmp_path / "k.pub").exists()
    proc = run_cli("store", "--store", str(tmp_path / "s"), "init", "--generate-key", "--key-name", name,
                   env={"MLBUILD_STORE_SECRET_KEY": str(tmp_path / "k.sec")}, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and f"key name {name!r} must" in proc.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "k.sec").exists()


def test_key_name_without_a_key_to_make_is_refused_not_ignored(tmp_path: Path) -> None:
    """`store init --key-name ci-1` (no --generate-key) made no key and said nothing of the name; with
    a key there already, `--generate-key --key-name ci-2` kept the old key's name without a word."""
    from mlbuild.store.admin import init_store

    with pytest.raises(StoreConfigError, match=re.escape("--key-name ci-1 names the key --generate-key makes; "
                                                         "add --generate-key")):
        init_store(StoreConfig(tmp_path / "s", secret_key_file=tmp_path / "k.sec"), key_name="ci-1")
    assert not (tmp_path / "s").exists()
    made = init_store(StoreConfig(tmp_path / "s", secret_key_file=tmp_path / "k.sec"), generate_key=True,
                      key_name="ci-1")
    again = init_store(StoreConfig(tmp_path / "s", secret_key_file=tmp_path / "k.sec"), generate_key=True,
                       key_name="ci-1")   # the same name: idempotent, as init is
    assert made.generated and not again.generated and again.public_key == made.public_key
    with pytest.raises(StoreConfigError, match=re.escape(f"the signing key {tmp_path / 'k.sec'} exists already, "
                                                         f"named 'ci-1', so no key named 'ci-2' is made")):
        init_store(StoreConfig(tmp_path / "s", secret_key_file=tmp_path / "k.sec"), generate_key=True,
                   key_name="ci-2")


@pytest.mark.parametrize("named", [True, False])
def test_a_secret_key_given_as_the_setting_s_value_is_refused_never_shown(tmp_path: Path, named: bool) -> None:
    """A CI job handed the key as a variable (`MLBUILD_STORE_SECRET_KEY: ${{ secrets.STORE_KEY }}`),
    not as a file: `build --push` and `store push` printed it whole in its log, as the file they
    could not read. Now refused, naming the fix, and not a character of it shown."""
    key = generate_key_pair("ci-1", tmp_path / "k.sec", tmp_path / "k.pub")
    text = str(key) if named else str(key).split(":", 1)[1]
    secret = text.split(":", 1)[-1]
    for value in (text, text + "\n"):   # a secret pasted with its line end
        with pytest.raises(StoreConfigError) as e:
            load_store_config(tmp_path, env={"MLBUILD_STORE_SECRET_KEY": value})
        said = str(e.value)
        assert "MLBUILD_STORE_SECRET_KEY holds a secret key itself" in said and "to that file's path" in said
        assert ("named 'ci-1'" in said) == named
        assert not any(secret[i:i + 8] in said for i in range(len(secret) - 8))
    proj = _project(tmp_path, f'secret-key = "{text}"')
    with pytest.raises(StoreConfigError) as e:
        load_store_config(proj, env={})
    assert "[store].secret-key holds a secret key itself" in str(e.value) and "make a new key" in str(e.value)
    assert secret[:8] not in str(e.value)
    # the key's file is read as before
    assert load_store_config(tmp_path, env={"MLBUILD_STORE_SECRET_KEY": str(tmp_path / "k.sec")}).secret_key() == key


def test_a_secret_key_given_as_a_trusted_key_is_refused_never_shown(tmp_path: Path) -> None:
    """The base64 of a secret key alone (its name left out) in MLBUILD_STORE_PUBLIC_KEYS was shown in
    "public key '4/kbw...' is not `name:base64`", and one starting with '/' in "cannot read the
    trusted public key file /..."; a whole secret key there named its size only."""
    from mlbuild.store.keys import parse_public_key

    for n in range(40):   # enough keys that one's base64 starts with '/'
        key = generate_key_pair(f"ci-{n}", tmp_path / f"{n}.sec", tmp_path / f"{n}.pub")
        secret = str(key).split(":", 1)[1]
        for value in (secret, str(key)):
            with pytest.raises(StoreKeyError) as e:
                load_store_config(tmp_path, env={"MLBUILD_STORE_PUBLIC_KEYS": value}).trusted_keys()
            assert "holds a secret key (not shown here)" in str(e.value)
            assert not any(secret[i:i + 8] in str(e.value) for i in range(len(secret) - 8))
        with pytest.raises(StoreKeyError) as e:
            parse_public_key(secret)
        assert secret[:8] not in str(e.value) and "is not `name:base64`" in str(e.value)
    # a public key that is not name:base64 is still shown, to be recognised
    with pytest.raises(StoreKeyError, match="public key 'abc' is not `name:base64`"):
        parse_public_key("abc")


def test_a_secret_key_in_quotes_wrapped_or_with_its_public_key_is_refused_never_shown(tmp_path: Path) -> None:
    """The key handed over as a variable, but quoted (`STORE_KEY="ci-1:..."` in a YAML or .env file
    keeps the quotes), wrapped at 76 columns (`base64`'s output), or followed by its public key (both
    files in one secret): taken for a path, each was printed whole in "cannot read the store's secret
    key /project/"ci-1:..." (No such file or directory)", the wrapped one twice."""
    key = generate_key_pair("ci-1", tmp_path / "k.sec", tmp_path / "k.pub")
    secret = str(key).split(":", 1)[1]
    public = (tmp_path / "k.pub").read_text().strip()
    for value in (f'"{key}"', f"'{key}'", f"ci-1:{secret[:76]}\n{secret[76:]}\n", f"{key}\n{public}\n", f"{key}{public}",
                  f"'{secret}'"):
        with pytest.raises(StoreConfigError) as e:
            load_store_config(tmp_path, env={"MLBUILD_STORE_SECRET_KEY": value})
        said = str(e.value)
        assert "MLBUILD_STORE_SECRET_KEY holds a secret key itself" in said, said
        assert not any(secret[i:i + 8] in said for i in range(len(secret) - 8)), said
        assert ("(named 'ci-1')" in said) == (value != f"'{secret}'"), said
        for trusted in (value, f"{public} {value}"):   # MLBUILD_STORE_PUBLIC_KEYS: split at whitespace
            with pytest.raises(StoreKeyError) as e:
                load_store_config(tmp_path, env={"MLBUILD_STORE_PUBLIC_KEYS": trusted}).trusted_keys()
            assert not any(secret[i:i + 8] in str(e.value) for i in range(len(secret) - 8)), str(e.value)
    # a public key, and a path, are not taken for secrets
    assert [str(k) for k in load_store_config(tmp_path, env={"MLBUILD_STORE_PUBLIC_KEYS": public}).trusted_keys()] \
        == [public]
    assert load_store_config(tmp_path, env={"MLBUILD_STORE_SECRET_KEY": str(tmp_path / "k.sec")}).secret_key() == key
