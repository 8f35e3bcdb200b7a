"""Ed25519 keys in Nix's format."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlbuild.errors import StoreKeyError
from mlbuild.store.keys import (check_signatures, generate_key_pair, load_secret_key, parse_public_key,
                                parse_public_keys, parse_secret_key)
from tests.unit.test_store_narinfo import NIX_PUBLIC, NIX_SECRET


def test_secret_key_from_nix_has_nix_public_half() -> None:
    key = parse_secret_key(NIX_SECRET)
    assert str(key.public) == NIX_PUBLIC
    assert str(key) == NIX_SECRET


def test_generate_writes_nix_format(tmp_path: Path) -> None:
    key = generate_key_pair("ci.example-1", tmp_path / "k.sec", tmp_path / "k.pub")
    assert (tmp_path / "k.sec").stat().st_mode & 0o777 == 0o600
    assert load_secret_key(tmp_path / "k.sec") == key
    pub = parse_public_key((tmp_path / "k.pub").read_text())
    sig = key.sign(b"hello")
    assert sig.startswith("ci.example-1:")
    assert check_signatures([sig], b"hello", (pub,))
    assert not check_signatures([sig], b"hellO", (pub,))
    with pytest.raises(FileExistsError):
        generate_key_pair("again", tmp_path / "k.sec", tmp_path / "k2.pub")


def test_signature_by_other_key_with_same_name_fails(tmp_path: Path) -> None:
    a = generate_key_pair("same-1", tmp_path / "a.sec", tmp_path / "a.pub")
    b = generate_key_pair("same-1", tmp_path / "b.sec", tmp_path / "b.pub")
    assert not check_signatures([a.sign(b"m")], b"m", (b.public,))
    assert check_signatures([b.sign(b"m"), a.sign(b"m")], b"m", (a.public,))


@pytest.mark.parametrize("text", ["nocolon", "n:!!!", NIX_PUBLIC, "n:" + "QUFB"])
def test_bad_secret_keys(text: str) -> None:
    with pytest.raises(StoreKeyError):
        parse_secret_key(text)


def test_public_keys_list_and_wrong_half() -> None:
    assert len(parse_public_keys(f"{NIX_PUBLIC}\n {NIX_PUBLIC}")) == 2
    with pytest.raises(StoreKeyError, match="other half"):
        parse_public_key(NIX_SECRET)


def test_missing_key_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(StoreKeyError, match="MLBUILD_STORE_SECRET_KEY"):
        load_secret_key(tmp_path / "nope.sec")


@pytest.mark.parametrize("text", ["", "\n", "\ufeff\r\n"])
def test_an_empty_key_file_says_it_is_empty_and_how_to_make_one(tmp_path: Path, text: str) -> None:
    """An mlbuild before atomic key files created the file, then wrote it: a full disk or a kill left
    it empty, and after the upgrade init called it "not `name:base64` ... give such a key"."""
    path = tmp_path / "store.sec"
    path.write_text(text)
    with pytest.raises(StoreKeyError, match=re.escape(f"{path} is empty: a key generation stopped before writing it")
                       + ".*" + re.escape(f"remove it (`rm {path}`) and run `mlbuild store init --generate-key` again")):
        load_secret_key(path)


def test_an_empty_key_file_names_the_init_of_the_store_in_use(tmp_path: Path) -> None:
    """With the store given as --store, the empty key's fix said `mlbuild store init --generate-key`,
    which works on the configured store (/var/lib/mlbuild/store), not this one: a new key there, or
    its refusal about that store's key."""
    import shlex

    from tests.conftest import MLBUILD

    (tmp_path / "store.sec").write_text("")
    env = {**os.environ, "MLBUILD_STORE_SECRET_KEY": str(tmp_path / "store.sec")}
    init = f"mlbuild store --store {shlex.quote(str(tmp_path / 'store'))} init --generate-key"
    for args in (["init", "--generate-key"], ["push", "/nix/store/00000000000000000000000000000000-x"]):
        proc = subprocess.run([*MLBUILD, "store", "--store", str(tmp_path / "store"), *args], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=60)
        assert proc.returncode == 1 and f"and run `{init}` again" in proc.stderr, proc.stderr


def _secret_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "store.sec"
    path.write_text(text)
    return path


@pytest.mark.parametrize("damage,want", [
    (lambda k: k + "\nextra line\n", "holds 2 lines, but a key is one `name:base64` line"),
    (lambda k: k[:20] + " " + k[20:], "has a space inside it (character 21 of"),
    (lambda k: k[:-8] + "!" + k[-7:], "is not base64: it has characters base64 does not use ('!')"),
    (lambda k: k[:-3], "is not base64: it has 85 base64 characters, not a whole number of groups of 4"),
    (lambda k: NIX_PUBLIC, "holds 32 bytes, not 64; that is the size of a public key: this is the public half"),
    (lambda k: k.split(":")[1], "is not `name:base64`"),
])
def test_secret_key_errors_name_the_file_and_the_fault_never_the_key(tmp_path: Path, damage: object,
                                                                     want: str) -> None:
    """It printed "'+K21slxav1+oQMjZ/Iho'... is not base64": a slice of the secret key."""
    text = damage(NIX_SECRET)  # type: ignore[operator]
    path = _secret_file(tmp_path, text)
    with pytest.raises(StoreKeyError) as e:
        load_secret_key(path)
    msg = str(e.value)
    assert msg.startswith(f"secret key {path}") and want in msg, msg
    body = NIX_SECRET.split(":", 1)[1]
    assert not any(body[i:i + 6] in msg for i in range(len(body) - 6)), msg   # not 6 characters of it


def test_public_key_errors_never_show_a_secret_key_given_as_one() -> None:
    body = NIX_SECRET.split(":", 1)[1]
    for text in (NIX_SECRET, NIX_SECRET + "\n" + NIX_SECRET, NIX_SECRET[:-3]):
        with pytest.raises(StoreKeyError) as e:
            parse_public_key(text, "in MLBUILD_STORE_PUBLIC_KEYS")
        assert body[:6] not in str(e.value) and "MLBUILD_STORE_PUBLIC_KEYS" in str(e.value)


def test_key_files_that_are_not_text_are_named_not_a_traceback(tmp_path: Path) -> None:
    """A binary file as the secret or a trusted key: UnicodeDecodeError escaped as a traceback."""
    from mlbuild.errors import StoreKeyError
    from mlbuild.store.config import StoreConfig
    from mlbuild.store.keys import generate_key_pair, load_secret_key

    (tmp_path / "bin.sec").write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(StoreKeyError, match=r"the store's secret key .*bin.sec is not text"):
        load_secret_key(tmp_path / "bin.sec")
    (tmp_path / "bin.pub").write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(StoreKeyError, match=r"the trusted public key file .*bin.pub is not text"):
        StoreConfig(tmp_path, public_keys=(str(tmp_path / "bin.pub"),)).trusted_keys()
    # a byte-order mark (an editor's) is not part of the key's name
    key = generate_key_pair("bom-1", tmp_path / "k.sec", tmp_path / "k.pub")
    (tmp_path / "k.sec").write_text("\ufeff" + (tmp_path / "k.sec").read_text())
    assert load_secret_key(tmp_path / "k.sec").name == "bom-1" == key.name


def test_init_reads_a_store_that_names_two_keys(tmp_path: Path) -> None:
    """During a key change the store's public-key file names two keys (push accepts either):
    `store init` took the file for one key and failed on its second line."""
    from mlbuild.store.admin import init_store
    from mlbuild.store.config import StoreConfig
    from mlbuild.store.layout import Layout

    old = generate_key_pair("old-1", tmp_path / "old.sec", tmp_path / "old.pub")
    new = generate_key_pair("new-1", tmp_path / "new.sec", tmp_path / "new.pub")
    Layout(tmp_path / "store").init()
    (tmp_path / "store" / "mlbuild" / "public-key").write_text(f"{old.public}\r\n{new.public}\r\n")
    r = init_store(StoreConfig(tmp_path / "store", secret_key_file=tmp_path / "new.sec",
                               public_keys=(str(new.public),)))
    assert r.published is None and r.public_key == str(new.public)   # this key is one the store names
    assert f"extra-trusted-public-keys = {old.public} {new.public}\n" in r.nix_conf


@pytest.mark.parametrize("given", [True, False])
def test_a_missing_signing_key_for_a_store_that_names_its_key_says_to_copy_that_key(tmp_path: Path,
                                                                                    given: bool) -> None:
    """A CI runner whose /run/secrets key was not mounted was told to `store init --generate-key`,
    which refuses a store that names its key: the fix is the store's own secret key, named."""
    from mlbuild.store.admin import init_store
    from mlbuild.store.config import StoreConfig

    team = generate_key_pair("team-1", tmp_path / "team.sec", tmp_path / "team.pub")
    init_store(StoreConfig(tmp_path / "store", secret_key_file=tmp_path / "team.sec"))
    missing = tmp_path / "secrets" / "store.sec"
    cfg = StoreConfig(tmp_path / "store", secret_key_file=missing if given else None,
                      public_keys=(str(team.public),), secret_key_from="MLBUILD_STORE_SECRET_KEY")
    with pytest.raises(StoreKeyError) as e:
        cfg.secret_key()
    msg = str(e.value)
    assert "init --generate-key" not in msg, msg
    assert f"{tmp_path / 'store'}{' is' if given else ', which is'} signed by team-1" in msg
    assert "copy the secret half of team-1 (the .sec file made with it)" in msg
    if given:
        assert msg.startswith(f"cannot read the store's secret key {missing} (No such file or directory)")
        assert f"copy the secret half of team-1 (the .sec file made with it) to {missing}" in msg
    else:
        assert msg.startswith(f"no signing key is configured for the store {tmp_path / 'store'}")
    # a store that names no key yet: making one is the fix
    bare = StoreConfig(tmp_path / "bare", secret_key_file=missing if given else None)
    with pytest.raises(StoreKeyError, match="init --generate-key"):
        bare.secret_key()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_a_secret_key_only_its_owner_may_read_says_to_give_its_group_read_access(tmp_path: Path) -> None:
    """`store init --generate-key` writes the secret key 0600: a CI user in the key's group was told
    to "run as a member of its group", which it was."""
    import grp

    generate_key_pair("k-1", tmp_path / "k.sec", tmp_path / "k.pub")
    key = tmp_path / "k.sec"
    os.chown(key, 12345, 0)   # another user's key, of this process's group (root)

    def load() -> subprocess.CompletedProcess[str]:   # as root without the right to read what it may not
        code = "import sys, pathlib; from mlbuild.store.keys import load_secret_key as f; f(pathlib.Path(sys.argv[1]))"
        return subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", sys.executable, "-c",
                               code, str(key)], capture_output=True, text=True)

    proc = load()
    assert proc.returncode == 1 and "Permission denied" in proc.stderr, proc.stderr
    assert f"its mode 0600 lets only its owner (uid 12345) read it: give its group read access (`chmod g+r {key}`, " \
           f"group {grp.getgrgid(0).gr_name};" in proc.stderr, proc.stderr
    assert "run as a member of its group" not in proc.stderr
    os.chown(key, 12345, 12345)   # group-readable, but by a group this process is not in
    key.chmod(0o640)
    proc = load()
    assert proc.returncode == 1 and "this user may not read it: run as a member of its group (gid 12345" in proc.stderr


def test_a_secret_key_path_that_is_a_folder_says_to_name_the_file(tmp_path: Path) -> None:
    """MLBUILD_STORE_SECRET_KEY naming the keys' folder: the advice was to make the key there with
    `store init --generate-key`, which then failed on the folder the same way."""
    with pytest.raises(StoreKeyError, match=r"is a folder: point MLBUILD_STORE_SECRET_KEY or \[store\]\.secret-key at "
                                            r"the key's \.sec file in it"):
        load_secret_key(tmp_path)


@pytest.mark.parametrize("text", ["", "\ufeff\r\n", " \n"])
def test_an_empty_trusted_public_key_file_is_named(tmp_path: Path, text: str) -> None:
    """A .pub file holding nothing (a copy that stopped, a Windows editor's empty save with its
    byte order mark) gave no key: the store's own key was trusted in its place, without a word, or
    'no trusted public key ...: set MLBUILD_STORE_PUBLIC_KEYS', which was set."""
    from mlbuild.errors import StoreKeyError
    from mlbuild.store.config import StoreConfig
    from mlbuild.store.keys import generate_key_pair

    generate_key_pair("own-1", tmp_path / "own.sec", tmp_path / "own.pub")
    (tmp_path / "empty.pub").write_text(text, encoding="utf-8")
    for secret in (tmp_path / "own.sec", None):
        cfg = StoreConfig(tmp_path, secret_key_file=secret, public_keys=(str(tmp_path / "empty.pub"),))
        with pytest.raises(StoreKeyError, match=r"the trusted public key file .*empty.pub is empty; copy the store's "):
            cfg.trusted_keys()
