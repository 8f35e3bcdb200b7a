"""Store folder layout, atomic publishing, temp names, NAR segments and the compression choice."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import pytest

from mlbuild.errors import StoreConfigError, StoreCorruptError
from mlbuild.nar import NarWriter
from mlbuild.store.compression import NONE, ZSTD, choose_compression, real_path_in
from mlbuild.store.layout import TEMP_QUIET_S, Layout, parse_temp_name, publish_bytes, temp_is_stale, temp_name
from mlbuild.store.narstream import FileData, NarFormatError, nar_segments, parse_nar
from tests.conftest import write_tree


def test_temp_names_carry_host_and_pid_and_are_unique() -> None:
    names = {temp_name(".nar") for _ in range(100)}
    assert len(names) == 100
    host, pid = parse_temp_name(next(iter(names)))  # type: ignore[misc]
    assert pid == os.getpid() and host == socket.gethostname().replace(".", "_")
    assert parse_temp_name("abc.narinfo") is None


def test_stale_temps(tmp_path: Path) -> None:
    mine = tmp_path / temp_name()
    mine.write_text("x")
    assert not temp_is_stale(mine, 3600, os.path.getmtime(mine))
    dead = tmp_path / f".tmp.{socket.gethostname().replace('.', '_')}.999999999.ab"
    dead.write_text("x")
    # same host, pid gone: stale once nothing wrote it for a while, not at once (two containers may share
    # a hostname but not a PID namespace: the pid may be a live writer in the other one)
    assert not temp_is_stale(dead, 3600, os.path.getmtime(dead))
    assert not temp_is_stale(dead, 3600, os.path.getmtime(dead) + TEMP_QUIET_S - 1)
    assert temp_is_stale(dead, 3600, os.path.getmtime(dead) + TEMP_QUIET_S + 1)
    assert not temp_is_stale(mine, 3600, os.path.getmtime(mine) + TEMP_QUIET_S + 1)   # pid alive
    other = tmp_path / ".tmp.elsewhere.1.ab"
    other.write_text("x")
    assert not temp_is_stale(other, 3600, os.path.getmtime(other))  # another host: wait for grace
    assert temp_is_stale(other, 3600, os.path.getmtime(other) + 3601)
    # `gc --grace 0` while another machine pushes: its temp file, written a moment ago, stays
    assert not temp_is_stale(other, 0, os.path.getmtime(other) + 1)
    assert temp_is_stale(other, 0, os.path.getmtime(other) + TEMP_QUIET_S + 1)


def test_publish_bytes_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "x.narinfo"
    publish_bytes(dest, b"one")
    publish_bytes(dest, b"two")
    assert dest.read_bytes() == b"two" and os.listdir(tmp_path) == ["x.narinfo"]
    assert dest.stat().st_mode & 0o777 == 0o664


def test_layout_init_is_idempotent_and_checks_store_dir(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "s")
    with pytest.raises(StoreConfigError, match=r"`mlbuild store --store \S+ init`"):
        layout.require()
    layout.init()
    layout.init()
    assert (tmp_path / "s" / "nix-cache-info").read_text().startswith("StoreDir: /nix/store\n")
    assert (tmp_path / "s" / "nar").stat().st_mode & 0o2775 == 0o2775
    (tmp_path / "s" / "nix-cache-info").write_text("StoreDir: /other/store\n")
    with pytest.raises(StoreConfigError):
        layout.init()


@pytest.mark.parametrize("text", [b"StoreDir: /nix/sto", b"StoreDir: /nix/st\xff\xfere\n", b"StoreDir:", b"StoreDir: /\0\0\0"])
def test_a_nix_cache_info_cut_short_is_named_and_init_writes_it_again(tmp_path: Path, text: bytes) -> None:
    """A nix-cache-info cut short (`StoreDir: /nix/sto`: a full disk or a crash while an older mlbuild
    wrote it) or garbled makes Nix refuse the whole store, while `store verify` said 0 problems, pushes
    went on into it, and `store init` said it was for another Nix store folder: use another location.
    Every store command now names it, and init writes it again."""
    layout = Layout(tmp_path / "s")
    layout.init()
    info = tmp_path / "s" / "nix-cache-info"
    info.write_bytes(text)
    with pytest.raises(StoreCorruptError) as e:
        layout.require()
    assert str(e.value).startswith(f"{info} says StoreDir: ")
    assert str(e.value).endswith(f"so Nix refuses the whole store; `mlbuild store --store {tmp_path / 's'} init` "
                                 f"writes it again")
    layout.init()
    assert info.read_text().startswith("StoreDir: /nix/store\n")
    layout.require()


def test_a_nix_cache_info_nix_reads_is_left_as_it_is(tmp_path: Path) -> None:
    """Nix reads only its Key: value lines: bytes that are not UTF-8 elsewhere, or no StoreDir line,
    are no damage; another StoreDir is another Nix's store, refused by every command."""
    layout = Layout(tmp_path / "s")
    layout.init()
    info = tmp_path / "s" / "nix-cache-info"
    for text in (b"\xff\xfe\nStoreDir: /nix/store\n", b"Priority: 30\n"):
        info.write_bytes(text)
        layout.require()
        layout.init()
        assert info.read_bytes() == text
    info.write_text("StoreDir: /gnu/store\n")
    for call in (layout.require, layout.init):
        with pytest.raises(StoreConfigError, match=r"is for another Nix store folder \(/gnu/store\) than /nix/store"):
            call()


@pytest.mark.parametrize("url", ["nar/../../etc/passwd", "../x", "nar/", "nar/.tmp.x", "other/x.nar"])
def test_nar_urls_stay_in_nar_folder(tmp_path: Path, url: str) -> None:
    with pytest.raises(StoreCorruptError):
        Layout(tmp_path).nar(url)


def _nar_bytes(path: Path) -> bytes:
    out = bytearray()

    class _Sink:
        def update(self, data: bytes) -> None:
            out.extend(data)

    NarWriter(_Sink()).dump(str(path))
    return bytes(out)


def test_segments_equal_nar(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "t", {"a": "hello", "empty": "", "d": {"b": b"\0" * 13, "c": "x"}})
    os.symlink("a", root / "l")
    os.chmod(root / "d" / "c", 0o755)
    joined = b"".join(s if isinstance(s, bytes) else open(s.path, "rb").read() for s in nar_segments(str(root)))
    assert joined == _nar_bytes(root)
    assert sum(isinstance(s, FileData) for s in nar_segments(str(root))) == 3   # empty file: no segment


def test_parse_nar_round_trip(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "t", {"a": "hello", "d": {"b": "xyz"}})
    os.symlink("a", root / "l")
    data = _nar_bytes(root)
    entries = list(parse_nar(io.BytesIO(data)))
    assert [(e.kind, e.rel) for e in entries] == [("directory", ""), ("regular", "a"), ("directory", "d"),
                                                  ("regular", "d/b"), ("symlink", "l")]
    a = entries[1]
    assert data[a.offset:a.offset + a.size] == b"hello"


@pytest.mark.parametrize("name", [b"..", b"a/b", b"."])
def test_parse_nar_rejects_unsafe_names(tmp_path: Path, name: bytes) -> None:
    root = write_tree(tmp_path / "t", {"zz": "x"})
    data = _nar_bytes(root)
    pad = lambda b: len(b).to_bytes(8, "little") + b + b"\0" * ((-len(b)) % 8)  # noqa: E731
    bad = data.replace(pad(b"zz"), pad(name))
    with pytest.raises(NarFormatError):
        list(parse_nar(io.BytesIO(bad)))


def test_compression_choice(tmp_path: Path) -> None:
    rnd = write_tree(tmp_path / "r", {"w": os.urandom(2 << 20)})
    txt = write_tree(tmp_path / "t", {"data.csv": "1,2,3\n" * 500_000})
    named = write_tree(tmp_path / "n", {"model.safetensors": b"\0" * (2 << 20), "x.py": "x"})
    assert choose_compression("/nix/store/h-weights", str(rnd), 2 << 20) == NONE
    assert choose_compression("/nix/store/h-data", str(txt), 3 << 20) == ZSTD
    assert choose_compression("/nix/store/h-pkg", str(named), 2 << 20) == NONE
    assert choose_compression("/nix/store/h-x.safetensors", None, 10) == NONE
    assert choose_compression("/nix/store/h-small", None, 100) == ZSTD


def test_compression_of_many_small_files(tmp_path: Path) -> None:
    """A dataset of 100,000 small text files went into the store uncompressed (a 19 MB NAR that zstd
    makes 131 KB): each 8-byte sample came out of zstd larger, and the NAR's framing, most of its
    bytes, was not counted. Framing is counted now; random bytes still go uncompressed."""
    text = write_tree(tmp_path / "t", {f"d{i // 100}/f{i}.txt": f"{i},{i % 7},{i % 3}\n" for i in range(6000)})
    rnd = write_tree(tmp_path / "r", {f"f{i}.bin2": os.urandom(4096) for i in range(600)})
    for tree, want in ((text, ZSTD), (rnd, NONE)):
        size = len(_nar_bytes(tree))
        assert size > 1 << 20
        assert choose_compression("/nix/store/h-data", str(tree), size) == want


def test_the_compression_probe_reads_a_few_mb_of_many_files(tmp_path: Path) -> None:
    """A dataset of many files of the same size (shards of 1 MB): the probe went on sampling 768 KB
    of each, up to 4,096 files, until it had seen 80% of the bytes, and held all of it twice (3 GB
    read and 6 GB in memory for 4,096 shards; 775 MB for these 600). It reads what the probe read
    before, a few MB, and compresses as it reads."""
    import tracemalloc

    tree = tmp_path / "shards"
    tree.mkdir()
    for i in range(600):
        with open(tree / f"part-{i:04}.dat", "wb") as f:
            f.truncate(1 << 20)   # sparse: nothing on disk, zeros read
    tracemalloc.start()
    try:
        assert choose_compression("/nix/store/h-data", str(tree), 600 << 20) == ZSTD
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak


def test_real_path_in() -> None:
    p = "/nix/store/" + "a" * 32 + "-x"
    assert real_path_in(p, None) == p
    assert real_path_in(p, "/tmp/B") == "/tmp/B" + p
    assert real_path_in(p, "local?root=/tmp/C") == "/tmp/C" + p
    assert real_path_in(p, "ssh://host") is None


def test_untag_of_a_missing_tag_and_negative_gc_settings_are_errors(tmp_path: Path) -> None:
    from mlbuild.errors import StoreTargetError
    from mlbuild.store import StoreConfig, init_store
    from mlbuild.store.admin import untag
    from mlbuild.store.gc import gc
    from mlbuild.store.roots import write_tag

    cfg = StoreConfig(root=tmp_path / "s")
    init_store(cfg)
    write_tag(Layout(cfg.root), "v1", [])
    with pytest.raises(StoreTargetError, match=r"no tag 'v2' in the store .* \(tags: v1\)"):
        untag(cfg, "v2")
    untag(cfg, "v1")
    with pytest.raises(StoreTargetError, match=r"\(tags: none\)"):
        untag(cfg, "v1")
    for kw in ({"keep_last": -1}, {"grace": -1.0}, {"grace": float("nan")}):
        with pytest.raises(ValueError, match="must not be negative"):
            gc(cfg, **kw)  # type: ignore[arg-type]


def test_not_a_store_suggests_an_init_command_that_works(tmp_path: Path) -> None:
    import shlex

    from tests.conftest import run_cli

    root = tmp_path / "it's(1)&store"   # shell-special, but no space, ? or # (Nix cannot read those)
    root.mkdir()
    proc = run_cli("store", "--store", str(root), "stats", check=False)
    assert proc.returncode == 1 and "is not an mlbuild store" in proc.stderr
    suggestion = proc.stderr.split("create it with `", 1)[1].split("`", 1)[0]
    assert suggestion == f"mlbuild store --store {shlex.quote(str(root))} init" and "'" in suggestion
    run_cli(*shlex.split(suggestion)[1:])
    run_cli("store", "--store", str(root), "stats")


@pytest.mark.parametrize("folder", ["nar", "mlbuild/roots/pushes/digits", "mlbuild"])
def test_gc_deletes_nothing_through_a_store_folder_replaced_by_a_link(tmp_path: Path, folder: str) -> None:
    """Any writer of the store (the mlbuild group) could replace `<store>/nar` with a link to another folder
    and backdate `mlbuild/gc-condemned.json`: the next `store gc`, run by root or CI, deleted every file
    of that folder as an unused NAR."""
    import json
    import subprocess

    from tests.conftest import MLBUILD

    store, victim = tmp_path / "store", tmp_path / "victim"
    Layout(store).init()
    write_tree(victim, {"important.txt": "precious\n", "other": ""})
    for f in victim.iterdir():
        os.utime(f, (1, 1))
    link = store / folder
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_dir():
        for f in link.iterdir():
            if f.is_file():
                (victim / f.name).write_bytes(f.read_bytes())
        import shutil
        shutil.rmtree(link)
    link.symlink_to(victim)
    if folder == "nar":
        (store / "mlbuild" / "gc-condemned.json").write_text(json.dumps({"nar/important.txt": 1, "nar/other": 1}))
    proc = subprocess.run([*MLBUILD, "store", "--store", str(store), "gc", "--keep-last", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"Error: {link} is a symbolic link (to {victim}), not a folder of the store {store}: mlbuild writes and " \
           f"deletes files in the store's folders" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (victim / "important.txt").read_text() == "precious\n" and (victim / "other").exists()


@pytest.mark.parametrize("folder", ["mlbuild", "mlbuild/roots", "nar"])
def test_init_writes_nothing_through_a_store_folder_replaced_by_a_link(tmp_path: Path, folder: str) -> None:
    """`store init`, the command the link's error says to run, took a folder replaced with a link as
    the store's own: it made roots/tags, roots/pushes and wrote the public key where the link led, and
    said nothing. A link to a folder that is gone made every command say to run init, which did nothing."""
    import subprocess

    from tests.conftest import MLBUILD

    store, victim = tmp_path / "store", tmp_path / "victim"
    Layout(store).init()
    import shutil
    shutil.rmtree(store / folder)
    victim.mkdir()
    (store / folder).symlink_to(victim)
    env = {**os.environ, "MLBUILD_STORE_SECRET_KEY": str(tmp_path / "k.sec")}
    init = subprocess.run([*MLBUILD, "store", "--store", str(store), "init", "--generate-key"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert init.returncode == 1, init.stdout + init.stderr
    assert f"Error: {store / folder} is a symbolic link (to {victim}), not a folder of the store {store}" in init.stderr
    assert list(victim.iterdir()) == []
    victim.rmdir()   # the link now leads nowhere: named as a link, not as a store to create
    stats = subprocess.run([*MLBUILD, "store", "--store", str(store), "stats"], capture_output=True, text=True,
                           timeout=120)
    assert f"Error: {store / folder} is a symbolic link (to {victim})" in stats.stderr, stats.stderr


@pytest.mark.parametrize("kind", ["narinfo", "tag"])
def test_a_store_file_linked_to_a_root_only_file_is_not_shown(tmp_path: Path, kind: str) -> None:
    """Any writer of the store could make a narinfo or a tag a link to a file only root may read:
    `store verify` (or `store tag NAME`), run by root, showed its lines as a corrupt entry (or as the
    paths the tag would drop)."""
    import subprocess

    from mlbuild.errors import StoreCorruptError
    from mlbuild.store.admin import tags
    from mlbuild.store.config import StoreConfig
    from tests.conftest import MLBUILD

    store, secret = tmp_path / "store", tmp_path / "secret"
    Layout(store).init()
    secret.write_text("root-only line\n")
    secret.chmod(0o600)
    if kind == "narinfo":
        link = store / ("a" * 32 + ".narinfo")
        link.symlink_to(secret)
        proc = subprocess.run([*MLBUILD, "store", "--store", str(store), "verify"], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "MLBUILD_STORE_PUBLIC_KEYS": "k:" + "A" * 43 + "="})
        assert f"{link} is a symbolic link (to {secret}), not a file of the store" in proc.stdout + proc.stderr
        assert "root-only" not in proc.stdout + proc.stderr
    else:
        link = store / "mlbuild" / "roots" / "tags" / "rel"
        link.symlink_to(secret)
        with pytest.raises(StoreCorruptError, match="is a symbolic link") as e:
            tags(StoreConfig(store))
        assert "root-only" not in str(e.value)


def test_gc_names_the_push_name_of_each_record_it_drops(tmp_path: Path) -> None:
    """A team's store holds push records of many models: gc listed each dropped one by its file
    name alone (a time stamp, host and pid), so nobody could tell whose pushes --keep-last dropped.
    Each line now names the push name (the model) the record belongs to."""
    import subprocess

    from mlbuild.store.roots import record_push
    from tests.conftest import MLBUILD

    store = tmp_path / "store"
    layout = Layout(store)
    layout.init()
    old = {name: record_push(layout, name, [f"/nix/store/{c * 32}-{name}"])
           for name, c in (("a-package", "a"), ("b-package", "b"))}
    for name, c in (("a-package", "c"), ("b-package", "d")):
        record_push(layout, name, [f"/nix/store/{c * 32}-{name}"])
    proc = subprocess.run([*MLBUILD, "store", "--store", str(store), "gc", "--keep-last", "1", "--grace", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name, rec in old.items():
        assert f"removed\tpush record {name}/{rec.name} (past --keep-last)" in proc.stdout, proc.stdout
        assert not rec.exists()
