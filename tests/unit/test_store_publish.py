"""Publishing, verify, gc and stats on a store filled from a fake chroot store (no Nix needed).

``fake_path`` makes a store path's files under ``<root>/nix/store`` (as a chroot store holds them)
and the PathInfo Nix would register; ``publish_path`` then runs the real writer over it.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
import os
import secrets
from pathlib import Path
from typing import Any

import pytest
import zstandard

from mlbuild.errors import StoreCorruptError
from mlbuild.nar import NarWriter, nar_sha256
from mlbuild.store import StoreConfig, gc, init_store, stats, tag, verify
from mlbuild.store.layout import Layout
from mlbuild.store.narinfo import NarInfo, format_hash
from mlbuild.store.roots import record_push
from mlbuild.store.upload import PathInfo, publish_path
from tests.conftest import write_tree

_B32 = "0123456789abcdfghijklmnpqrsvwxyz"


def fake_path(chroot: Path, name: str, content: Any, refs: tuple[str, ...] = ()) -> PathInfo:
    """A store path in the chroot store at ``chroot``: ``content`` is bytes/str or a tree dict."""
    path = "/nix/store/" + "".join(secrets.choice(_B32) for _ in range(32)) + "-" + name
    real = chroot / path.lstrip("/")
    real.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict):
        write_tree(real, content)
    else:
        real.write_bytes(content.encode() if isinstance(content, str) else content)
    h = hashlib.sha256()
    size = 0

    class _Count:
        def update(self, data: bytes) -> None:
            nonlocal size
            h.update(data)
            size += len(data)

    NarWriter(_Count()).dump(str(real))
    assert h.hexdigest() == nar_sha256(str(real))
    return PathInfo(path, format_hash(h.digest()), size, tuple(sorted(refs)))


@pytest.fixture
def store(tmp_path: Path) -> tuple[StoreConfig, Path]:
    cfg = StoreConfig(root=tmp_path / "cache", secret_key_file=tmp_path / "keys" / "s.sec")
    init_store(cfg, generate_key=True, key_name="unit-1")
    return cfg, tmp_path / "chroot"


def put(cfg: StoreConfig, chroot: Path, info: PathInfo, **kw: Any) -> NarInfo:
    return publish_path(Layout(cfg.root), info, cfg.secret_key(), local_store=str(chroot), **kw)


def test_publish_plain_and_zstd(store: tuple[StoreConfig, Path]) -> None:
    cfg, chroot = store
    weights = fake_path(chroot, "w.safetensors", os.urandom(3 << 20))
    code = fake_path(chroot, "code", {"a.py": "print(1)\n" * 1000, "bin": {"x": "y"}}, refs=(weights.path,))
    n1, n2 = put(cfg, chroot, weights), put(cfg, chroot, code)
    assert n1.compression == "none" and n1.url.endswith(".nar") and n1.file_size == n1.nar_size
    assert n2.compression == "zstd" and n2.url.endswith(".nar.zst") and n2.file_size < n2.nar_size
    nar = zstandard.ZstdDecompressor().stream_reader(open(cfg.root / n2.url, "rb")).read()
    assert format_hash(hashlib.sha256(nar).digest()) == code.nar_hash
    assert NarInfo.parse((cfg.root / f"{n2.hash_part}.narinfo").read_text()) == n2
    assert verify(cfg).ok
    assert not list(Layout(cfg.root).temp_files())


@pytest.mark.parametrize("fsync_nars", [False, True])
def test_nars_are_fsynced_only_when_asked(store: tuple[StoreConfig, Path], monkeypatch: pytest.MonkeyPatch,
                                          fsync_nars: bool) -> None:
    """Narinfos are always fsynced before their rename; NARs (plain and zstd) only with fsync-nars."""
    cfg, chroot = store
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    for info in (fake_path(chroot, "w.safetensors", os.urandom(2 << 20)), fake_path(chroot, "c", {"a": "b" * 5000})):
        put(cfg, chroot, info, fsync_nars=fsync_nars)
    nar_temps = [p for p in synced if Path(p).parent == cfg.root / "nar" and Path(p).name.startswith(".tmp.")]
    narinfo_temps = [p for p in synced if Path(p).parent == cfg.root and Path(p).name.startswith(".tmp.")]
    assert len(nar_temps) == (2 if fsync_nars else 0)
    assert len(narinfo_temps) == 2
    assert verify(cfg).ok


def test_plain_tree_of_many_files_under_a_low_open_file_limit(store: tuple[StoreConfig, Path]) -> None:
    """An uncompressed NAR of a tree: framing and many files' slices, hashed in NAR order from
    the store path's files, one open at a time (a limit of 64 open files, 300 files)."""
    import resource

    cfg, chroot = store
    tree = {"weights.safetensors": os.urandom(3 << 20),
            "shards": {f"{i:03d}.bin": os.urandom(secrets.randbelow(9000)) for i in range(300)}}
    info = fake_path(chroot, "sharded-model", tree)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        n = put(cfg, chroot, info)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert n.compression == "none" and n.nar_hash == info.nar_hash
    assert format_hash(hashlib.sha256((cfg.root / n.url).read_bytes()).digest()) == info.nar_hash
    assert verify(cfg).ok


def test_publish_refuses_a_path_that_differs_from_its_registration(store: tuple[StoreConfig, Path]) -> None:
    cfg, chroot = store
    info = fake_path(chroot, "x", "abc")
    (chroot / info.path.lstrip("/")).write_text("abd")
    with pytest.raises(StoreCorruptError, match="--repair"):
        put(cfg, chroot, info)
    assert not list(Layout(cfg.root).narinfos()) and not list(Layout(cfg.root).temp_files())


def test_verify_reports_and_repairs(store: tuple[StoreConfig, Path]) -> None:
    cfg, chroot = store
    base = fake_path(chroot, "base", "base\n" * 100)
    top = fake_path(chroot, "top", "top", refs=(base.path,))
    plain = fake_path(chroot, "plain.bin", os.urandom(1 << 20))
    unsigned = fake_path(chroot, "unsigned", "u")
    gone = fake_path(chroot, "gone", "g")
    infos = {i.path: put(cfg, chroot, i) for i in (base, top, plain, unsigned, gone)}
    root = cfg.root
    with open(root / infos[plain.path].url, "r+b") as f:   # same size, one byte changed
        f.seek(1000)
        f.write(b"\xff" if f.read(1) != b"\xff" else b"\x00")
    u = root / f"{infos[unsigned.path].hash_part}.narinfo"
    u.write_text("".join(l + "\n" for l in u.read_text().splitlines() if not l.startswith("Sig:")))
    (root / infos[gone.path].url).unlink()
    (root / infos[base.path].url).write_bytes(b"broken")
    report = verify(cfg)
    kinds = {p.store_path: p.kind for p in report.problems}
    assert kinds == {plain.path: "corrupt", unsigned.path: "unsigned", gone.path: "missing",
                     base.path: "corrupt", top.path: "incomplete"}
    assert verify(cfg, contents=False).by_kind("corrupt")[0].store_path == base.path  # size differs
    assert len(list(Layout(root).narinfos())) == 5   # nothing changed without repair
    repaired = verify(cfg, repair=True)
    assert len(repaired.problems) == 5
    assert not list(Layout(root).narinfos())
    assert verify(cfg).ok


def test_unsigned_entries_say_who_signed_and_how_to_trust(store: tuple[StoreConfig, Path], tmp_path: Path) -> None:
    cfg, chroot = store
    entry = put(cfg, chroot, fake_path(chroot, "x", "x"))
    other = init_store(StoreConfig(root=tmp_path / "other", secret_key_file=tmp_path / "o.sec"),
                       generate_key=True, key_name="other-1")
    assert other.public_key
    (detail,) = [p.detail for p in verify(replace(cfg, public_keys=(other.public_key,))).problems]
    assert "signed only by unit-1; trusted: other-1" in detail and "MLBUILD_STORE_PUBLIC_KEYS" in detail
    twin = init_store(StoreConfig(root=tmp_path / "twin", secret_key_file=tmp_path / "t.sec"),
                      generate_key=True, key_name="unit-1")   # another key pair, the same name
    assert twin.public_key
    (detail,) = [p.detail for p in verify(replace(cfg, public_keys=(twin.public_key,))).problems]
    assert "its signature by unit-1 does not verify with the trusted key of that name" in detail
    f = cfg.root / f"{entry.hash_part}.narinfo"
    f.write_text("".join(line + "\n" for line in f.read_text().splitlines() if not line.startswith("Sig:")))
    (detail,) = [p.detail for p in verify(cfg).problems]
    assert detail.startswith("no signature by a trusted key (not signed; trusted: unit-1;")


def test_gc_keeps_roots_and_their_closures(store: tuple[StoreConfig, Path], tmp_path: Path) -> None:
    cfg, chroot = store
    layout = Layout(cfg.root)
    shared = fake_path(chroot, "toolchain", "tc" * 1000)
    rel = fake_path(chroot, "model-v1", "m1", refs=(shared.path,))
    old = [fake_path(chroot, "model", f"m{i}", refs=(shared.path,)) for i in range(4)]
    junk = fake_path(chroot, "junk", "j")
    junk_dep = fake_path(chroot, "junk-dep", "jd")
    junk_top = fake_path(chroot, "junk-top", "jt", refs=(junk_dep.path,))
    for i in (shared, rel, *old, junk, junk_dep, junk_top):
        put(cfg, chroot, i)
    tag(cfg, "release-1", [rel.path])
    for i in old:
        record_push(layout, "model", [i.path])
    (cfg.root / "nar" / ".tmp.otherhost.1.abc.nar").write_bytes(b"partial")
    os.utime(cfg.root / "nar" / ".tmp.otherhost.1.abc.nar", (0, 0))
    dry = gc(cfg, keep_last=2, grace=0, dry_run=True)
    assert len(list(layout.narinfos())) == 9 and dry.removed_paths
    report = gc(cfg, keep_last=2, grace=0)
    left = {NarInfo.parse(f.read_text()).store_path for f in layout.narinfos()}
    assert left == {shared.path, rel.path, old[2].path, old[3].path}
    # Referrers go before what they reference: the store stays closed at every step.
    assert report.removed_paths.index(junk_top.path) < report.removed_paths.index(junk_dep.path)
    # old[1] holds "m1" like the release: one shared NAR file, which stays (the release names it).
    assert len(report.removed_records) == 2 and len(report.removed_nars) == 4
    assert not list(layout.temp_files())
    assert verify(cfg).ok
    assert {p.name for p in layout.nar_files()} == {NarInfo.parse(f.read_text()).url[4:] for f in layout.narinfos()}


def test_gc_grace_spares_recent_entries_and_condemns_before_deleting(store: tuple[StoreConfig, Path]) -> None:
    cfg, chroot = store
    layout = Layout(cfg.root)
    info = put(cfg, chroot, fake_path(chroot, "x", "x"))
    assert gc(cfg, grace=3600).removed_paths == []     # recent: spared
    os.utime(layout.narinfo(info.store_path), (0, 0))
    r = gc(cfg, grace=3600)
    assert r.removed_paths == [info.store_path] and r.condemned_nars and not r.removed_nars
    assert (cfg.root / info.url).exists()            # a reader that read the narinfo can still fetch it
    os.utime(cfg.root / info.url, (0, 0))
    import json
    data = json.loads(layout.condemned_file.read_text())
    layout.condemned_file.write_text(json.dumps({k: 0 for k in data}))
    r = gc(cfg, grace=3600)
    assert r.removed_nars and not (cfg.root / info.url).exists()


def test_gc_keeps_what_a_lock_pins(store: tuple[StoreConfig, Path], tmp_path: Path) -> None:
    cfg, chroot = store
    pinned = fake_path(chroot, "pinned", "p")
    put(cfg, chroot, pinned)
    put(cfg, chroot, fake_path(chroot, "other", "o"))
    lock = tmp_path / "mlbuild.lock"
    lock.write_text('{"version": 1, "datasets": {"d": {"path": "%s"}}, "wheels": []}' % pinned.path)
    gc(cfg, grace=0, locks=[lock])
    assert [NarInfo.parse(f.read_text()).store_path for f in Layout(cfg.root).narinfos()] == [pinned.path]


def test_stats_per_item_and_shared(store: tuple[StoreConfig, Path]) -> None:
    cfg, chroot = store
    tc = fake_path(chroot, "small-toolchain", os.urandom(200_000))
    ds = fake_path(chroot, "dataset-digits", "1,2,3\n" * 1000)
    m1 = fake_path(chroot, "digits-model", os.urandom(50_000), refs=(tc.path, ds.path))
    m2 = fake_path(chroot, "iris-model", os.urandom(60_000), refs=(tc.path,))
    for i in (tc, ds, m1, m2):
        put(cfg, chroot, i)
    s = stats(cfg)
    assert s.paths == 4 and {i.path for i in s.items} == {m1.path, m2.path}
    assert s.by_kind["toolchain"][0] == 1 and s.by_kind["dataset"][0] == 1 and s.by_kind["model"][0] == 2
    assert s.shared_paths == 1 and s.shared_bytes > 200_000
    item = next(i for i in s.items if i.path == m1.path)
    assert item.closure_paths == 3 and item.unique_bytes < item.closure_bytes


@pytest.mark.parametrize("name,ca,kind", [
    ("digits-model", None, "model"), ("digits-package", None, "package"), ("digits-validation-report", None, "validation"),
    ("python-3.11.2-toolchain", None, "toolchain"), ("numpy-2.0-cp311-x86_64.whl", None, "wheel"),
    ("digits-image.tar", None, "image"), ("code", None, "code"), ("digits", "fixed:r:sha256:x", "dataset"),
    ("digits", None, "other"),
])
def test_classify(name: str, ca: str | None, kind: str) -> None:
    from mlbuild.store.stats import classify
    assert classify("/nix/store/" + "a" * 32 + "-" + name, ca) == kind
