"""`mlbuild build` warns when a local dataset's files differ from what mlbuild.lock pins."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlbuild.build import changed_datasets
from mlbuild.config import load_project
from mlbuild.errors import DataError
from mlbuild.nar import nar_sha256


def project(root: Path) -> tuple[Path, dict[str, Any]]:
    (root / "data").mkdir(parents=True)
    (root / "data" / "iris.csv").write_text("5.1,3.5,setosa\n")
    (root / "data" / "gone.csv").write_text("1\n")
    (root / "mlbuild.toml").write_text('[project]\nname = "p"\n[datasets.raw]\npath = "data/iris.csv"\n'
                                       '[datasets.gone]\npath = "data/gone.csv"\n'
                                       '[datasets.split]\nprepare = "prepare.py"\ninputs = ["raw"]\n')
    lock = {"datasets": {"raw": {"sha256": nar_sha256(str(root / "data" / "iris.csv")), "kind": "path"},
                         "gone": {"sha256": nar_sha256(str(root / "data" / "gone.csv")), "kind": "path"}}}
    (root / "data" / "gone.csv").unlink()   # e.g. a fresh clone without the data: not a change
    return root, lock


def aged(root: Path, name: str) -> None:
    """Move the time stat-NAME.json says its facts were taken past the racy window, as if the data
    had been hashed seconds after it was written: its facts then prove its bytes."""
    from mlbuild.data.statcache import RACY_NS

    cache = root / ".mlbuild" / f"stat-{name}.json"
    data = json.loads(cache.read_text())
    cache.write_text(json.dumps({**data, "taken": data["taken"] + RACY_NS + 1}))


def test_an_edited_dataset_is_named_with_the_command_that_pins_it(tmp_path: Path) -> None:
    root, lock = project(tmp_path / "p")
    assert changed_datasets(load_project(root), lock) == []
    (root / "data" / "iris.csv").write_text("1.1,3.5,setosa\n")
    assert changed_datasets(load_project(root), lock) == [
        "data/iris.csv differs from the version mlbuild.lock pins for dataset raw; this build uses the pinned one. "
        "To use the new files: mlbuild data add raw data/iris.csv"]


def test_a_touched_dataset_is_hashed_once_then_known_by_its_stat_facts(tmp_path: Path) -> None:
    root, lock = project(tmp_path / "p")
    assert changed_datasets(load_project(root), lock) == []
    cached = json.loads((root / ".mlbuild" / "stat-raw.json").read_text())
    assert cached["sha256"] == lock["datasets"]["raw"]["sha256"]
    aged(root, "raw")
    cache = root / ".mlbuild" / "stat-raw.json"
    cache.write_text(json.dumps({**json.loads(cache.read_text()), "sha256": "0" * 64}))
    assert changed_datasets(load_project(root), lock) != []   # the cached hash, not the files', was taken


def test_a_write_that_changes_no_stat_fact_right_after_hashing_is_seen(tmp_path: Path) -> None:
    """Racy clean: a write in the same time granule as the one before it (a file system keeping
    seconds; here a second write to a page already dirty in a shared mmap, which updates no time)
    left every stat fact as the hash recorded them: `data status` said present, `data add`
    "unchanged", a build warned of nothing, while the files held other bytes than the pin."""
    import mmap
    import os

    root, lock = project(tmp_path / "p")
    data = root / "data" / "iris.csv"
    with open(data, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:   # a job writing its output
        m[0:1] = b"5"
        assert changed_datasets(load_project(root), lock) == []   # hashed now, remembered
        before = os.stat(data)
        m[0:1] = b"9"
    after = os.stat(data)
    assert (after.st_size, after.st_mtime_ns, after.st_ctime_ns, after.st_ino) == \
        (before.st_size, before.st_mtime_ns, before.st_ctime_ns, before.st_ino)
    assert changed_datasets(load_project(root), lock) == [
        "data/iris.csv differs from the version mlbuild.lock pins for dataset raw; this build uses the pinned one. "
        "To use the new files: mlbuild data add raw data/iris.csv"]


def test_an_edit_that_keeps_size_mtime_and_inode_is_seen(tmp_path: Path) -> None:
    """`cp -p` of a same-size file over the data (or a write and `touch -d` back) kept size, mtime
    and inode: the stat cache said unchanged, `data add` kept the old pin, `data diff` saw it."""
    import os

    root, lock = project(tmp_path / "p")
    data = root / "data" / "iris.csv"
    assert changed_datasets(load_project(root), lock) == []   # hashed once, remembered
    aged(root, "raw")   # not a racy entry: only ctime says it changed
    before = os.stat(data)
    with open(data, "r+b") as f:   # same inode, same size
        f.write(b"9")
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(data)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert changed_datasets(load_project(root), lock) == [
        "data/iris.csv differs from the version mlbuild.lock pins for dataset raw; this build uses the pinned one. "
        "To use the new files: mlbuild data add raw data/iris.csv"]


def test_a_missing_url_dataset_is_fetched_by_a_build(tmp_path: Path) -> None:
    """status said `mlbuild data add remote PATH`, which refuses a url dataset."""
    from mlbuild.data.datasets import status

    (tmp_path / "mlbuild.toml").write_text('[project]\nname = "p"\n[datasets.remote]\nurl = "file:///srv/x.csv"\n'
                                           f'sha256 = "{"ab" * 32}"\n')
    (tmp_path / "mlbuild.lock").write_text(json.dumps({"version": 1, "datasets": {}, "interpreter": {"snapshot": {}}}))
    (row,) = status(load_project(tmp_path), shared=None)
    assert (row.state, row.detail) == ("missing", "run `mlbuild build datasets.remote` (it fetches file:///srv/x.csv), "
                                                  "or `mlbuild data pull remote`")


def test_pushing_a_url_dataset_not_fetched_yet_says_to_build_it(tmp_path: Path) -> None:
    """`data push` said "`mlbuild data add NAME PATH` first", which refuses a url dataset."""
    import pytest

    from mlbuild.data.remote import push

    (tmp_path / "data.csv").write_text("1\n")
    (tmp_path / "mlbuild.toml").write_text('[project]\nname = "p"\n[datasets.remote]\nurl = "file:///srv/x.csv"\n'
                                           f'sha256 = "{"ab" * 32}"\n[datasets.raw]\npath = "data.csv"\n')
    lock = {"version": 1, "datasets": {"raw": {"sha256": "cd" * 32, "kind": "path"}}, "interpreter": {"snapshot": {}}}
    (tmp_path / "mlbuild.lock").write_text(json.dumps(lock))
    with pytest.raises(DataError, match=r"^dataset\(s\) raw, remote are not in the local store, so not pushed; bring them first: "
                                        r"`mlbuild data add raw data.csv`; `mlbuild build datasets.remote`$"):
        list(push(load_project(tmp_path), []))


def test_pulling_a_derived_dataset_says_what_fetches_it(tmp_path: Path) -> None:
    """`data pull split` said only that it "is pushed with what is built from it"."""
    import pytest

    from mlbuild.data.remote import dataset_paths

    root, lock = project(tmp_path / "p")
    (root / "mlbuild.lock").write_text(json.dumps({**lock, "version": 1, "interpreter": {"snapshot": {}}}))
    with pytest.raises(DataError, match=r"^dataset 'split' is derived \(prepare\): `mlbuild build datasets.split` "
                                        r"fetches it from the shared store \(or prepares it\), `mlbuild build --push "
                                        r"datasets.split` pushes it$"):
        dataset_paths(load_project(root), ["split"])


def test_a_declared_name_nix_refuses_is_refused_by_status(tmp_path: Path) -> None:
    """`data status` listed [datasets.".hidden"] and told to run `mlbuild build datasets..hidden`,
    which is no target (and the Nix library refuses the name)."""
    import pytest

    from mlbuild.data.datasets import status
    from mlbuild.errors import ConfigError

    (tmp_path / "mlbuild.toml").write_text('[project]\nname = "p"\n[datasets.".hidden"]\nurl = "file:///srv/x.csv"\n'
                                           f'sha256 = "{"ab" * 32}"\n')
    (tmp_path / "mlbuild.lock").write_text(json.dumps({"version": 1, "datasets": {}, "interpreter": {"snapshot": {}}}))
    with pytest.raises(ConfigError, match=r'^\[datasets.".hidden"\]: ".hidden" is not a valid name; use letters, '
                                          r"digits, - and _"):
        status(load_project(tmp_path), shared=None)


def test_a_url_that_is_no_url_is_refused_by_status(tmp_path: Path) -> None:
    """`url = "data/raw.csv"` was listed as a url dataset to fetch; its build failed in curl with
    "Couldn't resolve host name"."""
    import pytest

    from mlbuild.data.datasets import status
    from mlbuild.errors import ConfigError

    (tmp_path / "mlbuild.toml").write_text('[project]\nname = "p"\n[datasets.r]\nurl = "data/raw.csv"\n'
                                           f'sha256 = "{"ab" * 32}"\n')
    (tmp_path / "mlbuild.lock").write_text(json.dumps({"version": 1, "datasets": {}, "interpreter": {"snapshot": {}}}))
    with pytest.raises(ConfigError, match=r'^\[datasets.r\].url is "data/raw.csv", not a URL .*; a file of this '
                                          r'machine is a local dataset: path = "..." instead of url and sha256, pinned '
                                          r"by `mlbuild data add r PATH`$"):
        status(load_project(tmp_path), shared=None)


def test_push_and_pull_of_every_dataset_skip_one_never_added_naming_it(tmp_path: Path) -> None:
    """A dataset declared and never added (or a hand-edited pin with no sha256: a KeyError traceback)
    stopped `data push`/`data pull` of all the others: "dataset 'c1' is not locked"."""
    import pytest

    from mlbuild.data.remote import dataset_paths

    root, lock = project(tmp_path / "p")
    lock["datasets"]["gone"] = {"kind": "path"}
    (root / "mlbuild.lock").write_text(json.dumps({**lock, "version": 1, "interpreter": {"snapshot": {}}}))
    unlocked: list[str] = []
    assert list(dataset_paths(load_project(root), [], unlocked)) == ["raw"] and unlocked == ["gone"]
    with pytest.raises(DataError, match=r"^dataset 'gone' is not locked; run `mlbuild data add gone data/gone.csv`$"):
        dataset_paths(load_project(root), ["gone"], unlocked)   # asked for by name: refused


def test_a_missing_lock_says_how_to_get_its_pins_back(tmp_path: Path) -> None:
    import pytest

    from mlbuild.errors import LockError
    from mlbuild.lockfile import read_lock

    with pytest.raises(LockError, match=r"`git checkout -- mlbuild.lock` restores it with its dataset pins"):
        read_lock(tmp_path / "mlbuild.lock")


def test_builds_at_once_share_the_stat_cache(tmp_path: Path) -> None:
    """Each command that hashed a changed dataset (two builds at once, a build and `data status`)
    wrote its stat cache through the same `stat-NAME.tmp`: one renamed the other's away and
    stopped with a FileNotFoundError traceback."""
    import threading

    from mlbuild.data import statcache

    root, _lock = project(tmp_path / "p")
    data = root / "data" / "iris.csv"
    facts, errors = statcache.lookup(root / ".mlbuild", "raw", data)[1], []
    facts["taken"] += statcache.RACY_NS + 1   # as if taken once the data was old enough

    def remember() -> None:
        try:
            for _ in range(200):
                statcache.remember(root / ".mlbuild", "raw", data, facts, "0" * 64)
        except OSError as e:
            errors.append(e)

    threads = [threading.Thread(target=remember) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert statcache.lookup(root / ".mlbuild", "raw", data)[0] == "0" * 64
    assert sorted(p.name for p in (root / ".mlbuild").iterdir()) == ["stat-raw.json"]


@pytest.mark.parametrize("garbled", ["null", "[]", "3", '"x"', "{sha256}"])
def test_a_stat_cache_that_is_no_record_is_hashed_again(tmp_path: Path, garbled: str) -> None:
    """A stat cache that is JSON but no record (`null`, `[]`: garbled on disk, or edited by hand) was an
    AttributeError traceback of every data command and build, for good; so would be a record whose hash
    is no sha256. Such a cache proves nothing: the data is hashed again (and its facts remembered anew)."""
    from mlbuild.data import statcache

    root, _lock = project(tmp_path / "p")
    data = root / "data" / "iris.csv"
    facts = statcache.lookup(root / ".mlbuild", "raw", data)[1]
    facts["taken"] += statcache.RACY_NS + 1
    statcache.remember(root / ".mlbuild", "raw", data, facts, "0" * 64)
    assert statcache.lookup(root / ".mlbuild", "raw", data)[0] == "0" * 64
    cache = root / ".mlbuild" / "stat-raw.json"
    if garbled == "{sha256}":   # a record whose hash is no hash
        garbled = json.dumps({**json.loads(cache.read_text()), "sha256": 5})
    cache.write_text(garbled)
    assert statcache.lookup(root / ".mlbuild", "raw", data)[0] is None


def test_a_file_written_while_it_is_hashed_is_said_as_such(tmp_path: Path) -> None:
    """A training job still appending to a dataset's file: `data status` and every build stopped
    in a ValueError traceback ("changed size while it was read")."""
    import threading

    from mlbuild.data.datasets import status

    root, lock = project(tmp_path / "p")
    (root / "mlbuild.lock").write_text(json.dumps({"version": 1, "datasets": lock["datasets"],
                                                   "interpreter": {"snapshot": {}}}))
    data = root / "data" / "iris.csv"
    data.write_bytes(b"0" * (16 << 20))
    stop = threading.Event()

    def job() -> None:   # appends until stopped (at most 256 MiB)
        with open(data, "ab") as f:
            for _ in range(4096):
                if stop.wait(0.001):
                    return
                f.write(b"1" * (64 << 10))
                f.flush()

    writer = threading.Thread(target=job)
    writer.start()
    try:
        for _ in range(20):
            changed_datasets(load_project(root), lock)   # no traceback: the build goes on
            row = next(r for r in status(load_project(root)) if r.name == "raw")
            if row.state == "unreadable":
                break
    finally:
        stop.set()
        writer.join()
    assert row.state == "unreadable"
    assert row.detail.startswith(f"{data} changed size while it was read (") and row.detail.endswith(
        "bytes): something is writing to it; run the command again once nothing does (reading dataset 'raw')")
