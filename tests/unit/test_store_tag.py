"""``store tag``: a tag is moved only when asked, and names only sound entries."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mlbuild.cli.main import cli
from mlbuild.errors import StoreError, StoreTargetError
from mlbuild.store import StoreConfig, gc, tag, tags
from mlbuild.store.layout import Layout
from tests.unit.test_store_publish import fake_path, put, store  # noqa: F401  (fixture)


def test_a_tag_moves_only_with_force(store: tuple[StoreConfig, Path]) -> None:
    """It moved silently: release-1 lost its gc protection."""
    cfg, chroot = store
    v1, v2 = (put(cfg, chroot, fake_path(chroot, f"model-v{i}", f"m{i}")).store_path for i in (1, 2))
    assert tag(cfg, "release-1", [v1]).previous is None
    again = tag(cfg, "release-1", [v1])    # the same paths again: nothing moves
    assert again.previous == [v1] and not again.dropped and not again.added
    with pytest.raises(StoreTargetError) as e:
        tag(cfg, "release-1", [v2])
    assert f"the tag release-1 names {v1}, which {v2} leaves out: the tag would no longer keep it from the " \
           f"next gc; pass --force to move the tag, name it too, or pick another name" in str(e.value)
    assert tags(cfg) == {"release-1": [v1]}
    grown = tag(cfg, "release-1", [v1, v2])   # gaining a path drops none: no --force
    assert grown.added == [v2] and not grown.dropped
    moved = tag(cfg, "release-1", [v2], force=True)
    assert moved.dropped == [v1] and tags(cfg) == {"release-1": [v2]}
    assert gc(cfg, grace=0).removed_paths == [v1]


def test_cli_tag_says_what_it_moved(store: tuple[StoreConfig, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, chroot = store
    v1, v2 = (put(cfg, chroot, fake_path(chroot, f"model-v{i}", f"m{i}")).store_path for i in (1, 2))
    monkeypatch.chdir(chroot.parent)
    base = ["store", "--store", str(cfg.root), "tag", "release-1"]
    assert CliRunner().invoke(cli, [*base, v1]).exit_code == 0
    refused = CliRunner().invoke(cli, [*base, v2])
    assert refused.exit_code == 1 and f"Error: the tag release-1 names {v1}, which" in refused.output
    out = CliRunner().invoke(cli, [*base, "--force", v2])
    assert out.exit_code == 0 and f"moved release-1 to {v2}" in out.output and f"no longer keeps {v1}" in out.output
    out = CliRunner().invoke(cli, [*base, v2, v1])
    assert out.exit_code == 0 and f"tagged release-1: added {v1}" in out.output, out.output


@pytest.mark.parametrize("damage", ["nar", "narinfo", "other"])
def test_tag_refuses_an_entry_a_reader_could_not_fetch(store: tuple[StoreConfig, Path], damage: str) -> None:
    """Only the narinfo was checked: a path whose NAR was gone was tagged."""
    cfg, chroot = store
    layout = Layout(cfg.root)
    info = put(cfg, chroot, fake_path(chroot, "model", "m"))
    other = put(cfg, chroot, fake_path(chroot, "other", "o"))
    if damage == "nar":
        (cfg.root / info.url).unlink()
        want = f"cannot tag r: {info.store_path} is missing: no NAR file"
    elif damage == "narinfo":
        layout.narinfo(info.store_path).unlink()
        want = f"cannot tag r: {info.store_path} is not in the store {cfg.root}; push it first"
    else:
        layout.narinfo(info.store_path).write_text(layout.narinfo(other.store_path).read_text())
        want = f"cannot tag r: {info.store_path} describes {other.store_path}, not {info.store_path}"
    with pytest.raises(StoreTargetError) as e:
        tag(cfg, "r", [info.store_path])
    assert str(e.value).startswith(want), str(e.value)
    assert "mlbuild store push" in str(e.value) and tags(cfg) == {}


def test_tag_refuses_an_entry_no_reader_would_trust(store: tuple[StoreConfig, Path]) -> None:
    """Signatures were not checked: a narinfo with a forged `Sig` was tagged as a release."""
    cfg, chroot = store
    info = put(cfg, chroot, fake_path(chroot, "model", "m"))
    f = Layout(cfg.root).narinfo(info.store_path)
    f.write_text("\n".join(l if not l.startswith("Sig: ") else l.split(":")[0] + ":" + l.split(":")[1] + ":AAAA"
                           for l in f.read_text().splitlines()) + "\n")
    with pytest.raises(StoreTargetError, match=f"cannot tag r: {info.store_path} is unsigned"):
        tag(cfg, "r", [info.store_path])


def test_two_tags_of_one_name_at_once_lose_no_path(store: tuple[StoreConfig, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Each read the tag, then wrote it back with its own paths: both said "tagged release-1", and
    the first one's path was no longer tagged (gc then removed a release)."""
    import threading
    import time

    from mlbuild.store import admin

    cfg, chroot = store
    v1, v2 = (put(cfg, chroot, fake_path(chroot, f"model-v{i}", f"m{i}")).store_path for i in (1, 2))
    read = admin.tags

    def slow_read(c: StoreConfig) -> dict[str, list[str]]:   # the first tagger pauses between read and write
        out = read(c)
        if threading.current_thread().name == "first":
            time.sleep(1.0)
        return out

    monkeypatch.setattr(admin, "tags", slow_read)
    results: dict[str, object] = {}

    def run(path: str) -> None:
        try:
            results[threading.current_thread().name] = tag(cfg, "release-1", [path])
        except StoreTargetError as e:
            results[threading.current_thread().name] = e

    first = threading.Thread(target=run, args=(v1,), name="first")
    first.start()
    time.sleep(0.3)
    second = threading.Thread(target=run, args=(v2,), name="second")
    second.start()
    first.join(20)
    second.join(20)
    tagged = set(tags(cfg)["release-1"])
    said = {p for r in results.values() if not isinstance(r, StoreTargetError) for p in r.paths}  # type: ignore[attr-defined]
    assert said <= tagged, f"said tagged {said}, tag names {tagged}"
    assert tagged == {v1} and isinstance(results["second"], StoreTargetError)   # the second waited, then was refused
    assert f"the tag release-1 names {v1}, which {v2} leaves out" in str(results["second"])


def test_the_roots_lock_is_never_opened_through_a_link(store: tuple[StoreConfig, Path], tmp_path: Path) -> None:
    """Any writer of the store may put a link there: one to a file only root may write had its mode
    set to the lock's 0664 by the next tag or gc root ran."""
    import os

    from mlbuild.errors import StoreCorruptError

    cfg, chroot = store
    v1 = put(cfg, chroot, fake_path(chroot, "model-v1", "m1")).store_path
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    lock = Layout(cfg.root).roots_dir / ".lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(secret)
    with pytest.raises(StoreCorruptError, match=r"\.lock is a symbolic link, not the store's lock file; mlbuild "
                                                r"does not open it: remove it \(`rm .*\.lock`\)"):
        tag(cfg, "release-1", [v1])
    assert oct(secret.stat().st_mode & 0o777) == "0o600" and "release-1" not in tags(cfg)
    lock.unlink()
    os.mkfifo(lock)
    with pytest.raises(StoreCorruptError, match=r"\.lock is not a file, not the store's lock file"):
        tag(cfg, "release-1", [v1])
    lock.unlink()
    assert tag(cfg, "release-1", [v1]).paths == [v1]


def test_a_tag_waiting_for_the_roots_lock_says_so(store: tuple[StoreConfig, Path],
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    """While a gc (on any machine) held the store's roots lock, a tag or push waited without a word,
    as long as the gc took: it looked hung."""
    import subprocess
    import sys
    import time

    cfg, chroot = store
    v1 = put(cfg, chroot, fake_path(chroot, "model-v1", "m1")).store_path
    lock = Layout(cfg.root).roots_dir / ".lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(1)", str(lock)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    t0 = time.monotonic()
    tag(cfg, "release-1", [v1])
    assert time.monotonic() - t0 > 0.3   # it waited for the holder
    holder.wait()
    err = capfd.readouterr().err
    assert f"mlbuild: waiting for the store's roots lock ({lock}): a gc, push or tag of {cfg.root} holds it" in err
    tag(cfg, "release-1", [v1])   # free: not a word
    assert "waiting" not in capfd.readouterr().err


def test_an_untag_while_a_tag_of_that_name_is_written_is_not_undone(store: tuple[StoreConfig, Path],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """untag took no lock: between a tag's read of release-1 and its write, it removed the tag and
    said so, and the tag was then written back whole, the untagged paths with it (kept from gc)."""
    import threading
    import time

    from mlbuild.store import admin

    cfg, chroot = store
    v1, v2 = (put(cfg, chroot, fake_path(chroot, f"model-v{i}", f"m{i}")).store_path for i in (1, 2))
    tag(cfg, "release-1", [v1])
    read = admin.tags

    def slow_read(c: StoreConfig) -> dict[str, list[str]]:   # the tagger pauses between read and write
        out = read(c)
        if threading.current_thread().name == "tagger":
            time.sleep(1.0)
        return out

    monkeypatch.setattr(admin, "tags", slow_read)
    tagger = threading.Thread(target=tag, args=(cfg, "release-1", [v1, v2]), name="tagger")
    tagger.start()
    time.sleep(0.3)
    admin.untag(cfg, "release-1")   # started after the tag: it has the last word
    tagger.join(20)
    assert "release-1" not in tags(cfg)


def test_a_bad_tag_name_is_refused_before_its_paths_are_checked(store: tuple[StoreConfig, Path]) -> None:
    """`store tag rel/2 PATH` with PATH not pushed yet said "push it first"; after the push (of a
    release: minutes) the same command said the name was bad. The name is checked first."""
    cfg, chroot = store
    missing = fake_path(chroot, "model-v3", "m3").path   # never put into the store
    with pytest.raises(StoreError, match=r"^tag 'rel/2' must match "):
        tag(cfg, "rel/2", [missing])
