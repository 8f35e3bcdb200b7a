"""Copying NAR contents at ``cp`` speed while a second thread hashes the bytes that landed.

``cp`` copies a big file with one ``copy_file_range`` (in the kernel, no trip through user
space) after ``posix_fadvise(SEQUENTIAL)``. Push and restore must also hash every byte (sha256
of the NAR), and sha256 runs at about the speed the kernel copies, so the two run side by side
on two cores: :func:`kernel_copy` copies in slices and reports each finished slice; a
:class:`HashPipe` thread hashes, in NAR order, the framing bytes it is given and each slice
*read back from where it was written* (the destination's page cache, so the disk is read once).
Slices are hashed through ``mmap`` (no copy into user space); small ones through one reused
buffer. Measured here (2 GiB, cold): the copy takes about what ``cp`` takes, and sha256 of the
landed bytes (about 0.67 s/GiB from the page cache with SHA-NI) is what bounds a restore.

Files that cannot be copied in the kernel (another file system, no ``copy_file_range``) are
copied with read/write. Starting the write-back of each slice early (``sync_file_range``) was
measured here and made a durable push slower: the disk then alternates reads and writes.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import queue
import threading
from typing import Any, Callable

from ..errors import StoreCorruptError

__all__ = ["HashPipe", "kernel_copy", "SLICE"]

SLICE = 32 << 20            # copied, then handed to the hasher, per step
_MMAP_MIN = 1 << 20         # smaller regions are pread, in pieces of _BUFFER, into one buffer
_BUFFER = 1 << 20
_VIEW = 16 << 20            # bytes per hash update (the GIL is released inside)
_FALLBACK = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ETXTBSY)


def kernel_copy(src: int, dst: int, size: int, *, src_offset: int = 0,
                on_slice: Callable[[int, int], None] | None = None, what: str = "the file") -> None:
    """Copy ``size`` bytes of ``src`` from ``src_offset`` to ``dst``'s position (which advances).

    After each slice, ``on_slice(dst_offset, length)`` is called with the destination range just
    written. ``src``'s position is not used. Raises StoreCorruptError when ``src`` ends early.
    """
    try:
        os.posix_fadvise(src, src_offset, size, os.POSIX_FADV_SEQUENTIAL)
    except OSError:
        pass
    pos = os.lseek(dst, 0, os.SEEK_CUR)
    done = 0
    kernel = True
    while done < size:
        want = min(SLICE, size - done)
        n = 0
        if kernel:
            try:
                n = os.copy_file_range(src, dst, want, src_offset + done)
            except OSError as e:
                if e.errno not in _FALLBACK:
                    raise
                kernel = False
        if not kernel or n == 0:
            data = os.pread(src, want, src_offset + done)
            if not data:
                raise StoreCorruptError(f"{what} ends {size - done} bytes early")
            view = memoryview(data)
            while view:
                view = view[os.write(dst, view):]
            n = len(data)
        if on_slice is not None:
            on_slice(pos + done, n)
        done += n


class HashPipe:
    """A thread that hashes, in order, framing bytes and ranges of files (sha256 and size).

    Feed it with :meth:`framing` and :meth:`region`; :meth:`finish` waits for the hash (raising
    the thread's error, if any). ``keep_framing`` keeps a copy of the framing bytes (restore
    compares them with the tree it wrote). A range is hashed from the file as it is *now*:
    hand it over only once its bytes are written. Use as a context manager so that the thread
    always ends.
    """

    def __init__(self, keep_framing: bool = False) -> None:
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._h = hashlib.sha256()
        self.size = 0
        self.framing_bytes: bytearray | None = bytearray() if keep_framing else None
        self._error: BaseException | None = None
        self._done = False
        self._thread = threading.Thread(target=self._run, name="mlbuild-nar-hash", daemon=True)
        self._thread.start()

    def framing(self, data: bytes) -> None:
        if data:
            self._items.put(data)

    def region(self, path: str, offset: int, length: int) -> None:
        if length:
            self._items.put((path, offset, length))

    def finish(self) -> tuple[bytes, int]:
        """The sha256 of everything fed, and its size."""
        self._stop()
        if self._error is not None:
            raise self._error
        return self._h.digest(), self.size

    def _stop(self) -> None:
        if not self._done:
            self._done = True
            self._items.put(None)
            self._thread.join()

    def __enter__(self) -> HashPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _run(self) -> None:
        fds: dict[str, int] = {}
        buf = bytearray(_BUFFER)
        try:
            while (item := self._items.get()) is not None:
                if isinstance(item, bytes):
                    self._h.update(item)
                    self.size += len(item)
                    if self.framing_bytes is not None:
                        self.framing_bytes += item
                    continue
                path, offset, length = item
                if path not in fds:
                    fds[path] = os.open(path, os.O_RDONLY)
                self._hash_range(fds[path], path, offset, length, buf)
        except BaseException as e:   # raised again by finish() in the caller's thread
            self._error = e
            while self._items.get() is not None:   # drain until the caller stops us
                pass
        finally:
            for fd in fds.values():
                os.close(fd)

    def _hash_range(self, fd: int, path: str, offset: int, length: int, buf: bytearray) -> None:
        if os.fstat(fd).st_size < offset + length:   # mmap past the end would kill us (SIGBUS)
            raise StoreCorruptError(f"{path} is shorter than what was written to it")
        if length < _MMAP_MIN:
            view = memoryview(buf)
            done = 0
            while done < length:
                n = os.preadv(fd, [view[:min(len(buf), length - done)]], offset + done)
                if n <= 0:
                    raise StoreCorruptError(f"{path} is shorter than what was written to it")
                self._h.update(view[:n])
                done += n
        else:
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            with mmap.mmap(fd, length + offset - start, prot=mmap.PROT_READ, offset=start) as m:
                m.madvise(mmap.MADV_SEQUENTIAL)
                with memoryview(m) as mv:
                    for i in range(offset - start, offset - start + length, _VIEW):
                        self._h.update(mv[i:min(i + _VIEW, offset - start + length)])
        self.size += length
