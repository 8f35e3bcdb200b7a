"""Copying file contents at ``cp`` speed while a second thread hashes the bytes copied
(NARs for push and restore, dataset files for ``data add``).

``cp`` copies a big file with one ``copy_file_range`` (in the kernel, no trip through user
space) after ``posix_fadvise(SEQUENTIAL)``. Push and restore must also hash every byte, so the
hashing runs beside the copy: :func:`kernel_copy` copies in slices and reports each finished
slice; a :class:`HashPipe` thread hashes, in NAR order, the framing bytes it is given and each
slice from the page cache, so the disk is read once: a restore and ``data add`` hash the slice
*read back from where it was written* (what they check is what landed), a push hashes the store
path's slice the copy just read (what it checks is the local store; see
:func:`mlbuild.store.upload._write_plain`). Slices are hashed through ``mmap`` (no copy into
user space); small ones through one reused buffer. Measured here (2 GiB, cold): the copy takes
about what ``cp`` takes; sha256 (about 0.6 s/GiB with SHA-NI) is slower than the copy, BLAKE3
(about 0.22 s/GiB) is not.
A push computes both (sha256 is Nix's NAR hash, BLAKE3 a second, signed hash), on two threads
over the same mapped bytes; a restore checks the signed BLAKE3 hash when the narinfo has one, so
it runs at copy speed.

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
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from .errors import StoreCorruptError

__all__ = ["HashPipe", "kernel_copy", "new_hash", "SLICE"]

SLICE = 32 << 20            # copied, then handed to the hasher, per step
_MMAP_MIN = 1 << 20         # smaller regions are pread, in pieces of _BUFFER, into one buffer
_BUFFER = 1 << 20
_VIEW = 16 << 20            # bytes per hash update (the GIL is released inside)
_FALLBACK = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ETXTBSY)


def new_hash(algorithm: str) -> Any:
    """A hashlib-style object: ``sha256`` (hashlib) or ``blake3`` (the blake3 package, the BLAKE3
    team's Rust implementation: ~0.22 s/GiB on one core here against sha256's ~0.6 s/GiB)."""
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "blake3":
        from blake3 import blake3

        return blake3()
    raise ValueError(f"unknown hash algorithm {algorithm!r} (sha256 or blake3)")


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
    """A thread that hashes, in order, framing bytes and ranges of files, with each of
    ``algorithms`` (sha256: Nix's NAR hash; blake3: the signed fast-restore hash), and the size.
    With two algorithms, the second hashes each piece on a helper thread while the first hashes
    the same mapped bytes (the pages are faulted in once, the hashes run on two cores).

    Feed it with :meth:`framing` and :meth:`region`; :meth:`finish` waits for the hash (raising
    the thread's error, if any). ``keep_framing`` keeps a copy of the framing bytes (restore
    compares them with the tree it wrote). A range is hashed from the file as it is *now*:
    hand it over only once its bytes are written. Use as a context manager so that the thread
    always ends.
    """

    def __init__(self, keep_framing: bool = False, algorithms: tuple[str, ...] = ("sha256",),
                 into: Any = None) -> None:
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.algorithms = algorithms
        # ``into``: continue a running hash (of the first algorithm) instead of starting one.
        self._hs: list[Any] = [into if i == 0 and into is not None else new_hash(a) for i, a in enumerate(algorithms)]
        self._helper = ThreadPoolExecutor(1, thread_name_prefix="mlbuild-nar-hash2") if len(algorithms) > 1 else None
        self.digests: dict[str, bytes] = {}
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
        """The digest (by the first algorithm) of everything fed, and its size; ``digests`` then
        holds every algorithm's."""
        self._stop()
        if self._error is not None:
            raise self._error
        self.digests = {a: h.digest() for a, h in zip(self.algorithms, self._hs)}
        return self.digests[self.algorithms[0]], self.size

    def _update(self, data: Any) -> None:
        if self._helper is None:
            self._hs[0].update(data)
            return
        others = [self._helper.submit(h.update, data) for h in self._hs[1:]]
        self._hs[0].update(data)
        for f in others:
            f.result()

    def _stop(self) -> None:
        if not self._done:
            self._done = True
            self._items.put(None)
            self._thread.join()
            if self._helper is not None:
                self._helper.shutdown()

    def __enter__(self) -> HashPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _run(self) -> None:
        current: tuple[str, int] | None = None   # the file being hashed, open (one at a time)
        buf = bytearray(_BUFFER)
        try:
            while (item := self._items.get()) is not None:
                if isinstance(item, bytes):
                    self._update(item)
                    self.size += len(item)
                    if self.framing_bytes is not None:
                        self.framing_bytes += item
                    continue
                path, offset, length = item
                if current is None or current[0] != path:
                    if current is not None:
                        os.close(current[1])
                        current = None
                    current = (path, os.open(path, os.O_RDONLY))
                self._hash_range(current[1], path, offset, length, buf)
        except BaseException as e:   # raised again by finish() in the caller's thread
            self._error = e
            while self._items.get() is not None:   # drain until the caller stops us
                pass
        finally:
            if current is not None:
                os.close(current[1])

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
                self._update(view[:n])
                done += n
        else:
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            with mmap.mmap(fd, length + offset - start, prot=mmap.PROT_READ, offset=start) as m:
                m.madvise(mmap.MADV_SEQUENTIAL)
                with memoryview(m) as mv:
                    for i in range(offset - start, offset - start + length, _VIEW):
                        self._update(mv[i:min(i + _VIEW, offset - start + length)])
        self.size += length
