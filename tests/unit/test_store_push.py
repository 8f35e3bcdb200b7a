"""``push`` over a store filled from a fake chroot store, Nix faked at its one seam (``_nix``).

``nix path-info --json`` is answered from the PathInfos ``fake_path`` made; the real writer,
checks and records run over them.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import pytest

from mlbuild import _nix
from mlbuild.errors import StoreError
from mlbuild.store import StoreConfig, push, verify
from mlbuild.store.keys import generate_key_pair
from mlbuild.store.layout import Layout
from mlbuild.store.narinfo import NarInfo
from mlbuild.store.upload import PathInfo
from tests.unit.test_store_publish import fake_path, store  # noqa: F401  (fixture)


class FakeNix:
    """The local store's registrations, as ``nix path-info --json [--recursive]`` gives them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.infos: dict[str, PathInfo] = {}
        monkeypatch.setattr(_nix, "path_info_in", self.path_info_in)

    def add(self, *infos: PathInfo) -> None:
        self.infos.update({i.path: i for i in infos})

    def path_info_in(self, paths: Sequence[str], *, store: str | None = None,
                     recursive: bool = False) -> dict[str, dict[str, Any]]:
        todo, out = list(paths), {}
        while todo:
            p = todo.pop()
            if p in out:
                continue
            i = self.infos[p]
            out[p] = {"narHash": i.nar_hash, "narSize": i.nar_size, "references": list(i.references)}
            if recursive:
                todo += i.references
        return out


@pytest.fixture
def nix(monkeypatch: pytest.MonkeyPatch) -> FakeNix:
    return FakeNix(monkeypatch)


def _closure(chroot: Path, nix: FakeNix) -> tuple[PathInfo, PathInfo]:
    dep = fake_path(chroot, "dep", "dep\n" * 100)
    top = fake_path(chroot, "top", "top", refs=(dep.path,))
    nix.add(dep, top)
    return dep, top


def test_push_then_push_again_finds_everything_there(store: tuple[StoreConfig, Path], nix: FakeNix) -> None:
    cfg, chroot = store
    dep, top = _closure(chroot, nix)
    first = push(cfg, [top.path], local_store=str(chroot))
    assert sorted(n.store_path for n in first.pushed) == sorted([dep.path, top.path]) and not first.present
    again = push(cfg, [top.path], local_store=str(chroot))
    assert not again.pushed and sorted(again.present) == sorted([dep.path, top.path]) and not again.replaced


def test_push_signs_entries_the_store_s_key_has_not_signed(store: tuple[StoreConfig, Path],
                                                            nix: FakeNix, tmp_path: Path) -> None:
    """Pushed with key A; the store's key becomes B: the next push signs with B, not "already
    there", and keeps A's signature (readers not yet moved to B still take the entries) and the NAR."""
    cfg, chroot = store
    dep, top = _closure(chroot, nix)
    push(cfg, [top.path], local_store=str(chroot))
    nars = sorted(p.name for p in (cfg.root / "nar").iterdir())
    key_b = generate_key_pair("unit-b", tmp_path / "b.sec", tmp_path / "b.pub")
    cfg_b = replace(cfg, secret_key_file=tmp_path / "b.sec", public_keys=(str(key_b.public),))
    (cfg.root / "mlbuild" / "public-key").write_text(f"{key_b.public}\n")   # the store changes keys
    assert len(verify(cfg_b).problems) == 2
    said: list[str] = []
    r = push(cfg_b, [top.path], local_store=str(chroot), progress=said.append)
    assert not r.pushed and not r.present and not r.replaced and sorted(r.signed) == sorted([dep.path, top.path])
    assert f"signing {dep.path}: the store's entry lacks a signature by a key the store names; adding unit-b's, " \
        "keeping its others" in said, said
    assert verify(cfg_b).ok and verify(cfg).ok   # readers of either key take them
    assert sorted(p.name for p in (cfg.root / "nar").iterdir()) == nars
    assert [x.split(":")[0] for x in NarInfo.parse(Layout(cfg.root).narinfo(dep.path).read_text()).sigs] == \
        ["unit-1", "unit-b"]
    assert not push(cfg_b, [top.path], local_store=str(chroot)).signed   # once


def test_a_key_rotation_s_push_adds_the_new_key_s_signature(store: tuple[StoreConfig, Path],
                                                            nix: FakeNix, tmp_path: Path) -> None:
    """store-config/README.md's rotation: the new key as a second line of public-key, push again
    with it, drop the old line. The push found every entry "already there" (the old key is one the
    store names), so once the old line went, readers of the new key refused all of them."""
    cfg, chroot = store
    dep, top = _closure(chroot, nix)
    push(cfg, [top.path], local_store=str(chroot))
    key_b = generate_key_pair("unit-b", tmp_path / "b.sec", tmp_path / "b.pub")
    shown = cfg.root / "mlbuild" / "public-key"
    shown.write_text(f"{cfg.secret_key().public}\n{key_b.public}\n")
    both = (str(cfg.secret_key().public), str(key_b.public))
    said: list[str] = []
    r = push(replace(cfg, secret_key_file=tmp_path / "b.sec", public_keys=both), [top.path], local_store=str(chroot),
             progress=said.append)
    assert sorted(r.signed) == sorted([dep.path, top.path]) and not r.pushed and not r.present
    # what it does and why, not the reader's advice ("no signature by a trusted key ... trusted: unit-b;
    # to trust another key, set MLBUILD_STORE_PUBLIC_KEYS"), which told the user that unit-1 was
    # untrusted and to trust another key, in the middle of the README's key change
    assert f"signing {dep.path}: the store's entry lacks a signature by this key, unit-b (the store names 2 keys: " \
        "a key change); adding unit-b's, keeping its others" in said, said
    assert not any("trust" in m for m in said), said
    shown.write_text(f"{key_b.public}\n")   # no reader needs the old key any more
    assert verify(replace(cfg, public_keys=(str(key_b.public),))).ok and verify(cfg).ok
    again = push(replace(cfg, secret_key_file=tmp_path / "b.sec", public_keys=both), [top.path],
                 local_store=str(chroot))
    assert not again.signed and sorted(again.present) == sorted([dep.path, top.path])


def test_a_key_this_machine_trusts_is_not_enough_where_the_store_names_its_own(
        store: tuple[StoreConfig, Path], nix: FakeNix, tmp_path: Path) -> None:
    """The store names A; an entry signed by B, which this machine also trusts, was "already
    there" for ever, and readers trusting A refused it."""
    cfg, chroot = store
    dep, top = _closure(chroot, nix)
    key_b = generate_key_pair("unit-b", tmp_path / "b.sec", tmp_path / "b.pub")
    both = (str(cfg.secret_key().public), str(key_b.public))
    (cfg.root / "mlbuild" / "public-key").unlink()   # B signs while the store names no key
    push(replace(cfg, secret_key_file=tmp_path / "b.sec", public_keys=both), [top.path], local_store=str(chroot))
    (cfg.root / "mlbuild" / "public-key").write_text(f"{cfg.secret_key().public}\n")
    r = push(replace(cfg, public_keys=both), [top.path], local_store=str(chroot))
    assert sorted(r.signed) == sorted([dep.path, top.path]) and verify(cfg).ok


def test_push_replaces_an_edited_signature_and_a_narinfo_of_another_path(store: tuple[StoreConfig, Path],
                                                                       nix: FakeNix) -> None:
    cfg, chroot = store
    dep, top = _closure(chroot, nix)
    other = fake_path(chroot, "other", "other")
    nix.add(other)
    push(cfg, [top.path, other.path], local_store=str(chroot))
    layout = Layout(cfg.root)
    f = layout.narinfo(dep.path)
    text = f.read_text()
    sig = next(line for line in text.splitlines() if line.startswith("Sig: "))
    f.write_text(text.replace(sig, sig[:-6] + ("AAAAA=" if not sig.endswith("AAAAA=") else "BBBBB=")))
    layout.narinfo(top.path).write_text(layout.narinfo(other.path).read_text())   # describes `other`
    r = push(cfg, [top.path, other.path], local_store=str(chroot))
    assert dict(r.replaced).keys() == {top.path} and sorted(r.present) == [other.path]
    assert dict(r.replaced)[top.path] == f"describes {other.path}, not {top.path}"
    assert r.signed == [dep.path]   # the edited signature replaced by a good one of the same key
    assert [x.split(":")[0] for x in NarInfo.parse(layout.narinfo(dep.path).read_text()).sigs] == ["unit-1"]
    assert NarInfo.parse(layout.narinfo(top.path).read_text()).store_path == top.path
    assert verify(cfg).ok


def test_cli_push_names_what_it_replaced(store: tuple[StoreConfig, Path], nix: FakeNix,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from mlbuild.cli.main import cli
    cfg, chroot = store
    dep, top = _closure(chroot, nix)
    push(cfg, [top.path], local_store=str(chroot))
    (cfg.root / NarInfo.parse(Layout(cfg.root).narinfo(dep.path).read_text()).url).unlink()
    monkeypatch.setenv("MLBUILD_STORE_SECRET_KEY", str(cfg.secret_key_file))
    monkeypatch.setenv("MLBUILD_STORE_PUBLIC_KEYS", str(cfg.secret_key().public))
    monkeypatch.chdir(chroot)
    out = CliRunner().invoke(cli, ["store", "--store", str(cfg.root), "push", "--from", str(chroot), top.path])
    assert out.exit_code == 0, out.output
    assert "pushed 1 paths" in out.output and "1 already there" in out.output
    assert f"1 of the pushed replaced entries a reader would refuse (e.g. {dep.path} is missing" in out.output
    assert os.path.exists(cfg.root / NarInfo.parse(Layout(cfg.root).narinfo(dep.path).read_text()).url)


def test_push_refuses_a_key_that_is_not_the_store_s_published_key(store: tuple[StoreConfig, Path], nix: FakeNix,
                                                                 tmp_path: Path) -> None:
    """MLBUILD_STORE named a team's store, the key settings were left unset: the machine's own key
    (trusted here, as /etc/mlbuild/store.pub is) signed everything, and every reader that trusts
    the store's key refused it. Refused before anything is written, naming both keys."""
    from mlbuild.errors import StoreKeyError
    from mlbuild.store import load_store_config
    cfg, chroot = store
    dep, top = _closure(chroot, nix)
    machine = generate_key_pair("machine-1", tmp_path / "m.sec", tmp_path / "m.pub")
    env = {"MLBUILD_STORE": str(cfg.root), "MLBUILD_STORE_PUBLIC_KEYS": str(tmp_path / "m.pub")}
    monkey = replace(load_store_config(tmp_path, env=env), secret_key_file=tmp_path / "m.sec")
    with pytest.raises(StoreKeyError) as e:
        push(monkey, [top.path], local_store=str(chroot))
    msg = str(e.value)
    store_key = cfg.secret_key().public
    assert f"this machine signs with {machine.public} ({tmp_path / 'm.sec'}, the machine's default: neither " \
           f"MLBUILD_STORE_SECRET_KEY nor [store].secret-key is set), not the store's key {store_key} " \
           f"({cfg.root / 'mlbuild' / 'public-key'})" in msg
    assert "nothing was pushed" in msg and "Set MLBUILD_STORE_SECRET_KEY (or [store].secret-key) to the file " \
                                          "holding the secret half of unit-1" in msg
    assert not list(Layout(cfg.root).narinfos()) and not list((cfg.root / "mlbuild" / "roots" / "pushes").iterdir())
    # the store's own key pushes; a store that names no key takes any trusted one
    assert len(push(cfg, [top.path], local_store=str(chroot)).pushed) == 2
    (cfg.root / "mlbuild" / "public-key").unlink()
    signed = push(monkey, [top.path], local_store=str(chroot))   # its signature added; the store's kept
    assert sorted(signed.signed) == sorted([dep.path, top.path]) and not signed.replaced and verify(cfg).ok
    # a published key file that holds no key is named, not taken for a mismatch
    (cfg.root / "mlbuild" / "public-key").write_text("not a key\n")
    with pytest.raises(StoreKeyError, match=r"public-key does not hold the store's public key"):
        push(cfg, [top.path], local_store=str(chroot))


def _full(*args: object, **kw: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_store_is_one_error_and_leaves_no_record_of_the_failed_push(store: tuple[StoreConfig, Path],
                                                                         nix: FakeNix,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC was a traceback, and the push record of the failed push stayed (gc kept its paths)."""
    import mlbuild.store.upload as upload
    from mlbuild.errors import StoreError
    cfg, chroot = store
    dep = fake_path(chroot, "dep", "dep\n" * 100)                    # zstd: written by _write_all
    weights = fake_path(chroot, "w.safetensors", os.urandom(1 << 16))  # none: by kernel_copy
    top = fake_path(chroot, "top", "top", refs=(dep.path, weights.path))
    nix.add(dep, weights, top)
    push(cfg, [top.path, dep.path], local_store=str(chroot), name="dep")
    records = cfg.root / "mlbuild" / "roots" / "pushes"
    before = sorted(records.rglob("*"))
    layout = Layout(cfg.root)
    for p in (dep, weights, top):   # the next push has to write them again
        layout.narinfo(p.path).unlink()
    for writer in ("_write_all", "kernel_copy"):
        with monkeypatch.context() as m:
            m.setattr(upload, writer, _full)
            with pytest.raises(StoreError) as e:
                push(cfg, [top.path, dep.path], local_store=str(chroot), name="dep")
        msg = str(e.value)
        assert msg.startswith(f"cannot push: the store folder {cfg.root} is full (No space left on device); ")
        assert "the push kept no record" in msg and "gc" in msg
        assert sorted(records.rglob("*")) == before   # the earlier record of the paths stays, no new one
        assert not list(layout.temp_files()) and not layout.narinfo(top.path).exists()
    # the same push with room: its record replaces the older one of the same paths only now
    push(cfg, [top.path, dep.path], local_store=str(chroot), name="dep")
    assert len(list((records / "dep").iterdir())) == 1 and verify(cfg).ok


def test_cli_a_full_store_is_an_error_not_a_traceback(store: tuple[StoreConfig, Path], nix: FakeNix,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import mlbuild.store.layout as layout_mod
    import mlbuild.store.roots as roots
    from mlbuild.cli.main import cli
    cfg, chroot = store
    dep, top = _closure(chroot, nix)
    monkeypatch.setenv("MLBUILD_STORE_SECRET_KEY", str(cfg.secret_key_file))
    monkeypatch.setenv("MLBUILD_STORE_PUBLIC_KEYS", str(cfg.secret_key().public))
    monkeypatch.chdir(chroot)
    push(cfg, [top.path], local_store=str(chroot))
    monkeypatch.setattr(layout_mod.os, "write", _full)   # every file the store writes
    for args in (["push", "--from", str(chroot), "--name", "x", top.path], ["tag", "release-1", top.path]):
        out = CliRunner().invoke(cli, ["store", "--store", str(cfg.root), *args])
        assert out.exit_code == 1 and not isinstance(out.exception, OSError), out.output
        assert f"Error: cannot {' '.join(args[:2]) if args[0] == 'tag' else 'push'}: the store folder {cfg.root} " \
               f"is full (No space left on device)" in out.output, out.output
    assert not (cfg.root / "mlbuild" / "roots" / "tags" / "release-1").exists()
    assert not (cfg.root / "mlbuild" / "roots" / "pushes" / "x").exists() or \
        not list((cfg.root / "mlbuild" / "roots" / "pushes" / "x").iterdir())
    assert roots is not None


def test_a_push_stopped_by_sigterm_keeps_no_record_and_no_temp_file(store: tuple[StoreConfig, Path],
                                                                     tmp_path: Path) -> None:
    """SIGTERM (a CI job cancelled, `timeout`, `docker stop`) killed the push outright: its record
    stayed, taking a keep-last slot from a real push, and its temp file waited for gc. The CLI now
    makes SIGTERM an exit that runs the push's clean-up, as Ctrl-C does."""
    import json
    import signal
    import subprocess
    import sys
    import textwrap

    from tests.conftest import REPO

    cfg, chroot = store
    info = fake_path(chroot, "big", os.urandom(1 << 16))
    # The real CLI in a process of its own; Nix's answer given as FakeNix gives it, and the NAR
    # writer held open long enough to be stopped mid-write.
    script = textwrap.dedent(f"""
        import sys, time
        from mlbuild import _nix
        from mlbuild.store import upload
        INFO = {json.dumps({"narHash": info.nar_hash, "narSize": info.nar_size, "references": []})}
        _nix.path_info_in = lambda paths, store=None, recursive=False: {{p: INFO for p in paths}}
        for name in ("_write_plain", "_write_stream"):
            def slow(*a, _real=getattr(upload, name), **k):
                print("writing", flush=True)
                time.sleep(60)
                return _real(*a, **k)
            setattr(upload, name, slow)
        sys.argv = ["mlbuild", "store", "--store", {str(cfg.root)!r}, "push", "--from", {str(chroot)!r}, {info.path!r}]
        from mlbuild.cli.main import main
        main()
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLBUILD_STORE_SECRET_KEY": str(cfg.secret_key_file),
           "MLBUILD_STORE_PUBLIC_KEYS": str(cfg.secret_key().public)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "writing\n", proc.communicate()
    assert list((cfg.root / "mlbuild" / "roots" / "pushes").rglob("*")), "the record is written before uploads"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not [p for p in (cfg.root / "mlbuild" / "roots" / "pushes").rglob("*") if p.is_file()]
    assert not [p for p in (cfg.root / "nar").iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_the_store_s_public_key_is_read_only_from_a_file_in_the_store(tmp_path: Path, kind: str) -> None:
    """Any writer of the store could make `<store>/mlbuild/public-key` a link to a file only root may read (a
    one-line token): `mlbuild store init`, push or build run by root showed its first 80 characters in the error
    ("public key 'ghp_...' is not `name:base64`"). A FIFO there hung every one of them."""
    import subprocess

    from tests.conftest import MLBUILD

    root = tmp_path / "store"
    Layout(root).init()
    secret = tmp_path / "token"
    secret.write_text("ghp_SuperSecretTokenValue0123456789\n")
    secret.chmod(0o600)
    key = root / "mlbuild" / "public-key"
    if kind == "link":
        key.symlink_to(secret)
    else:
        os.mkfifo(key)
    proc = subprocess.run([*MLBUILD, "store", "--store", str(root), "init"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ghp_" not in proc.stdout + proc.stderr
    why = f"is a symbolic link (to {secret}), not the store's public key file" if kind == "link" else \
        "is not a file, so it holds no public key"
    assert f"Error: {key} {why}" in proc.stderr, proc.stderr


def test_gc_during_a_push_keeps_the_entries_the_push_reuses(store: tuple[StoreConfig, Path], nix: FakeNix,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """gc read the roots, a push then found an old unrooted entry there (its dependency), touched it
    and published what references it, and gc removed the dependency: the store served a model
    whose closure was gone."""
    import importlib
    import threading
    import time

    from mlbuild.store.roots import read_roots

    gc_module = importlib.import_module("mlbuild.store.gc")   # the module, not the function of that name

    cfg, chroot = store
    dep, top = _closure(chroot, nix)
    push(cfg, [dep.path], local_store=str(chroot))
    layout = Layout(cfg.root)
    for rec in (layout.roots_dir / "pushes").rglob("*"):   # its record dropped (keep-last), and it is old
        if rec.is_file():
            rec.unlink()
    hours_ago = time.time() - 7200
    os.utime(layout.narinfo(dep.path), (hours_ago, hours_ago))
    read = threading.Event()

    def slow_roots(*args: Any, **kw: Any) -> Any:   # gc between reading the roots and removing entries
        roots = read_roots(*args, **kw)
        read.set()
        time.sleep(1.0)
        return roots

    monkeypatch.setattr(gc_module, "read_roots", slow_roots)
    collector = threading.Thread(target=lambda: gc_module.gc(cfg))
    collector.start()
    assert read.wait(10)
    pushed = push(cfg, [top.path], local_store=str(chroot))
    collector.join(20)
    report = verify(cfg)
    assert report.ok, report.problems
    assert layout.narinfo(dep.path).exists() and layout.narinfo(top.path).exists()
    assert pushed.targets == [top.path]


def test_a_push_reusing_a_condemned_nar_keeps_it_from_a_concurrent_gc(store: tuple[StoreConfig, Path],
                                                                       nix: FakeNix,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A path gc had removed was pushed again: its NAR, condemned long ago, was still there, so the
    push kept it, and a gc running before the narinfo was written deleted it: a narinfo with no NAR."""
    import importlib
    import json
    import time

    from mlbuild.store import gc

    upload = importlib.import_module("mlbuild.store.upload")
    cfg, chroot = store
    dep, top = _closure(chroot, nix)
    first = push(cfg, [dep.path], local_store=str(chroot)).pushed[0]
    layout = Layout(cfg.root)
    layout.narinfo(dep.path).unlink()   # as a gc removes an unrooted entry, condemning its NAR
    for rec in (layout.roots_dir / "pushes").rglob("*"):
        if rec.is_file():
            rec.unlink()
    hours_ago = time.time() - 7200
    layout.condemned_file.write_text(json.dumps({first.url: hours_ago}))
    os.utime(layout.nar(first.url), (hours_ago, hours_ago))
    publish = upload.publish_bytes

    def gc_first(dest: Path, data: bytes, *args: Any) -> None:   # a gc between the NAR and the narinfo
        gc(cfg)
        publish(dest, data, *args)

    monkeypatch.setattr(upload, "publish_bytes", gc_first)
    push(cfg, [dep.path], local_store=str(chroot))
    report = verify(cfg)
    assert report.ok, report.problems


def test_an_empty_push_name_or_local_store_is_refused_not_taken_as_the_default(
        store: tuple[StoreConfig, Path], nix: FakeNix, monkeypatch: pytest.MonkeyPatch) -> None:
    """`store push --name "$NAME"` with NAME unset pushed under each target's own name (the record gc
    counts --keep-last by), and `--from ""`/`pull --to ""` used the machine's store, without a word."""
    from click.testing import CliRunner

    from mlbuild.cli.main import cli
    cfg, chroot = store
    dep, top = _closure(chroot, nix)
    with pytest.raises(StoreError, match=re.escape("push name '' must match")):
        push(cfg, [top.path], local_store=str(chroot), name="")
    assert not Layout(cfg.root).narinfo(top.path).exists()
    assert not list((Layout(cfg.root).roots_dir / "pushes").glob("*/*"))
    monkeypatch.setenv("MLBUILD_STORE_SECRET_KEY", str(cfg.secret_key_file))
    monkeypatch.setenv("MLBUILD_STORE_PUBLIC_KEYS", str(cfg.secret_key().public))
    monkeypatch.chdir(chroot)
    for args in (["push", "--from", "", top.path], ["pull", "--to", " ", top.path]):
        out = CliRunner().invoke(cli, ["store", "--store", str(cfg.root), *args])
        assert out.exit_code == 2 and "is empty (an unset variable?)" in out.output, out.output
        assert not Layout(cfg.root).narinfo(top.path).exists()


def test_a_store_folder_that_goes_away_mid_push_is_one_error(store: tuple[StoreConfig, Path], nix: FakeNix,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's NFS mount dropped (or was unmounted) while a push wrote a NAR: the rename into
    place failed and the push ended in a FileNotFoundError traceback. It is one error now, naming
    the folder and what to do; the mount back, the same push completes."""
    import shutil

    import mlbuild.store.upload as upload

    cfg, chroot = store
    dep, top = _closure(chroot, nix)
    real_replace = os.replace
    hidden = cfg.root.parent / "unmounted"

    def unmount_then_replace(src: Any, dst: Any) -> None:
        if str(dst).startswith(str(cfg.root / "nar")):
            shutil.move(cfg.root, hidden)   # the mount point is empty now
            cfg.root.mkdir()
        real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(upload.os, "replace", unmount_then_replace)
        with pytest.raises(StoreError) as e:
            push(cfg, [top.path], local_store=str(chroot))
    assert str(e.value).startswith(f"cannot push: the store folder {cfg.root} went away meanwhile (No such file or "
                                   f"directory: ")
    assert "mount it again, then run it again" in str(e.value)
    cfg.root.rmdir()
    shutil.move(hidden, cfg.root)
    push(cfg, [top.path], local_store=str(chroot))
    assert verify(cfg).ok
