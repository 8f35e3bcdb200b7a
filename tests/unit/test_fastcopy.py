"""The copy-while-hashing primitives of push and restore: kernel_copy and HashPipe."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from mlbuild.errors import StoreCorruptError
from mlbuild import fastcopy
from mlbuild.fastcopy import HashPipe, kernel_copy


def copy(src: Path, dst: Path, size: int, offset: int = 0, prefix: bytes = b"") -> list[tuple[int, int]]:
    slices: list[tuple[int, int]] = []
    fi = os.open(src, os.O_RDONLY)
    fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fo, prefix)
        kernel_copy(fi, fo, size, src_offset=offset, on_slice=lambda o, n: slices.append((o, n)))
    finally:
        os.close(fi)
        os.close(fo)
    return slices


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastcopy, "SLICE", 1 << 20)


def test_kernel_copy_slices_from_an_offset(tmp_path: Path, small_slices: None) -> None:
    data = os.urandom((3 << 20) + 12345)
    (tmp_path / "src").write_bytes(b"x" * 100 + data + b"tail")
    slices = copy(tmp_path / "src", tmp_path / "dst", len(data), offset=100, prefix=b"head")
    assert (tmp_path / "dst").read_bytes() == b"head" + data
    assert slices == [(4, 1 << 20), (4 + (1 << 20), 1 << 20), (4 + (2 << 20), 1 << 20), (4 + (3 << 20), 12345)]


def test_kernel_copy_falls_back_to_read_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              small_slices: None) -> None:
    def refuse(*args: Any) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    data = os.urandom((2 << 20) + 7)
    (tmp_path / "src").write_bytes(data)
    assert len(copy(tmp_path / "src", tmp_path / "dst", len(data))) == 3
    assert (tmp_path / "dst").read_bytes() == data


def test_kernel_copy_of_a_short_source_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"only this")
    with pytest.raises(StoreCorruptError, match="ends 91 bytes early"):
        copy(tmp_path / "src", tmp_path / "dst", 100)


def test_hash_pipe_hashes_framing_and_regions_in_order(tmp_path: Path) -> None:
    big = os.urandom((3 << 20) + 5)       # ranges of 1 MiB and more: through mmap
    small = os.urandom(1000)               # smaller: through the buffer
    (tmp_path / "big").write_bytes(big)
    (tmp_path / "small").write_bytes(small)
    with HashPipe(keep_framing=True) as pipe:
        pipe.framing(b"head")
        pipe.region(str(tmp_path / "big"), 0, 100)
        pipe.region(str(tmp_path / "big"), 100, 2 << 20)          # not at a page boundary
        pipe.region(str(tmp_path / "big"), 100 + (2 << 20), len(big) - (2 << 20) - 103)
        pipe.framing(b"")
        pipe.region(str(tmp_path / "small"), 10, 990)
        pipe.region(str(tmp_path / "big"), len(big) - 3, 3)
        pipe.framing(b"end")
        digest, size = pipe.finish()
    expected = b"head" + big[:-3] + small[10:] + big[-3:] + b"end"
    assert digest == hashlib.sha256(expected).digest() and size == len(expected)
    assert pipe.framing_bytes == bytearray(b"headend")


def test_hash_pipe_reports_a_file_shorter_than_written(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    pipe = HashPipe()
    pipe.region(str(tmp_path / "f"), 0, 4 << 20)   # would be mmapped past the end: refused
    pipe.framing(b"more items after the error are drained")
    with pytest.raises(StoreCorruptError, match="shorter than what was written"):
        pipe.finish()


def test_hash_pipe_missing_file_and_early_exit(tmp_path: Path) -> None:
    pipe = HashPipe()
    pipe.region(str(tmp_path / "absent"), 0, 10)
    with pytest.raises(FileNotFoundError):
        pipe.finish()
    with HashPipe() as other:   # leaving the block without finish() still ends the thread
        other.framing(b"x")
    assert not other._thread.is_alive()
