"""Datasets are named by content hash in provenance and reports, never by store path."""

from __future__ import annotations

import os
from pathlib import Path

from mlbuild.runtime.hashing import dataset_hash, find_store_paths, sha256_file, tree_digest, tree_hashes

SPLIT = "/nix/store/s0arcmh7v77r0xlf0k5zzy9s1px46lsk-u1-split"
RAW = "/nix/store/y8nr84qrf0gx786gmp4igm75zg1i3vx2-u1-raw"


def test_fixed_output_datasets_keep_their_locked_hash(tmp_path: Path) -> None:
    # Nothing is read: the hash is the lock's (or the url's), which Nix has checked.
    entry = {"path": str(tmp_path / "absent"), "sha256": "ab" * 32, "of": "nar"}
    assert dataset_hash(entry) == {"sha256": "ab" * 32, "of": "nar"}


def test_derived_datasets_get_the_digest_of_their_files(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "train.csv").write_text("1,2\n")
    (tmp_path / "d" / "sub" / "test.csv").write_text("3,4\n")
    got = dataset_hash({"path": str(tmp_path / "d"), "sha256": None, "of": "files"})
    assert got == {"sha256": tree_digest(tree_hashes(tmp_path / "d")), "of": "files"}
    (tmp_path / "d" / "train.csv").write_text("1,5\n")
    assert dataset_hash({"path": str(tmp_path / "d"), "sha256": None, "of": "files"})["sha256"] != got["sha256"]
    (tmp_path / "one.csv").write_text("x\n")
    assert dataset_hash({"path": str(tmp_path / "one.csv"), "sha256": None, "of": "files"}) == {
        "sha256": sha256_file(tmp_path / "one.csv"), "of": "file"}


def test_find_store_paths_sees_what_nix_would_call_a_reference(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "deep").mkdir(parents=True)
    (out / "clean.json").write_text('{"datasets": {"u1-split": {"sha256": "00", "of": "files"}}}')
    # the hash part alone is a reference, wherever it sits: across a read boundary too
    (out / "deep" / "notes.bin").write_bytes(b"x" * 10 + Path(SPLIT).name[:32].encode() + b"y")
    os.symlink(RAW + "/data.csv", out / "link")
    paths = {"u1-split": SPLIT, "u1-raw": RAW, "other": "/nix/store/" + "a" * 32 + "-other"}
    assert sorted(find_store_paths(out, paths, chunk=16)) == [("u1-raw", "link"), ("u1-split", "deep/notes.bin")]
    assert find_store_paths(out, {"other": paths["other"]}) == []


def test_validation_reuses_the_trainings_record_of_its_dataset(tmp_path: Path) -> None:
    from mlbuild.runtime.validate import _dataset_hash

    (tmp_path / "held-out").mkdir()
    (tmp_path / "held-out" / "test.csv").write_text("1,0\n")
    spec = {"dataset_name": "split", "dataset": {"path": str(tmp_path / "held-out"), "sha256": None, "of": "files"}}
    recorded = {"sha256": "cd" * 32, "of": "files"}
    # trained on it: the training's record, the split not read again
    assert _dataset_hash({"datasets": {"split": recorded}}, spec) == recorded
    # held-out data the model never saw, or a manifest of an older layout (paths): computed
    computed = {"sha256": tree_digest(tree_hashes(tmp_path / "held-out")), "of": "files"}
    assert _dataset_hash({"datasets": {"other": recorded}}, spec) == computed
    assert _dataset_hash({"datasets": {"split": {"path": "/nix/store/x", "sha256": None}}}, spec) == computed
