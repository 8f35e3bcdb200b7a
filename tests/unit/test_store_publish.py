"""Publishing, verify, gc and stats on a store filled from a fake chroot store (no Nix needed).

``fake_path`` makes a store path's files under ``<root>/nix/store`` (as a chroot store holds them)
and the PathInfo Nix would register; ``publish_path`` then runs the real writer over it.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace
import os
import secrets
from pathlib import Path
from typing import Any

import pytest
import zstandard

from mlbuild.errors import StoreCorruptError
from mlbuild.nar import nar_sha256
from mlbuild.store import StoreConfig, gc, init_store, stats, tag, verify
from mlbuild.store.layout import Layout
from mlbuild.store.narinfo import NarInfo, format_hash
from mlbuild.store.roots import record_push
from mlbuild.store.upload import PathInfo, publish_path
from mlbuild.storepath import fixed_output_path
from tests.conftest import nar_digest, write_tree

_B32 = "0123456789abcdfghijklmnpqrsvwxyz"


def fake_path(chroot: Path, name: str, content: Any, refs: tuple[str, ...] = (), *, fixed: bool = False) -> PathInfo:
    """A store path in the chroot store at ``chroot``: ``content`` is bytes/str or a tree dict.
    ``fixed``: at the fixed-output path of its recursive sha256, as `mlbuild data add` imports data."""
    path = "/nix/store/" + "".join(secrets.choice(_B32) for _ in range(32)) + "-" + name
    real = chroot / path.lstrip("/")
    real.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict):
        write_tree(real, content)
    else:
        real.write_bytes(content.encode() if isinstance(content, str) else content)
    if fixed:
        path = fixed_output_path(nar_sha256(str(real)), name, recursive=True)
        real = real.rename(chroot / path.lstrip("/"))
    digest, size = nar_digest(str(real))
    assert digest.hex() == nar_sha256(str(real))
    return PathInfo(path, format_hash(digest), size, tuple(sorted(refs)))


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
    the store path's files, one open at a time (64 open files more than in use, 300 files)."""
    import resource

    cfg, chroot = store
    tree = {"weights.safetensors": os.urandom(3 << 20),
            "shards": {f"{i:03d}.bin": os.urandom(secrets.randbelow(9000)) for i in range(300)}}
    info = fake_path(chroot, "sharded-model", tree)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # 64 more than the highest descriptor open now (a limit caps descriptor numbers: earlier tests
    # in this process may hold some)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1 + 64, hard))
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
    # the dry run said what the real one did, NARs and bytes too (it counted 0 NARs, 0 bytes)
    assert dry.removed_paths == report.removed_paths and dry.removed_nars == report.removed_nars
    assert dry.freed_bytes == report.freed_bytes > 0
    assert not list(layout.temp_files())
    assert verify(cfg).ok
    assert {p.name for p in layout.nar_files()} == {NarInfo.parse(f.read_text()).url[4:] for f in layout.narinfos()}


def test_pushing_the_same_paths_again_takes_no_second_keep_last_slot(store: tuple[StoreConfig, Path]) -> None:
    """A CI rerun pushes the same model again: its record moves to the newest slot, so keep-last 2
    still keeps the two distinct models (a second record of v2 used to push v1 out)."""
    cfg, chroot = store
    layout = Layout(cfg.root)
    v1, v2 = (fake_path(chroot, "model", f"v{i}") for i in (1, 2))
    for i in (v1, v2):
        put(cfg, chroot, i)
    first = record_push(layout, "model", [v1.path])
    record_push(layout, "model", [v2.path])
    again = record_push(layout, "model", [v2.path, v2.path])
    records = sorted(p.name for p in (layout.roots_dir / "pushes" / "model").iterdir())
    assert records == sorted([first.name, again.name])
    gc(cfg, keep_last=2, grace=0)
    assert {NarInfo.parse(f.read_text()).store_path for f in layout.narinfos()} == {v1.path, v2.path}
    record_push(layout, "model", [v1.path])     # v1 again: now the newest, v2's record stays
    assert len(list((layout.roots_dir / "pushes" / "model").iterdir())) == 2


def test_a_killed_push_does_not_push_a_whole_release_out_of_keep_last(store: tuple[StoreConfig, Path]) -> None:
    """A push writes its record before it uploads; one killed with SIGKILL (a CI runner's timeout, the
    OOM killer) keeps it, naming paths it never published. gc counted it as the newest of keep-last, so
    with keep-last 1 it removed v1, the one release of the model a reader could fetch, and kept half of
    v2. The newest whole records are kept beside it now, until a push of v2 completes."""
    cfg, chroot = store
    layout = Layout(cfg.root)
    tc = fake_path(chroot, "toolchain", "tc")
    v1, v2 = (fake_path(chroot, "model", f"v{i}", refs=(tc.path,)) for i in (1, 2))
    for i in (tc, v1):
        put(cfg, chroot, i)
    record_push(layout, "model", [v1.path, tc.path])
    killed = record_push(layout, "model", [v2.path, tc.path])   # killed before it published v2
    report = gc(cfg, keep_last=1, grace=0)
    assert {NarInfo.parse(f.read_text()).store_path for f in layout.narinfos()} == {tc.path, v1.path}
    assert report.removed_records == [] and killed.exists()
    put(cfg, chroot, v2)
    record_push(layout, "model", [v2.path, tc.path])            # the rerun: v2 whole, its record replaces the killed one
    report = gc(cfg, keep_last=1, grace=0)
    assert {NarInfo.parse(f.read_text()).store_path for f in layout.narinfos()} == {tc.path, v2.path}
    assert len(report.removed_records) == 1 and not killed.exists()


def test_push_records_are_named_in_the_order_they_were_written_at_a_second_s_turn(
        store: tuple[StoreConfig, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A record's name (its time) took the seconds and their fraction from two readings of the clock,
    and rounded the fraction to 6 digits: at a second's turn a record was named `...19.000000` after one
    named `...19.999998`, so the newer sorted as older (keep-last kept the wrong one)."""
    import time as _time

    cfg, chroot = store
    layout = Layout(cfg.root)
    base = 1_700_000_019 * 10**9
    readings = iter([base + 999_998_000, base + 999_999_700])   # 19.999998, then 19.9999997
    monkeypatch.setattr(_time, "time_ns", lambda: next(readings))
    # the same moments as two readings each gave them: the seconds (19), then the clock again
    seconds, clock, gmtime = iter([19, 19]), iter([1_700_000_019.999998, 1_700_000_020.0000003]), _time.gmtime
    monkeypatch.setattr(_time, "time", lambda: next(clock))
    monkeypatch.setattr(_time, "gmtime", lambda t=None: gmtime(t if t is not None else 1_700_000_000 + next(seconds)))
    first = record_push(layout, "model", ["/nix/store/0123456789abcdfghijklmnpqrsvwxyz-a"])
    second = record_push(layout, "model", ["/nix/store/0123456789abcdfghijklmnpqrsvwxyz-b"])
    assert first.name < second.name and first.name.startswith("20231114T221339.999998.")


def test_keep_last_2_with_two_killed_pushes_keeps_two_whole_releases_and_drops_old_records_unread(
        store: tuple[StoreConfig, Path]) -> None:
    """keep-last 2, two killed pushes (v3, v4) after two whole ones (v1, v2): both whole releases stay.
    Records older than the ones kept go unread, as before 09d0adc: gc read every record of the name
    to find the whole ones, so an old record garbled on disk, which gc used to drop, stopped every gc."""
    cfg, chroot = store
    layout = Layout(cfg.root)
    tc = fake_path(chroot, "toolchain", "tc")
    v0, v1, v2, v3, v4 = (fake_path(chroot, "model", f"v{i}", refs=(tc.path,)) for i in range(5))
    for i in (tc, v0, v1, v2):
        put(cfg, chroot, i)
    oldest = record_push(layout, "model", [v0.path, tc.path])
    oldest.write_bytes(b"\xff\x00garbled")
    for v in (v1, v2, v3, v4):
        record_push(layout, "model", [v.path, tc.path])        # v3, v4: killed before they published
    report = gc(cfg, keep_last=2, grace=0)
    assert {NarInfo.parse(f.read_text()).store_path for f in layout.narinfos()} == {tc.path, v1.path, v2.path}
    assert report.removed_records == [oldest] and len(list(oldest.parent.iterdir())) == 4


def test_a_push_replaces_the_older_record_of_its_targets_alone(store: tuple[StoreConfig, Path]) -> None:
    """An mlbuild from before closure records wrote the targets alone; the upgraded one pushing
    the same model records its whole closure. That text differed, so the old record stayed: a
    second keep-last slot of the same model, and keep-last 2 dropped the distinct v1."""
    cfg, chroot = store
    layout = Layout(cfg.root)
    tc = fake_path(chroot, "toolchain", "tc")
    v1, v2 = (fake_path(chroot, "model", f"v{i}", refs=(tc.path,)) for i in (1, 2))
    for i in (tc, v1, v2):
        put(cfg, chroot, i)
    record_push(layout, "model", [v1.path, tc.path])
    older = record_push(layout, "model", [v2.path])              # as mlbuild 282d028 recorded it
    wider = record_push(layout, "model", [v2.path, tc.path, v1.path], replace_older=False)
    newest = record_push(layout, "model", [v2.path, tc.path])    # the same push, upgraded
    records = sorted(p.name for p in (layout.roots_dir / "pushes" / "model").iterdir())
    assert older.name not in records and wider.name in records and newest.name in records   # more: kept
    wider.unlink()
    gc(cfg, keep_last=2, grace=0)
    assert {NarInfo.parse(f.read_text()).store_path for f in layout.narinfos()} == {tc.path, v1.path, v2.path}


def test_gc_grace_spares_recent_entries_and_condemns_before_deleting(store: tuple[StoreConfig, Path]) -> None:
    cfg, chroot = store
    layout = Layout(cfg.root)
    info = put(cfg, chroot, fake_path(chroot, "x", "x"))
    spared = gc(cfg, grace=3600)
    assert spared.removed_paths == [] and spared.spared == 1    # recent: spared, and counted as such
    from tests.conftest import run_cli
    out = run_cli("store", "--store", str(cfg.root), "gc", "--grace", "3600", "--dry-run",
                  env={"MLBUILD_STORE_SECRET_KEY": str(cfg.secret_key_file)}).stdout
    assert "1 unrooted entries are spared until 3600 s after their last push (--grace)" in out
    os.utime(layout.narinfo(info.store_path), (0, 0))
    r = gc(cfg, grace=3600)
    assert r.removed_paths == [info.store_path] and r.condemned_nars and not r.removed_nars and r.spared == 0
    assert (cfg.root / info.url).exists()            # a reader that read the narinfo can still fetch it
    os.utime(cfg.root / info.url, (0, 0))
    import json
    data = json.loads(layout.condemned_file.read_text())
    layout.condemned_file.write_text(json.dumps({k: 1 for k in data}))   # condemned long ago (0: no time a gc wrote)
    r = gc(cfg, grace=3600)
    assert r.removed_nars and not (cfg.root / info.url).exists()


def lock_text(tmp_path: Path, **extra: Any) -> Path:
    """An mlbuild.lock as `mlbuild lock` writes it (no wheels), plus ``extra`` top-level entries."""
    import json
    lock = tmp_path / "mlbuild.lock"
    lock.write_text(json.dumps({"version": 1, "requirements": [], "wheels": [], "tools": [],
                                "interpreter": {"snapshot": {"name": "python-3.11.7-snapshot", "sha256": "0" * 64}},
                                **extra}))
    return lock


def test_gc_keeps_what_a_lock_pins(store: tuple[StoreConfig, Path], tmp_path: Path) -> None:
    """Store paths written in the lock and its local datasets (`datasets.NAME.sha256`: the
    fixed-output path of a recursive sha256, as `mlbuild data push` pushes them) are kept."""
    cfg, chroot = store
    pinned = fake_path(chroot, "pinned", "p")
    data = fake_path(chroot, "digits-raw", {"digits.csv": "1,2,3\n" * 100}, fixed=True)
    for info in (pinned, data):
        put(cfg, chroot, info)
    put(cfg, chroot, fake_path(chroot, "other", "o"))
    sha = data.path.rsplit("/", 1)[-1]
    lock = lock_text(tmp_path, datasets={"digits-raw": {"sha256": nar_sha256(str(chroot / data.path.lstrip("/"))),
                                                        "kind": "path", "files": 1, "size": 600}},
                     extra={"path": pinned.path})
    assert sha.endswith("-digits-raw")
    dry = gc(cfg, grace=0, locks=[lock], dry_run=True)
    assert len(dry.removed_paths) == 1 and dry.removed_paths[0].endswith("-other")
    gc(cfg, grace=0, locks=[lock])
    left = {NarInfo.parse(f.read_text()).store_path for f in Layout(cfg.root).narinfos()}
    assert left == {pinned.path, data.path}


@pytest.mark.parametrize("content, why", [
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary", r"is not an mlbuild.lock \(not JSON text\)"),
    ('{"name": "my-app", "version": "1.0.0", "dependencies": {}}', "is not an mlbuild.lock"),
    ("[1, 2, 3]", "is not an mlbuild.lock"),
    (None, "cannot read the lock"),
])
def test_gc_refuses_what_is_not_an_mlbuild_lock(store: tuple[StoreConfig, Path], tmp_path: Path,
                                                content: str | bytes | None, why: str) -> None:
    from mlbuild.errors import StoreError
    cfg, chroot = store
    put(cfg, chroot, fake_path(chroot, "x", "x"))
    lock = tmp_path / "package.json"
    if isinstance(content, bytes):
        lock.write_bytes(content)
    elif content is not None:
        lock.write_text(content)
    with pytest.raises(StoreError, match=why) as e:
        gc(cfg, grace=0, locks=[lock])
    assert "pass the project's mlbuild.lock to --lock" in str(e.value)
    assert len(list(Layout(cfg.root).narinfos())) == 1


@pytest.mark.parametrize("extra, where", [
    ({"datasets": {"digits-raw": {"kind": "path"}}}, "datasets.digits-raw needs sha256"),
    ({"datasets": {"digits-raw": {"sha256": "abc"}}}, "datasets.digits-raw needs sha256"),
    ({"datasets": ["digits-raw"]}, "datasets must be an object"),
    ({"wheels": [{"sha256": "0" * 64}]}, r"wheels\[0\] needs sha256 \(64 hex digits\) and filename"),
])
def test_gc_refuses_a_lock_entry_it_cannot_read(store: tuple[StoreConfig, Path], tmp_path: Path,
                                                extra: dict[str, Any], where: str) -> None:
    """An entry gc cannot turn into a store path might pin anything: refused, nothing removed."""
    from mlbuild.errors import StoreError
    cfg, chroot = store
    put(cfg, chroot, fake_path(chroot, "x", "x"))
    with pytest.raises(StoreError, match=where):
        gc(cfg, grace=0, locks=[lock_text(tmp_path, **extra)])
    assert len(list(Layout(cfg.root).narinfos())) == 1


def test_gc_refuses_a_lock_with_a_dataset_pinned_twice(store: tuple[StoreConfig, Path], tmp_path: Path) -> None:
    """A hand-merged lock keeping both sides' pins of a dataset: json.loads took the last, and gc
    collected the dataset the other pin names."""
    from mlbuild.errors import StoreError
    cfg, chroot = store
    put(cfg, chroot, fake_path(chroot, "x", "x"))
    lock = lock_text(tmp_path, datasets={"raw": {"sha256": "1" * 64}})
    text = lock.read_text()
    lock.write_text(text.replace('"raw": {', '"raw": {"sha256": "' + "2" * 64 + '"}, "raw": {'))
    with pytest.raises(StoreError, match=r"'raw' is given twice in one table .* so gc cannot tell what it pins"):
        gc(cfg, grace=0, locks=[lock])
    assert len(list(Layout(cfg.root).narinfos())) == 1


def _pushed_closure(cfg: StoreConfig, chroot: Path) -> tuple[PathInfo, list[PathInfo]]:
    """A pushed package (push record) over a toolchain and weights, as `mlbuild store push` leaves it."""
    tc = fake_path(chroot, "toolchain", "tc" * 5000)
    w = fake_path(chroot, "w.safetensors", os.urandom(1 << 20))
    model = fake_path(chroot, "digits-model", "m", refs=(tc.path, w.path))
    pkg = fake_path(chroot, "digits-package", "p", refs=(model.path, tc.path))
    closure = [tc, w, model, pkg]
    for info in closure:
        put(cfg, chroot, info)
    record_push(Layout(cfg.root), "digits-package", [pkg.path])
    return pkg, closure


@pytest.mark.parametrize("damage", ["garbage", "binary", "other-path"])
def test_gc_removes_nothing_when_it_cannot_read_an_entry(store: tuple[StoreConfig, Path], damage: str) -> None:
    """A root whose narinfo cannot be read has no known closure: gc (and --dry-run) refuses
    instead of removing everything under it, names the entry and the fix."""
    cfg, chroot = store
    layout = Layout(cfg.root)
    pkg, closure = _pushed_closure(cfg, chroot)
    f = layout.narinfo(pkg.path)
    if damage == "garbage":
        with open(f, "a") as out:
            out.write("garbage here\n")
    elif damage == "binary":
        f.write_bytes(b"\xff\xfe" + f.read_bytes())
    else:   # a narinfo under another path's name
        f = f.rename(cfg.root / ("0" * 32 + ".narinfo"))
    before = sorted(p.name for p in cfg.root.rglob("*"))
    for dry_run in (True, False):
        with pytest.raises(StoreCorruptError) as e:
            gc(cfg, grace=0, dry_run=dry_run)
        msg = str(e.value)
        assert f"gc cannot read 1 entry of {cfg.root}" in msg and "removes nothing" in msg
        assert str(f) in msg and f"mlbuild store --store {cfg.root} verify --repair" in msg, msg
    assert sorted(p.name for p in cfg.root.rglob("*")) == before
    s = stats(cfg)   # stats counts what it can read and names the rest
    assert s.paths == 3 and len(s.unreadable) == 1 and str(f) in s.unreadable[0]
    # The documented way out: repair, push again, gc.
    verify(cfg, repair=True)
    put(cfg, chroot, pkg)
    assert gc(cfg, grace=0).removed_paths == []
    assert {NarInfo.parse(x.read_text()).store_path for x in layout.narinfos()} == {i.path for i in closure}


def test_cli_gc_and_stats_report_unreadable_entries(store: tuple[StoreConfig, Path]) -> None:
    from tests.conftest import run_cli
    cfg, chroot = store
    pkg, _ = _pushed_closure(cfg, chroot)
    with open(Layout(cfg.root).narinfo(pkg.path), "a") as out:
        out.write("garbage here\n")
    for args in (["gc", "--grace", "0"], ["gc", "--grace", "0", "--dry-run"]):
        proc = run_cli("store", "--store", str(cfg.root), *args, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr and "removed" not in proc.stdout
        assert "gc cannot read 1 entry" in proc.stderr and "'garbage here' is not `Key: value`" in proc.stderr
    assert len(list(Layout(cfg.root).narinfos())) == 4
    proc = run_cli("store", "--store", str(cfg.root), "stats")
    assert "warning: 1 entries cannot be read and are not counted" in proc.stderr
    assert "1 unreadable entries not counted" in proc.stdout
    import json
    assert len(json.loads(run_cli("store", "--store", str(cfg.root), "stats", "--json").stdout)["unreadable"]) == 1


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


def test_cli_gc_refuses_bad_input_without_a_traceback(store: tuple[StoreConfig, Path], tmp_path: Path) -> None:
    from tests.conftest import run_cli
    cfg, chroot = store
    put(cfg, chroot, fake_path(chroot, "x", "x"))
    binary = tmp_path / "model.bin"
    binary.write_bytes(os.urandom(64) + b"\xff\xfe")
    other = tmp_path / "package.json"
    other.write_text('{"name": "app", "version": "1.0.0"}')
    for args, rc, want in (
        (["--grace", "nan"], 2, "nan is not a number of seconds"),
        (["--grace", "-1"], 2, "--grace"),
        (["--lock", str(binary)], 1, f"Error: {binary} is not an mlbuild.lock (not JSON text)"),
        (["--lock", str(other)], 1, f"Error: {other} is not an mlbuild.lock"),
        (["--lock", str(tmp_path / "absent.lock")], 1, "cannot read the lock"),
    ):
        proc = run_cli("store", "--store", str(cfg.root), "gc", "--grace", "0", *args, "--dry-run", check=False)
        assert proc.returncode == rc and want in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert len(list(Layout(cfg.root).narinfos())) == 1


def _other_key(tmp_path: Path, name: str = "laptop-1") -> str:
    other = init_store(StoreConfig(root=tmp_path / f"other-{name}", secret_key_file=tmp_path / f"{name}.sec"),
                       generate_key=True, key_name=name)
    assert other.public_key
    return other.public_key


def test_push_refuses_a_signing_key_the_store_does_not_trust(store: tuple[StoreConfig, Path], tmp_path: Path) -> None:
    """Before anything is written (not even the push record) and before Nix is asked anything."""
    from mlbuild.errors import StoreKeyError
    from mlbuild.store import push
    cfg, _ = store
    trusted = _other_key(tmp_path)
    with pytest.raises(StoreKeyError) as e:
        push(replace(cfg, public_keys=(trusted,)), ["/nix/store/" + "a" * 32 + "-digits-package"])
    msg = str(e.value)
    assert f"the signing key unit-1 (public half {cfg.secret_key().public})" in msg
    assert f"not among the store's trusted keys ({trusted})" in msg
    assert "MLBUILD_STORE_SECRET_KEY" in msg and "MLBUILD_STORE_PUBLIC_KEYS" in msg and "nothing was pushed" in msg
    assert not list((cfg.root / "mlbuild" / "roots" / "pushes").iterdir())


def test_verify_does_not_advise_deleting_entries_signed_by_an_untrusted_key(store: tuple[StoreConfig, Path],
                                                                          tmp_path: Path) -> None:
    cfg, chroot = store
    trusted = _other_key(tmp_path)
    reader = replace(cfg, public_keys=(trusted,))
    pkg, closure = _pushed_closure(cfg, chroot)     # all signed by unit-1, which `reader` does not trust
    report = verify(reader)
    assert len(report.problems) == 4 and report.untrusted() == report.problems
    advice = report.advice(reader)
    assert "4 entries are signed only by keys this machine does not trust (signed by unit-1; " \
           f"trusted here: {trusted})" in advice
    assert "MLBUILD_STORE_PUBLIC_KEYS" in advice and "would delete them" in advice
    assert "bad entries" not in advice and "remove them with" not in advice
    # Entries incomplete only because they reference such entries count with them.
    from mlbuild.store.keys import parse_secret_key
    laptop = parse_secret_key((tmp_path / "laptop-1.sec").read_text())
    tool = fake_path(chroot, "tool", "t")
    put(cfg, chroot, tool)
    put(cfg, chroot, fake_path(chroot, "top", "top", refs=(tool.path,)))
    f = Layout(cfg.root).narinfo(tool.path)
    info = NarInfo.parse(f.read_text())
    f.write_text(info.with_sigs((laptop.sign(info.fingerprint()),)).render())   # pushed from the laptop
    only_unit = replace(cfg, public_keys=(str(cfg.secret_key().public),))
    report = verify(only_unit)
    assert {p.kind for p in report.problems} == {"unsigned", "incomplete"} and report.untrusted() == report.problems
    advice = report.advice(only_unit)
    assert "1 entries are signed only by keys" in advice and "and 1 more reference them" in advice
    assert verify(replace(cfg, public_keys=(trusted, str(cfg.secret_key().public)))).ok   # trusting both fixes it
    # A damaged entry among them: repair is advised for it, with a warning for the others.
    (cfg.root / NarInfo.parse(Layout(cfg.root).narinfo(pkg.path).read_text()).url).write_bytes(b"broken")
    advice = verify(only_unit).advice(only_unit)
    assert advice.startswith("1 bad entries in the store; remove them with `mlbuild store --store")
    assert "would delete them too" in advice
    # Signed by an untrusted key and damaged: corrupt, not merely untrusted.
    kinds = {p.store_path: p.kind for p in verify(reader).problems}
    assert kinds[pkg.path] == "corrupt" and pkg.path not in {p.store_path for p in verify(reader).untrusted()}


def test_a_narinfo_changed_after_signing_is_to_repair_not_to_trust(store: tuple[StoreConfig, Path]) -> None:
    """Its signature is by the trusted key's name but does not verify: the entry was changed (or
    forged). The advice said to trust the key (the one already trusted) and not to repair."""
    cfg, chroot = store
    info = put(cfg, chroot, fake_path(chroot, "x", "x"))
    f = Layout(cfg.root).narinfo(info.store_path)
    sig = next(line for line in f.read_text().splitlines() if line.startswith("Sig: "))
    name, b64 = sig[5:].split(":", 1)
    forged = base64.b64encode(bytes([base64.b64decode(b64)[0] ^ 1]) + base64.b64decode(b64)[1:]).decode()
    f.write_text(f.read_text().replace(sig, f"Sig: {name}:{forged}"))
    report = verify(cfg)
    assert [p.kind for p in report.problems] == ["unsigned"] and report.untrusted() == []
    assert "the narinfo was changed after signing" in report.problems[0].detail
    advice = report.advice(cfg)
    assert advice.startswith("1 bad entries in the store; remove them with") and "trust" not in advice


def test_cli_verify_summary_names_the_key_setting(store: tuple[StoreConfig, Path], tmp_path: Path) -> None:
    from tests.conftest import run_cli
    cfg, chroot = store
    put(cfg, chroot, fake_path(chroot, "x", "x"))
    env = {"MLBUILD_STORE_PUBLIC_KEYS": _other_key(tmp_path), "MLBUILD_STORE_SECRET_KEY": str(cfg.secret_key_file)}
    proc = run_cli("store", "--store", str(cfg.root), "verify", env=env, check=False)
    assert proc.returncode == 1 and "signed only by keys this machine does not trust" in proc.stderr
    assert "MLBUILD_STORE_PUBLIC_KEYS" in proc.stderr and "remove them with" not in proc.stderr


def test_restore_names_the_trusted_keys_and_the_fix(store: tuple[StoreConfig, Path], tmp_path: Path) -> None:
    """The fast pull path refuses an entry signed by an untrusted key before writing anything."""
    from mlbuild.store.keys import parse_public_key
    from mlbuild.store.restore import restore_paths
    cfg, chroot = store
    info = put(cfg, chroot, fake_path(chroot, "w.safetensors", os.urandom(1 << 16)))
    trusted = _other_key(tmp_path)
    dest = tmp_path / "local" / "nix" / "store"
    dest.mkdir(parents=True)
    with pytest.raises(StoreCorruptError) as e:
        restore_paths(Layout(cfg.root), [info], (parse_public_key(trusted),), str(tmp_path / "local"), dest)
    msg = str(e.value)
    assert f"refusing {info.store_path}: it lacks a valid signature by a trusted key" in msg
    assert f"signed only by unit-1, which this machine does not trust (trusted keys here: {trusted})" in msg
    assert "MLBUILD_STORE_PUBLIC_KEYS" in msg
    assert not list(dest.iterdir())


def test_a_pull_of_a_narinfo_edited_after_signing_says_so_not_to_trust_the_key(store: tuple[StoreConfig, Path],
                                                                              tmp_path: Path) -> None:
    """A reference removed by hand: the signature by the trusted key no longer verifies. The pull
    said the trusted key was one "this machine does not trust" and to trust it."""
    from mlbuild.store.restore import restore_paths
    cfg, chroot = store
    info = put(cfg, chroot, fake_path(chroot, "w.safetensors", os.urandom(1 << 16)))
    f = Layout(cfg.root).narinfo(info.store_path)
    f.write_text(f.read_text().replace("NarSize: ", "NarSize: 1"))
    edited = NarInfo.parse(f.read_text())
    dest = tmp_path / "local" / "nix" / "store"
    dest.mkdir(parents=True)
    with pytest.raises(StoreCorruptError) as e:
        restore_paths(Layout(cfg.root), [edited], cfg.trusted_keys(), str(tmp_path / "local"), dest)
    msg = str(e.value)
    assert "is signed by unit-1, a key trusted here, but the signature does not verify: the narinfo was changed " \
           "after signing" in msg and f"`mlbuild store --store {cfg.root} verify --repair`" in msg, msg
    assert "does not trust" not in msg and "MLBUILD_STORE_PUBLIC_KEYS" not in msg
    assert not list(dest.iterdir())


def test_init_with_a_key_this_machine_does_not_trust_says_how_to_trust_it(tmp_path: Path) -> None:
    """With /etc/mlbuild/store.pub present, mlbuild trusts that key only: the first push with the
    key init had just made was refused. init says so, with the setting to add."""
    from mlbuild.store.keys import generate_key_pair
    from tests.conftest import run_cli

    other = generate_key_pair("other-1", tmp_path / "other.sec", tmp_path / "other.pub")
    env = {"MLBUILD_STORE_SECRET_KEY": str(tmp_path / "new.sec"), "MLBUILD_STORE_PUBLIC_KEYS": str(other.public)}
    proc = run_cli("store", "--store", str(tmp_path / "s"), "init", "--generate-key", "--key-name", "new-1", env=env)
    public = (tmp_path / "new.pub").read_text().strip()
    assert f"note: mlbuild here does not trust this key yet, so pushes signed with it are refused: " \
           f"set MLBUILD_STORE_PUBLIC_KEYS='{public}'" in proc.stderr
    env["MLBUILD_STORE_PUBLIC_KEYS"] = public
    proc = run_cli("store", "--store", str(tmp_path / "s"), "init", env=env)
    assert "does not trust" not in proc.stderr


def test_an_unreadable_secret_key_points_at_permissions(tmp_path: Path) -> None:
    import unittest.mock

    from mlbuild.errors import StoreKeyError
    from mlbuild.store.keys import generate_key_pair, load_secret_key

    generate_key_pair("k-1", tmp_path / "k.sec", tmp_path / "k.pub")
    with pytest.raises(StoreKeyError, match="create it with"):
        load_secret_key(tmp_path / "missing.sec")
    with unittest.mock.patch.object(Path, "read_text", side_effect=PermissionError(13, "Permission denied")):
        with pytest.raises(StoreKeyError, match=r"\(Permission denied\); its mode 0600 lets only its owner \(\w+\) "
                                                r"read it: give its group read access"):
            load_secret_key(tmp_path / "k.sec")


@pytest.mark.parametrize("edit, why", [
    (lambda t: t.replace('"version": 1', '"version": 2'),
     r"lock version 2, written by a newer mlbuild than this one \(it reads version 1\), so gc cannot tell what it pins"),
    (lambda t: f"<<<<<<< HEAD\n{t}=======\n{t}>>>>>>> other\n",
     r"a git merge left it half-resolved \(conflict marker '<<<<<<< HEAD' at line 1\), so gc cannot tell what it pins"),
])
def test_gc_names_the_project_s_lock_it_cannot_read_as_such(store: tuple[StoreConfig, Path], tmp_path: Path,
                                                             edit: Any, why: str) -> None:
    """The project's own lock, written by a newer mlbuild or left half-merged, was 'not an mlbuild.lock;
    pass the project's mlbuild.lock to --lock', which it was."""
    from mlbuild.errors import StoreError
    cfg, chroot = store
    put(cfg, chroot, fake_path(chroot, "x", "x"))
    lock = lock_text(tmp_path)
    assert '"version": 1' in lock.read_text()
    lock.write_text(edit(lock.read_text()))
    with pytest.raises(StoreError, match=why) as e:
        gc(cfg, grace=0, locks=[lock])
    assert "pass the project's mlbuild.lock" not in str(e.value)
    assert len(list(Layout(cfg.root).narinfos())) == 1


def test_gc_names_a_flake_lock_given_as_the_lock(store: tuple[StoreConfig, Path], tmp_path: Path) -> None:
    """`store gc --lock flake.lock` (Nix's lock, beside mlbuild.lock in every project) said 'lock
    version 7, written by a newer mlbuild than this one ...; update this one', which would not help."""
    from mlbuild.errors import StoreError
    cfg, chroot = store
    put(cfg, chroot, fake_path(chroot, "x", "x"))
    flake_lock = tmp_path / "flake.lock"
    flake_lock.write_text('{\n  "nodes": {\n    "root": {}\n  },\n  "root": "root",\n  "version": 7\n}\n')
    with pytest.raises(StoreError) as e:
        gc(cfg, grace=0, locks=[flake_lock])
    assert str(e.value) == f"{flake_lock} is Nix's flake.lock (its \"nodes\" and \"root\"), not an mlbuild.lock; " \
                           "pass the project's mlbuild.lock to --lock"
    assert len(list(Layout(cfg.root).narinfos())) == 1   # gc removed nothing


def test_a_push_is_not_held_by_a_fifo_among_the_push_records(store: tuple[StoreConfig, Path]) -> None:
    """A push reads the older records of its name to replace the same one: a FIFO a writer of the
    store left among them hung the push (read_bytes waited for a writer that never came)."""
    import os
    import threading

    cfg, chroot = store
    layout = Layout(cfg.root)
    v1 = fake_path(chroot, "model", "v1")
    put(cfg, chroot, v1)
    record_push(layout, "model", [v1.path])
    os.mkfifo(layout.roots_dir / "pushes" / "model" / "00000000T000000.fifo")
    done: list[Path] = []
    pusher = threading.Thread(target=lambda: done.append(record_push(layout, "model", [v1.path])), daemon=True)
    pusher.start()
    pusher.join(10)
    assert done, "the push hung on the FIFO"
    assert sorted(p.name for p in (layout.roots_dir / "pushes" / "model").iterdir()) == \
        sorted(["00000000T000000.fifo", done[0].name])   # the older record of the same paths replaced


@pytest.mark.parametrize("weights", [True, False])
def test_a_store_nix_config_names_is_read_where_its_files_lie(store: tuple[StoreConfig, Path],
                                                              monkeypatch: pytest.MonkeyPatch, weights: bool) -> None:
    """`NIX_CONFIG="store = /tmp/machine-b" mlbuild build --push digits` (a runner with a store of its
    own) built there, then failed its push: "`nix-store --dump /nix/store/...-digits-model` failed: ...
    No such file or directory", reading the path where the machine's own store keeps it."""
    cfg, chroot = store
    info = fake_path(chroot, "w.safetensors" if weights else "code", os.urandom(1 << 16) if weights else {"a.py": "x\n"})
    monkeypatch.setenv("NIX_CONFIG", f"sandbox = false\nstore = {chroot}\n")
    narinfo = publish_path(Layout(cfg.root), info, cfg.secret_key())   # no local_store: as build --push calls it
    assert narinfo.compression == ("none" if weights else "zstd") and verify(cfg).ok


@pytest.mark.parametrize("record", [b"\xff\xfe garbled", b'{"nar/x": 1', b"[]", b'{"nar/unused.nar": "yesterday"}', b"null",
                                    # times no gc wrote: gone at once, or never (json reads NaN and Infinity)
                                    b'{"nar/unused.nar": 0}', b'{"nar/unused.nar": -5}', b'{"nar/unused.nar": NaN}',
                                    b'{"nar/unused.nar": Infinity}', b'{"nar/unused.nar": 1e300}'])
def test_gc_takes_a_garbled_record_of_condemned_nars_as_empty(store: tuple[StoreConfig, Path], record: bytes) -> None:
    """mlbuild/gc-condemned.json cut short or garbled on the store's disk (bytes that are not UTF-8,
    JSON that is not an object of times) was a traceback of every later gc, for good. gc takes it as
    empty (the NARs it named wait out the grace period again) and writes it whole."""
    import json

    cfg, _ = store
    layout = Layout(cfg.root)
    unused = cfg.root / "nar" / "unused.nar"
    unused.write_bytes(b"x")
    os.utime(unused, (0, 0))
    layout.condemned_file.write_bytes(record)
    report = gc(cfg, grace=3600)
    assert report.condemned_nars == [unused] and unused.exists()
    assert list(json.loads(layout.condemned_file.read_text())) == ["nar/unused.nar"]
    from tests.conftest import run_cli
    proc = run_cli("store", "--store", str(cfg.root), "gc", "--grace", "0",
                   env={"MLBUILD_STORE_SECRET_KEY": str(cfg.secret_key_file)})
    assert "Traceback" not in proc.stderr and not unused.exists()


def _kept_by(store: tuple[StoreConfig, Path], root: str) -> tuple[StoreConfig, Layout, PathInfo, Path]:
    """A path in the store kept by one root, a tag ``rel`` or a push record of ``model``; the root's file."""
    cfg, chroot = store
    layout = Layout(cfg.root)
    kept = fake_path(chroot, "model", "m")
    put(cfg, chroot, kept)
    if root == "tag":
        tag(cfg, "rel", [kept.path])
        return cfg, layout, kept, layout.roots_dir / "tags" / "rel"
    return cfg, layout, kept, record_push(layout, "model", [kept.path])


@pytest.mark.parametrize("root", ["tag", "push record"])
def test_a_garbled_tag_or_push_record_is_named_and_gc_removes_nothing(store: tuple[StoreConfig, Path],
                                                                      root: str) -> None:
    """A tag or push record garbled on the store's disk (bytes that are not UTF-8) stopped gc, tag and
    untag with a UnicodeDecodeError traceback, for good. gc names it and removes nothing (it cannot tell
    what the root keeps); the fix it names works."""
    from mlbuild.errors import StoreCorruptError
    from mlbuild.store import untag

    cfg, layout, kept, bad = _kept_by(store, root)
    bad.write_bytes(b"\xff\xfe\x00/nix/store/")
    with pytest.raises(StoreCorruptError) as e:
        gc(cfg, keep_last=1, grace=0)
    assert str(e.value).startswith(f"{bad} is not text (garbled on the store's disk), so mlbuild cannot tell which "
                                   f"paths the {'tag rel' if root == 'tag' else 'push record of model'} keeps from gc, "
                                   f"and gc removes nothing; ")
    assert layout.narinfo(kept.path).exists()
    if root == "tag":
        with pytest.raises(StoreCorruptError, match="untag rel` removes it"):
            tag(cfg, "other", [kept.path])
        untag(cfg, "rel")
    else:
        assert f"remove it (`rm {bad}`)" in str(e.value)
        bad.unlink()
    gc(cfg, keep_last=1, grace=0)
    assert not layout.narinfo(kept.path).exists()


def test_a_garbled_tag_and_push_record_are_named_at_once(store: tuple[StoreConfig, Path]) -> None:
    """A tag and a push record both garbled: gc named the tag; the user fixed it and ran gc again, to
    be told of the record. Both are named by the first gc, which removes nothing."""
    from mlbuild.errors import StoreCorruptError

    cfg, chroot = store
    layout = Layout(cfg.root)
    kept = fake_path(chroot, "model", "m")
    put(cfg, chroot, kept)
    tag(cfg, "rel", [kept.path])
    record = record_push(layout, "model", [kept.path])
    (layout.roots_dir / "tags" / "rel").write_bytes(b"\xff\xfe")
    record.write_bytes(b"\x00" * 40)
    with pytest.raises(StoreCorruptError) as e:
        gc(cfg, keep_last=1, grace=0)
    assert str(e.value).startswith("2 roots of the store cannot be read:\n")
    assert f"{layout.roots_dir / 'tags' / 'rel'} is not text" in str(e.value)
    assert f"{record} has a line that is no store path" in str(e.value)
    assert layout.narinfo(kept.path).exists()


@pytest.mark.parametrize("root", ["tag", "push record"])
@pytest.mark.parametrize("garbled", [b"\x00" * 60, b"/nix/store/0123456789abcdfghijklmnpqrsvwxyz-m\n/nix/store/01234"])
def test_a_tag_or_push_record_of_nul_bytes_or_cut_in_a_path_keeps_gc_off(store: tuple[StoreConfig, Path], root: str,
                                                                          garbled: bytes) -> None:
    """NUL bytes (what a crash can leave of a file on ext4) and a path cut short are text: such a tag
    or record was read as keeping nothing (or part of what it named) and gc removed the release; it is
    named as a garbled one is, and gc removes nothing until the fix is done."""
    from mlbuild.errors import StoreCorruptError

    cfg, layout, kept, bad = _kept_by(store, root)
    bad.write_bytes(garbled)
    with pytest.raises(StoreCorruptError) as e:
        gc(cfg, keep_last=1, grace=0)
    assert str(e.value).startswith(f"{bad} has a line that is no store path (")
    assert "(garbled on the store's disk), so mlbuild cannot tell" in str(e.value)
    assert layout.narinfo(kept.path).exists()
