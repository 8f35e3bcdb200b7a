"""``store verify``: what it names for each problem, and what it says to push again after a repair."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mlbuild.cli.main import cli
from mlbuild.store import StoreConfig, verify
from mlbuild.store.layout import Layout
from tests.unit.test_store_publish import fake_path, put, store  # noqa: F401  (fixture)


def test_a_narinfo_filed_under_another_path_names_that_path_not_the_one_it_describes(
        store: tuple[StoreConfig, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """It said `corrupt /nix/store/<innocent> describes <innocent>, not <hash>`, and after --repair
    told to push the innocent path again, not the one whose entry was removed."""
    cfg, chroot = store
    layout = Layout(cfg.root)
    innocent = put(cfg, chroot, fake_path(chroot, "small.txt", "s")).store_path
    victim = put(cfg, chroot, fake_path(chroot, "model", "m")).store_path
    victim_hash = victim.split("/")[-1][:32]
    layout.narinfo(victim).write_text(layout.narinfo(innocent).read_text())
    (problem,) = verify(cfg).problems
    assert problem.kind == "corrupt" and problem.store_path == "" and problem.narinfo == layout.narinfo(victim)
    assert problem.detail == f"filed as the entry of the path /nix/store/{victim_hash}-…, but describes {innocent}"
    monkeypatch.chdir(chroot.parent)
    monkeypatch.setenv("MLBUILD_STORE_PUBLIC_KEYS", str(cfg.secret_key().public))
    base = ["store", "--store", str(cfg.root), "verify"]
    out = CliRunner().invoke(cli, base)
    assert out.exit_code == 1 and f"corrupt\t{layout.narinfo(victim)}\tfiled as the entry" in out.stdout
    assert f"\t{innocent}" not in out.stdout and "checked 2 entries, 1 problems" in out.stdout
    out = CliRunner().invoke(cli, [*base, "--repair"])
    assert out.exit_code == 0, out.output
    assert f"e.g. the path of hash {victim_hash} (/nix/store/{victim_hash}-…)" in out.stderr
    assert innocent not in out.stderr
    assert verify(cfg).ok and layout.narinfo(innocent).exists() and not layout.narinfo(victim).exists()


def test_pull_of_a_damaged_nar_through_nix_copy_says_what_to_do(store: tuple[StoreConfig, Path],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`nix copy` refusing a NAR corrupted in place (same size) showed only Nix's "hash mismatch
    importing path"; the fast restore said to repair and push again. Now both do."""
    from mlbuild import _nix
    from mlbuild.errors import NixError
    from mlbuild.store import pull
    cfg, chroot = store
    path = put(cfg, chroot, fake_path(chroot, "code", {"a.py": "print(1)\n" * 100})).store_path

    def copy(*args: object, **kw: object) -> None:
        raise NixError("`nix copy` failed", f"error: hash mismatch importing path '{path}';\n"
                                            f"  specified: sha256:0abc\n  got:       sha256:1def")

    monkeypatch.setattr(_nix, "invalid_paths_in", lambda paths, store=None: list(paths))
    monkeypatch.setattr(_nix, "copy_from_cache", copy)
    with pytest.raises(NixError) as e:
        pull(cfg, [path], local_store=str(chroot / "elsewhere"), fast=False)
    msg = str(e.value)
    assert f"the store's NAR of {path} does not have the hash its signed narinfo says (damaged in the store " \
           f"{cfg.root}); run `mlbuild store --store {cfg.root} verify --repair` and push it again" in msg
    assert "hash mismatch importing path" in msg   # Nix's own words stay


def test_pull_of_a_nar_cut_short_or_removed_names_it_before_copying(store: tuple[StoreConfig, Path],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A NAR cut short (a crash before its write-back) or removed by hand: `nix copy` said only
    "Failed to open archive (Truncated zstd input)", naming neither the path nor the fix."""
    from mlbuild import _nix
    from mlbuild.errors import StoreCorruptError
    from mlbuild.store import pull
    from mlbuild.store.narinfo import NarInfo
    cfg, chroot = store
    layout = Layout(cfg.root)
    dep = put(cfg, chroot, fake_path(chroot, "code", {"a.py": "print(1)\n" * 100}))
    top = put(cfg, chroot, fake_path(chroot, "pkg", "p", refs=(dep.store_path,)))
    copied: list[object] = []
    monkeypatch.setattr(_nix, "invalid_paths_in", lambda paths, store=None: list(paths))
    monkeypatch.setattr(_nix, "copy_from_cache", lambda *a, **kw: copied.append(a))
    nar = cfg.root / NarInfo.parse(layout.narinfo(dep.store_path).read_text()).url
    whole = nar.read_bytes()
    nar.write_bytes(whole[:20])
    with pytest.raises(StoreCorruptError) as e:
        pull(cfg, [top.store_path], local_store=str(chroot / "elsewhere"), fast=False)
    assert f"the store's entry of {dep.store_path} has a damaged NAR (NAR file has 20 bytes, narinfo says " \
           f"{len(whole)}) in {cfg.root}, so nothing was fetched; run `mlbuild store --store {cfg.root} verify " \
           f"--repair` and push it again from a machine that has it (`mlbuild store push {dep.store_path}`)" \
           in str(e.value)
    nar.unlink()
    with pytest.raises(StoreCorruptError, match=f"{dep.store_path} has no NAR file nar/"):
        pull(cfg, [top.store_path], local_store=str(chroot / "elsewhere"), fast=False)
    assert not copied
    nar.write_bytes(whole)
    pull(cfg, [top.store_path], local_store=str(chroot / "elsewhere"), fast=False)
    assert copied


def test_entries_lacking_only_a_reference_the_store_does_not_have_are_to_push_not_to_repair(
        store: tuple[StoreConfig, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The code path's narinfo removed by hand: the model and package that reference it are sound,
    and pushing the code makes them whole. The advice was `verify --repair`, which deleted them
    (a trained model lost where no machine still had it)."""
    cfg, chroot = store
    layout = Layout(cfg.root)
    code = put(cfg, chroot, fake_path(chroot, "code", "c")).store_path
    model = put(cfg, chroot, fake_path(chroot, "m-model", "m", refs=(code,))).store_path
    pkg = put(cfg, chroot, fake_path(chroot, "m-package", "p", refs=(code, model))).store_path
    layout.narinfo(code).unlink()
    report = verify(cfg)
    assert {p.store_path: p.kind for p in report.problems} == {model: "incomplete", pkg: "incomplete"}
    assert report.absent == {code} and report.unreferenced() == report.problems
    details = {p.store_path: p.detail for p in report.problems}
    assert details[model] == f"references {code}, which the store does not have"
    advice = report.advice(cfg)
    assert advice == (f"2 entries are sound but reference paths the store does not have ({code}): push it from a "
                      f"machine that has it (`mlbuild store push {code}`) and they are whole again; `mlbuild store "
                      f"--store {cfg.root} verify --repair` would delete all 2")
    # a reference that is there but damaged is still a case for --repair
    put(cfg, chroot, fake_path(chroot, "code", "c"))   # another path; the old one stays absent
    bad = put(cfg, chroot, fake_path(chroot, "other", "o")).store_path
    layout.narinfo(bad).write_text(layout.narinfo(bad).read_text().replace("NarSize: ", "NarSize: 9"))
    put(cfg, chroot, fake_path(chroot, "uses-other", "u", refs=(bad,)))
    advice = verify(cfg).advice(cfg)
    assert advice.startswith("2 bad entries in the store; remove them with") and "2 entries are sound" in advice


def _unreadable(*files: Path) -> list[str]:
    """Make ``files`` unreadable to the command this returns the prefix of: root reads any file,
    so as root they go to another owner and the command runs without the capabilities that
    override file modes."""
    import os
    for f in files:
        if os.geteuid() == 0:
            os.chown(f, 65534, 65534)
        f.chmod(0o600 if os.geteuid() == 0 else 0)
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []


def test_files_this_user_may_not_read_are_not_damage_and_a_repair_keeps_them(store: tuple[StoreConfig, Path],
                                                                             tmp_path: Path) -> None:
    """A narinfo or NAR of the wrong mode (written by hand, copied with 0600): verify was a
    PermissionError traceback, or called the NAR corrupt, and --repair deleted sound entries;
    gc and stats said to remove them with --repair."""
    import subprocess

    from mlbuild.store.narinfo import NarInfo
    from tests.conftest import MLBUILD
    cfg, chroot = store
    layout = Layout(cfg.root)
    code = put(cfg, chroot, fake_path(chroot, "code", "c")).store_path
    model = put(cfg, chroot, fake_path(chroot, "m-model", "m", refs=(code,)))
    pkg = put(cfg, chroot, fake_path(chroot, "m-package", "p", refs=(code, model.store_path))).store_path
    nar = cfg.root / model.url
    prefix = _unreadable(layout.narinfo(code), nar)
    env = {**__import__("os").environ, "MLBUILD_STORE_PUBLIC_KEYS": str(cfg.secret_key().public)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *MLBUILD, "store", "--store", str(cfg.root), *args], capture_output=True,
                              text=True, env=env, cwd=tmp_path)

    for args in (["verify"], ["verify", "--repair"]):
        proc = run(*args)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"unreadable\t{layout.narinfo(code)}\tthis user may not read it (Permission denied)" in proc.stdout
        assert f"unreadable\t{model.store_path}\tits NAR file: this user may not read it" in proc.stdout
        assert pkg not in proc.stdout and "checked 3 entries, 2 problems" in proc.stdout   # not "incomplete"
        assert proc.stderr.startswith("Error: 2 entries cannot be checked: this user may not read their files")
        assert f"`chmod g+r {' '.join(sorted([str(nar), str(layout.narinfo(code))]))}` as their owner" in proc.stderr
        assert "removed" not in proc.stdout and "repaired" not in proc.stderr
    assert layout.narinfo(code).exists() and nar.exists() and layout.narinfo(pkg).exists()
    gc = run("gc", "--grace", "0", "--dry-run")
    assert gc.returncode == 1 and f"{layout.narinfo(code)}: this user may not read it" in gc.stderr, gc.stderr
    assert "make it readable to the store's group (`chmod g+r" in gc.stderr and "verify --repair" not in gc.stderr
    stats = run("stats")
    assert stats.returncode == 0 and "make it readable to the store's group" in stats.stderr, stats.stderr
    assert "verify --repair" not in stats.stderr
    assert NarInfo.parse(layout.narinfo(pkg).read_text()).store_path == pkg


def test_pull_of_files_this_user_may_not_read_names_them_and_the_fix(store: tuple[StoreConfig, Path],
                                                                     tmp_path: Path) -> None:
    """A narinfo of mode 0600: pull was a PermissionError traceback; a NAR of mode 0600: Nix said
    only "error: coroutine has finished"."""
    import os
    import subprocess

    from mlbuild.store.narinfo import NarInfo
    from tests.conftest import MLBUILD
    cfg, chroot = store
    layout = Layout(cfg.root)
    code = put(cfg, chroot, fake_path(chroot, "code", "c")).store_path
    model = put(cfg, chroot, fake_path(chroot, "m-model", "m", refs=(code,)))
    nar = cfg.root / NarInfo.parse(layout.narinfo(code).read_text()).url
    env = {**os.environ, "MLBUILD_STORE_PUBLIC_KEYS": str(cfg.secret_key().public)}
    for unreadable, target, said in ((layout.narinfo(code), code, f"cannot fetch {code}: its narinfo "),
                                     (nar, model.store_path, f"cannot fetch from the store {cfg.root}: this user "
                                                              f"may not read {nar}, so nothing was fetched")):
        prefix = _unreadable(unreadable)
        local = tmp_path / f"local-{unreadable.name}"
        proc = subprocess.run([*prefix, *MLBUILD, "store", "--store", str(cfg.root), "pull", "--to", str(local),
                               target], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith(f"Error: {said}") and f"`chmod g+r {unreadable}`" in proc.stderr, proc.stderr
        assert not (local / target.lstrip("/")).exists()
        os.chown(unreadable, os.getuid(), os.getgid())
        unreadable.chmod(0o664)


def test_a_folder_named_like_a_narinfo_is_a_bad_entry_not_a_traceback(store: tuple[StoreConfig, Path]) -> None:
    """A folder <hash>.narinfo in the store (a `cp -r` or `mkdir` into the wrong place) ended verify, gc,
    stats and pull in an IsADirectoryError traceback (the check that it is a file came after opening it
    as one), and `verify --repair` could not unlink it. It is a bad entry now: verify lists it, gc names
    it, and a repair removes it when empty and names it when not."""
    from mlbuild.errors import StoreCorruptError
    from mlbuild.store import gc

    cfg, chroot = store
    put(cfg, chroot, fake_path(chroot, "model", "m"))
    folder = cfg.root / ("0" * 32 + ".narinfo")
    folder.mkdir()
    report = verify(cfg)
    assert [(p.kind, p.narinfo) for p in report.problems] == [("corrupt", folder)]
    with pytest.raises(StoreCorruptError, match=rf"{folder} is not a file; mlbuild does not read it: remove it "
                                                rf"\(`rm -r {folder}`\)"):
        gc(cfg, grace=0)
    (folder / "x").mkdir()
    with pytest.raises(StoreCorruptError, match=f"{folder} is a folder, not a narinfo, and not empty; move it out"):
        verify(cfg, repair=True)
    (folder / "x").rmdir()
    assert verify(cfg, repair=True).removed == [folder] and not folder.exists()
    assert verify(cfg).ok


def test_a_folder_in_place_of_a_nar_is_removed_by_a_repair(store: tuple[StoreConfig, Path]) -> None:
    """A folder where an entry's NAR belongs made the entry corrupt (its size), and `verify --repair`
    then ended in an IsADirectoryError traceback as it unlinked the NAR, with the narinfo removed."""
    cfg, chroot = store
    info = put(cfg, chroot, fake_path(chroot, "model", "m" * 100))
    nar = Layout(cfg.root).nar(info.url)
    nar.unlink()
    nar.mkdir()
    assert [p.kind for p in verify(cfg).problems] == ["corrupt"]
    report = verify(cfg, repair=True)
    assert nar in report.removed and not nar.exists()
    assert verify(cfg).ok and not list(Layout(cfg.root).narinfos())
