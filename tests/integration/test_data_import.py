"""The fast import path with real Nix: a big file (copied in the kernel, hashed as it lands) and a
folder of many small files (read ahead), registered valid with the hash Nix computes itself."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mlbuild.data import importer
from mlbuild.nar import nar_sha256

pytestmark = pytest.mark.integration


def test_fast_import_of_big_and_many_files_is_what_nix_would_store(tmp_path: Path) -> None:
    if not importer.fast_path_available():
        pytest.skip("the local store is not writable here (the fast path is for root without a daemon)")
    src = tmp_path / "data"
    (src / "many").mkdir(parents=True)
    (src / "weights.bin").write_bytes(os.urandom(importer._PARALLEL + 12345))   # the big-file path
    for i in range(importer._READAHEAD_MIN + 20):                                # the read-ahead path
        (src / "many" / f"f{i:03d}").write_bytes(os.urandom(100 + i))
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o755)
    os.symlink("weights.bin", src / "link")

    result = importer.import_path(src, "import-test")
    assert result.sha256 == nar_sha256(src)
    assert result.files == importer._READAHEAD_MIN + 22
    verify = subprocess.run(["nix-store", "--verify-path", result.path], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr          # Nix rehashes the stored tree: same hash
    stored = Path(result.path)
    assert (stored / "weights.bin").read_bytes() == (src / "weights.bin").read_bytes()
    assert os.access(stored / "run.sh", os.X_OK) and os.readlink(stored / "link") == "weights.bin"
    assert importer.import_path(src, "import-test").path == result.path    # again: already there


def test_a_pushed_dataset_is_content_addressed_for_nix(tmp_path: Path) -> None:
    """`nix-store --register-validity` records no content address, so the store's narinfo had none:
    plain `nix copy` from the shared store refused the dataset ("lacks a valid signature") on a
    machine that does not trust the store's key. Its narinfo now says what it is (fixed:r:sha256),
    which Nix checks against the path and accepts unsigned."""
    from mlbuild import _nix
    from mlbuild.store import push
    from mlbuild.store.layout import Layout
    from mlbuild.store.narinfo import NarInfo
    from tests.integration.test_store_machines import make_store

    src = tmp_path / "data.csv"
    src.write_text("".join(f"{i},{i * i}\n" for i in range(1000)) + os.urandom(8).hex())
    path = importer.import_path(src, "ca-test").path
    cfg = make_store(tmp_path)
    push(cfg, [path])
    info = NarInfo.parse(Layout(cfg.root).narinfo(path).read_text())
    assert info.ca == f"fixed:r:{info.nar_hash}"
    other = tmp_path / "other-machine"
    proc = subprocess.run(["nix", *_nix.common_options(), "copy", "--from", f"file://{cfg.root}",
                           "--to", str(other), "--option", "require-sigs", "true", path],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = _nix.path_info_in([path], store=str(other))[path]
    assert got.get("ca", "").startswith("fixed:r:sha256:")


def test_what_a_killed_import_left_in_staging_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `data add` killed mid-copy (kill -9, a power cut) left its staging copy of the dataset
    beside the store for good: nothing ever removed it (a big dataset: gigabytes each time). The
    next import removes those no live import holds; a live one's is kept."""
    import fcntl

    if not importer.fast_path_available():
        pytest.skip("the local store is not writable here (the fast path is for root without a daemon)")
    staging = tmp_path / "staging"
    monkeypatch.setattr(importer, "STAGING", staging)
    monkeypatch.setattr(importer, "STAGE_GRACE_S", 0.0, raising=False)   # ctime cannot be set back
    (staging / "dead-999999999" / "data" / "sub").mkdir(parents=True)          # killed mid-copy
    (staging / "dead-999999999" / "data" / "sub" / "rows.csv").write_text("1,2\n")
    (staging / "dead-999999999" / "data" / "sub").chmod(0o555)
    (staging / "legacy-999999998" / "x").mkdir(parents=True)                   # an older mlbuild's (no holder)
    (staging / "live-3").mkdir()                                       # an import running now
    (staging / f"older-{os.getpid()}").mkdir()                         # an older mlbuild's, running (no lock)
    live = os.open(staging / "live-3", os.O_RDONLY)
    fcntl.flock(live, fcntl.LOCK_EX)
    try:
        src = tmp_path / "d.csv"
        src.write_text(f"{tmp_path}\n")
        result = importer.import_path(src, "sweep-test")
        assert Path(result.path).read_text() == f"{tmp_path}\n"
        assert sorted(p.name for p in staging.iterdir()) == ["live-3", f"older-{os.getpid()}"]
    finally:
        os.close(live)


def test_two_imports_of_the_same_data_at_once_share_one_copy(tmp_path: Path) -> None:
    """`data add` of the same data in two clones at once: the second found the first's copy renamed
    into the store but not yet registered, took it for a leftover and deleted it, or failed to
    rename its own over it (a traceback, OSError: Directory not empty). It waits for Nix's lock on
    the path now, which the first holds from its rename to its registration."""
    import sys
    import time

    from mlbuild import _nix
    from mlbuild.storepath import PathLock
    from mlbuild.storepath import fixed_output_path
    from tests.conftest import nar_digest

    if not importer.fast_path_available():
        pytest.skip("the local store is not writable here (the fast path is for root without a daemon)")
    src = tmp_path / "data"
    src.mkdir()
    (src / "rows.csv").write_text(f"{os.urandom(8).hex()}\n")
    sha = nar_sha256(src)
    target = fixed_output_path(sha, "import-race", recursive=True)
    lock = PathLock(target)   # the first import, between its rename and its registration
    try:
        subprocess.run(["cp", "-a", str(src), target], check=True)
        ino = os.stat(Path(target) / "rows.csv").st_ino
        second = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                                   "from mlbuild.data import importer; "
                                   "print(importer.import_path(Path(sys.argv[1]), 'import-race').existed)", str(src)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert second.poll() is None, f"the second import did not wait: {second.communicate()}"
        assert os.stat(Path(target) / "rows.csv").st_ino == ino   # the first one's copy, untouched
        digest, size = nar_digest(target)
        _nix.register_valid(target, digest.hex(), size)
    finally:
        lock.release()
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert out.strip() == "True" and "waiting for the lock on" in err   # it took the first one's copy
    assert os.stat(Path(target) / "rows.csv").st_ino == ino
    verify = subprocess.run(["nix-store", "--verify-path", target], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
