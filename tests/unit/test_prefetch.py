"""mlbuild prefetch (toolchain.prefetch): what it asks Nix, and what it says when it cannot help."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import pytest

from mlbuild import _nix
from mlbuild.config import load_project
from mlbuild.errors import InterpreterError, LockError
from mlbuild.interpreter import probe
from mlbuild.lockfile import write_lock
from mlbuild.storepath import fixed_output_path
from mlbuild.toolchain import prefetch

WHEEL = {"name": "a", "version": "1", "filename": "a-1-py3-none-any.whl", "sha256": "1" * 64}


class FakeNix:
    """The local store: which paths are valid; every ``nix-store --check-validity`` call recorded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, valid: set[str]) -> None:
        self.valid = valid
        self.calls: list[list[str]] = []
        monkeypatch.setattr(_nix, "invalid_paths", self.invalid_paths)
        monkeypatch.setattr(_nix, "add_roots", lambda paths, root_dir: None)

    def invalid_paths(self, paths: Sequence[str]) -> list[str]:
        self.calls.append(list(paths))
        return [p for p in paths if p not in self.valid]


def _project(tree: Any, version: str) -> tuple[Any, str, str]:
    ident = probe(sys.executable)
    root = tree({"mlbuild.toml": f'[project]\nname = "p"\n[python]\ninterpreter = "{sys.executable}"\n'
                                 'requirements = ["a"]\n'})
    snapshot = {"name": f"python-{version}-snapshot", "sha256": "2" * 64}
    write_lock(root / "mlbuild.lock", {
        "requirements": ["a"], "wheels": [WHEEL], "tools": [],
        "interpreter": {"version": version, "executable": ident.executable, "libc": ident.libc, "libraries": [],
                        "command": sys.executable, "snapshot": snapshot}})
    return (load_project(Path(root)), fixed_output_path(snapshot["sha256"], snapshot["name"], recursive=True),
            fixed_output_path(WHEEL["sha256"], WHEEL["filename"], recursive=False))


def _locked_elsewhere(tree: Any, monkeypatch: pytest.MonkeyPatch, cfg: Any, snapshot_sha256: str,
                      wheels: list[dict[str, Any]]) -> Any:
    """A project locked on another machine (interpreter 3.11.0, its snapshot's NAR hash, these
    wheels), whose shared store is ``cfg``'s, copied from through Nix (``NIX_REMOTE=daemon``)."""
    project, _, _ = _project(tree, "3.11.0")
    lock = json.loads(project.lock_path.read_text())
    lock["interpreter"]["snapshot"] = {"name": "python-3.11.0-snapshot", "sha256": snapshot_sha256}
    lock["wheels"] = wheels
    project.lock_path.write_text(json.dumps(lock))
    monkeypatch.setenv("MLBUILD_STORE", str(cfg.root))
    monkeypatch.setenv("MLBUILD_STORE_PUBLIC_KEYS", str(cfg.secret_key().public))
    monkeypatch.setenv("NIX_REMOTE", "daemon")   # the copy goes through Nix (faked by the caller)
    return load_project(project.root)


def test_a_second_prefetch_asks_nix_once(tree, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README says one `nix-store --check-validity` call; there were two (snapshot, then wheels)."""
    project, snapshot, wheel = _project(tree, probe(sys.executable).version)
    nix = FakeNix(monkeypatch, {snapshot, wheel})
    result = prefetch(project)
    assert nix.calls == [[snapshot, wheel]]
    assert result.added == [] and sorted(result.present) == sorted([WHEEL["filename"], Path(snapshot).name[33:]])


def test_another_machines_snapshot_names_the_pull_that_keeps_the_lock(tree, monkeypatch: pytest.MonkeyPatch) -> None:
    """It said 'pull the snapshot from the shared store' without naming it, after 'run `mlbuild lock`',
    which makes a new snapshot (and everything built with the old one builds again)."""
    project, snapshot, wheel = _project(tree, "3.11.0")
    FakeNix(monkeypatch, {wheel})
    with pytest.raises(InterpreterError) as e:
        prefetch(project)
    assert f"and the locked snapshot {snapshot} is not in the Nix store; where the shared store has it, fetch it " \
           f"(`mlbuild store pull {snapshot}`; `nix build` substitutes it too) and keep the lock, else run " \
           f"`mlbuild lock` to re-lock for this interpreter" in str(e.value)
    assert f"differs from mlbuild.lock (version '3.11.0' -> '{probe(sys.executable).version}')" in str(e.value)


@pytest.mark.parametrize("key, value", [("name", "evil @ file://{evil}#"), ("version", "1 @ file://{evil}#"),
                                        ("name", "-e{evil}")])
def test_a_lock_naming_a_folder_for_a_wheel_runs_no_code(tree, monkeypatch: pytest.MonkeyPatch, key: str,
                                                          value: str) -> None:
    """prefetch handed pip `name==version` from the lock as it was: a lock from an untrusted branch with the
    name `evil @ file:///dir#` made `pip download` build that folder, running its build backend (its
    setup.py) at prefetch time, before anything checked the wheel's hash."""
    project, snapshot, wheel = _project(tree, probe(sys.executable).version)
    evil = project.root / "evil"
    evil.mkdir()
    marker = project.root / "ran"
    (evil / "pyproject.toml").write_text('[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                                         'backend-path = ["."]\n[project]\nname = "evil"\nversion = "1"\n')
    (evil / "backend.py").write_text(f"open({str(marker)!r}, 'w').close()\n")   # imported by pip's build
    lock = project.lock_path
    data = json.loads(lock.read_text())
    data["wheels"] = [dict(WHEEL, **{key: value.format(evil=evil)})]
    lock.write_text(json.dumps(data))
    FakeNix(monkeypatch, {snapshot})
    with pytest.raises(LockError) as e:
        prefetch(project)
    assert f"a-1-py3-none-any.whl has {key} {value.format(evil=evil)!r}, which is not a project {key}" in str(e.value)
    assert not marker.exists()


def test_what_the_shared_store_holds_is_fetched_from_it(tree, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A CI runner's prefetch pip-downloaded every locked wheel (torch: hundreds of MB) that main's
    push had put in the shared store, and refused the interpreter snapshot of the machine that
    locked (another Python here) though the store held it. Both come from the store now, through
    `nix copy` with its keys; nothing pip fetches or this interpreter snapshots."""
    import hashlib

    from mlbuild.nar import nar_sha256
    from mlbuild.store import StoreConfig, init_store
    from mlbuild.store.upload import PathInfo
    from tests.unit.test_store_publish import fake_path, put

    cfg = StoreConfig(root=tmp_path / "cache", secret_key_file=tmp_path / "keys" / "s.sec")
    init_store(cfg, generate_key=True, key_name="unit-1")
    chroot = tmp_path / "chroot"
    snap = fake_path(chroot, "python-3.11.0-snapshot", {"bin": {"python3.11": "x"}}, fixed=True)
    body = b"PK a wheel"
    sha = hashlib.sha256(body).hexdigest()
    wheel_path = fixed_output_path(sha, WHEEL["filename"], recursive=False)
    (chroot / wheel_path.lstrip("/")).write_bytes(body)
    from tests.conftest import nar_digest
    from mlbuild.store.narinfo import format_hash
    digest, size = nar_digest(str(chroot / wheel_path.lstrip("/")))
    for info in (snap, PathInfo(wheel_path, format_hash(digest), size, ())):
        put(cfg, chroot, info)

    project = _locked_elsewhere(tree, monkeypatch, cfg, nar_sha256(str(chroot / snap.path.lstrip("/"))),
                                [dict(WHEEL, sha256=sha)])
    nix = FakeNix(monkeypatch, set())
    copied: list[list[str]] = []

    def copy(cache_url: str, paths: Sequence[str], *, store: str | None = None, options: Sequence[str] = ()) -> None:
        assert cache_url == f"file://{cfg.root}" and "require-sigs" in options
        copied.append(list(paths))
        nix.valid |= set(paths)

    monkeypatch.setattr(_nix, "copy_from_cache", copy)
    monkeypatch.setattr(_nix, "invalid_paths_in", lambda paths, store=None: nix.invalid_paths(paths))
    result = prefetch(project)
    assert sorted(p for batch in copied for p in batch) == sorted([snap.path, wheel_path])
    assert sorted(result.fetched) == sorted(["python-3.11.0-snapshot", WHEEL["filename"]])
    assert result.added == [] and result.present == []
    # and again: all there, nothing fetched
    again = prefetch(project)
    assert again.fetched == [] and sorted(again.present) == sorted(["python-3.11.0-snapshot", WHEEL["filename"]])


def test_one_entry_the_shared_store_cannot_give_leaves_the_others_to_it(tree, monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """One wheel whose NAR the shared store lacks (removed by hand, a push cut short) stopped the
    whole pull before anything was copied, and pip then fetched every locked wheel (torch: hundreds of
    MB): the others come from the store, pip fetches that one, and the warning names it."""
    import hashlib

    from mlbuild import toolchain
    from mlbuild.nar import nar_sha256
    from mlbuild.store import StoreConfig, init_store
    from mlbuild.store.narinfo import NarInfo, format_hash
    from mlbuild.store.upload import PathInfo
    from tests.conftest import nar_digest
    from tests.unit.test_store_publish import fake_path, put

    cfg = StoreConfig(root=tmp_path / "cache", secret_key_file=tmp_path / "keys" / "s.sec")
    init_store(cfg, generate_key=True, key_name="unit-1")
    chroot = tmp_path / "chroot"
    snap = fake_path(chroot, "python-3.11.0-snapshot", {"bin": {"python3.11": "x"}}, fixed=True)
    wheels = []
    for n in range(3):
        body = f"PK wheel {n}".encode()
        w = dict(WHEEL, name=f"w{n}", filename=f"w{n}-1-py3-none-any.whl", sha256=hashlib.sha256(body).hexdigest())
        path = fixed_output_path(w["sha256"], w["filename"], recursive=False)
        (chroot / path.lstrip("/")).write_bytes(body)
        digest, size = nar_digest(str(chroot / path.lstrip("/")))
        put(cfg, chroot, PathInfo(path, format_hash(digest), size, ()))
        wheels.append((w, path))
    put(cfg, chroot, snap)
    broken = wheels[1][1]
    narinfo = cfg.root / f"{broken.split('/')[-1][:32]}.narinfo"
    (cfg.root / NarInfo.parse(narinfo.read_text()).url).unlink()   # its NAR is gone

    project = _locked_elsewhere(tree, monkeypatch, cfg, nar_sha256(str(chroot / snap.path.lstrip("/"))),
                                [w for w, _ in wheels])
    nix = FakeNix(monkeypatch, set())

    def copy(cache_url: str, paths: Sequence[str], *, store: str | None = None, options: Sequence[str] = ()) -> None:
        nix.valid |= set(paths)

    monkeypatch.setattr(_nix, "copy_from_cache", copy)
    monkeypatch.setattr(_nix, "invalid_paths_in", lambda paths, store=None: nix.invalid_paths(paths))
    pipped: list[str] = []
    monkeypatch.setattr(toolchain, "_fetch_wheels", lambda project, todo, result: pipped.extend(
        w["filename"] for w in todo))
    result = prefetch(project)
    assert pipped == ["w1-1-py3-none-any.whl"]
    assert sorted(result.fetched) == ["python-3.11.0-snapshot", "w0-1-py3-none-any.whl", "w2-1-py3-none-any.whl"]
    said = capsys.readouterr().err
    assert f"could not fetch 1 of 4 paths from the shared store {cfg.root}: " in said and "nothing was fetched" not in said, said
