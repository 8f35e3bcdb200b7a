"""Importing a file or folder into the Nix store as a recursive-sha256 fixed-output path.

Fast path (a writable local store: root without a daemon, the usual single-machine set-up):
read every byte once, writing it to a staging folder beside the store while the NAR hash is
computed in the same pass; rename the staging folder to the predicted store path (one rename on
the same file system) and register it with ``nix-store --register-validity --hash-given``.
Memory stays at one 1 MiB buffer whatever the data size. Otherwise: hash, then
``nix-store --add-fixed --recursive`` (streams; ~25 MB RSS), on a hard-link tree named as the
dataset.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .. import _nix
from ..nar import CHUNK, NotStorableError, _str, nar_sha256
from ..errors import DataError, StoreCorruptError
from ..fastcopy import HashPipe, kernel_copy
from ..storepath import PathLock, fixed_output_path

__all__ = ["Imported", "import_path", "fast_path_available", "STAGING", "check_link", "check_links", "not_storable",
           "remove_tree"]

STAGING = Path(os.environ.get("MLBUILD_STAGING", "/nix/var/mlbuild/staging"))


@dataclass(frozen=True)
class Imported:
    path: str
    sha256: str
    nar_size: int
    files: int
    size: int
    existed: bool = False   # the store held this version already (hashed, nothing copied)


class _Copier:
    """Walks a tree in NAR order, writing the NAR to a hash and the files to ``dest``."""

    def __init__(self, root: str) -> None:
        self.root = root     # the dataset's top folder (links must stay inside it)
        self.h = hashlib.sha256()
        self.nar_size = 0
        self.files = 0
        self.size = 0
        self.buf = bytearray(CHUNK)
        self.stopped = False   # set when the import ends: pending readahead stops

    def w(self, data: bytes) -> None:
        self.h.update(data)
        self.nar_size += len(data)

    def node(self, src: str, dst: str) -> None:
        st = os.lstat(src)
        self.w(_str(b"("))
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(src)
            check_link(self.root, src, target)
            self.w(_str(b"type") + _str(b"symlink") + _str(b"target") + _str(os.fsencode(target)))
            os.symlink(target, dst)
        elif stat.S_ISDIR(st.st_mode):
            self.w(_str(b"type") + _str(b"directory"))
            os.mkdir(dst, 0o755)
            names = sorted(os.listdir(src), key=os.fsencode)
            if len(names) > _READAHEAD_MIN and not self.stopped:
                _readahead_pool().submit(_readahead, src, names, self)
            for name in names:
                self.w(_str(b"entry") + _str(b"(") + _str(b"name") + _str(os.fsencode(name)) + _str(b"node"))
                self.node(os.path.join(src, name), os.path.join(dst, name))
                self.w(_str(b")"))
            os.chmod(dst, 0o555)
            os.utime(dst, (1, 1), follow_symlinks=False)
        elif stat.S_ISREG(st.st_mode):
            executable = bool(st.st_mode & 0o100)
            self.w(_str(b"type") + _str(b"regular"))
            if executable:
                self.w(_str(b"executable") + _str(b""))
            self.w(_str(b"contents") + st.st_size.to_bytes(8, "little"))
            self._file(src, dst, st.st_size, 0o555 if executable else 0o444)
        else:
            raise not_storable(src)
        self.w(_str(b")"))

    def _file(self, src: str, dst: str, size: int, mode: int) -> None:
        fin = os.open(src, os.O_RDONLY)
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            if size >= _PARALLEL:
                # Big file: the kernel copies (copy_file_range) in slices while a thread hashes
                # each slice that landed in the destination, through mmap of its page cache: the
                # two overlap on two cores, and what is hashed is exactly what is in the store,
                # even if the source changes meanwhile.
                with HashPipe(into=self.h) as pipe:
                    try:
                        kernel_copy(fin, fout, size, what=src, on_slice=lambda off, n: pipe.region(dst, off, n))
                    except StoreCorruptError:
                        raise DataError(f"{src} changed size while it was copied (it had {size} bytes); "
                                        "run data add again once nothing writes to it") from None
                    _, hashed = pipe.finish()
                if hashed != size:
                    raise DataError(f"{src}: hashed {hashed} of its {size} bytes (it changed while it was copied); "
                                    "run data add again once nothing writes to it")
            else:
                self._copy_and_hash(fin, fout, size, src)
            pad = (-size) % 8
            self.h.update(b"\0" * pad)
            self.nar_size += size + pad
            os.utime(fout, (1, 1))
        finally:
            os.close(fin)
            os.close(fout)
        self.files += 1
        self.size += size

    def _copy_and_hash(self, fin: int, fout: int, size: int, src: str) -> None:
        view = memoryview(self.buf)
        done = 0
        while True:
            n = os.readv(fin, [self.buf])
            if not n:
                break
            chunk = view[:n]
            self.h.update(chunk)
            written = 0
            while written < n:
                written += os.write(fout, chunk[written:])
            done += n
        if done != size:
            raise DataError(f"{src} changed size while it was read ({size} -> {done} bytes); "
                            "run data add again once nothing writes to it")

_PARALLEL = 8 << 20
_READAHEAD_MIN = 16        # folders with more entries than this are read ahead
_AHEAD_FILES = 1024
_AHEAD_SIZE = 256 << 10
_READAHEAD: ThreadPoolExecutor | None = None


def _readahead_pool() -> ThreadPoolExecutor:
    global _READAHEAD
    if _READAHEAD is None:
        _READAHEAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlbuild-readahead")
    return _READAHEAD


def _readahead(folder: str, names: list[str], copier: _Copier) -> None:
    """Ask the kernel to start reading a folder's small files, in the order the copier will want
    them, so that on a cold cache the disk works while the copier hashes and writes (``cp`` reads
    each small file only when it gets to it). At most ``_AHEAD_FILES`` files of at most
    ``_AHEAD_SIZE`` bytes ahead of the copier, so what is read ahead is still cached when it is
    copied. Best effort: errors are the copier's to report."""
    start = copier.files
    for i, name in enumerate(names):
        while i - (copier.files - start) > _AHEAD_FILES and not copier.stopped:
            time.sleep(0.0005)
        if copier.stopped:
            return
        try:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size <= _AHEAD_SIZE:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def not_storable(path: str | Path) -> DataError:
    """The error for a pipe, socket or device in a dataset (Nix stores files, folders and links)."""
    return DataError(f"{path} is not a file, folder or symlink (a pipe, socket or device); it cannot go into a "
                     "dataset: move it out of the folder, or add a folder without it")


def check_link(root: str, link: str, target: str) -> None:
    """Refuse a symlink that would dangle in the store: one to an absolute path, or one leading
    out of the dataset's folder ``root`` (checked on the link's text, as the store keeps it)."""
    resolved = os.path.normpath(os.path.join(os.path.dirname(link), target))
    inside = resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep)
    if os.path.isabs(target):
        where = "an absolute path"
        fix = "make it relative to its folder" if inside else f"copy the file into {root}"
    elif inside:
        return
    else:
        where, fix = f"outside {root}", f"copy the file into {root}, or add a folder that holds both"
    raise DataError(f"{link} is a symlink to {target}, {where}: in the Nix store it would point at nothing; {fix}")


def fast_path_available() -> bool:
    store = Path(_nix.store_dir())
    if not _nix.store_is_local() or not os.access(store, os.W_OK):
        return False
    try:
        STAGING.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.stat(STAGING).st_dev == os.stat(store).st_dev


def remove_tree(path: str) -> None:
    """Delete a read-only tree (store permissions) or file."""
    if os.path.isdir(path) and not os.path.islink(path):
        for dirpath, _dirs, _files in os.walk(path):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(path)
    else:
        os.unlink(path)


# A staging folder this old whose lock no one holds was left by an import that was killed (kill -9,
# a power cut): removed by the next import. Younger ones are spared: one just made may not be locked yet.
STAGE_GRACE_S = 60.0


def _sweep_staging() -> None:
    """Remove what killed imports left in STAGING (each a full copy of a dataset, or part of one,
    kept for good before: nothing else ever removes them). A live import holds an flock on its
    folder (the kernel drops it when the process dies, in whatever PID namespace it ran)."""
    now = time.time()
    for entry in os.scandir(STAGING):
        try:
            if now - entry.stat(follow_symlinks=False).st_ctime < STAGE_GRACE_S:
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _pid_alive(entry.name):   # an older mlbuild's import, which takes no lock, may still run
                raise BlockingIOError
        except OSError:   # a live import's
            os.close(fd)
            continue
        try:
            remove_tree(entry.path)
        except OSError:
            pass
        finally:
            os.close(fd)


def _pid_alive(stage_name: str) -> bool:
    """Whether the process named in ``<uuid>-<pid>`` runs (in this PID namespace)."""
    pid = stage_name.rpartition("-")[2]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _fast_import(src: Path, name: str) -> Imported:
    _sweep_staging()
    holder = STAGING / f"{uuid.uuid4().hex}-{os.getpid()}"
    os.mkdir(holder, 0o700)
    held = os.open(holder, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(held, fcntl.LOCK_EX)   # ours while we live: _sweep_staging leaves it
    stage = holder / "data"
    c = _Copier(str(src))
    try:
        c.w(_str(b"nix-archive-1"))
        c.node(str(src), str(stage))
        sha = c.h.hexdigest()
        target = fixed_output_path(sha, name, recursive=True)
        # Under Nix's own lock on the path, as Nix writes it: another import of the same data (a
        # second clone's `data add`) renamed its copy into place and registered it meanwhile, and
        # this one took that copy for a leftover and deleted it, or could not rename (a traceback).
        lock = PathLock(target)
        try:
            # A path not on disk is not valid (no Nix call needed); one on disk may be valid already.
            existed = os.path.lexists(target) and not _nix.invalid_paths([target])
            if existed:
                remove_tree(str(stage))
            else:
                if os.path.lexists(target):  # an invalid leftover of an interrupted import
                    remove_tree(target)
                os.rename(stage, target)
                _nix.register_valid(target, sha, c.nar_size)
        finally:
            lock.release()
    except BaseException:
        if os.path.lexists(stage):
            remove_tree(str(stage))
        raise
    finally:
        c.stopped = True
        with contextlib.suppress(OSError):
            os.rmdir(holder)
        os.close(held)
    return Imported(target, sha, c.nar_size, c.files, c.size, existed)


def _count(src: Path) -> tuple[int, int]:
    """Files and bytes under ``src``; its links checked as the fast path checks them."""
    if not src.is_dir():
        return 1, src.stat().st_size
    files = size = 0
    for dirpath, dirs, names in os.walk(src):
        for n in names + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                check_link(str(src), p, os.readlink(p))
            else:
                files += 1
                size += os.path.getsize(p)
    return files, size


def check_links(src: Path) -> None:
    """Refuse (DataError, naming it and the fix) a link under ``src`` that `data add` refuses."""
    _count(src)


def _copy_to_temp(src: str, dst: str) -> None:
    """copy2 for the slow path's copy into the temp folder. A write that fails there (the temp
    folder full) is said as the temp folder's: copytree gathered it into a shutil.Error with no
    errno (a traceback), and copy2 names the source file in it, which blamed the dataset's file."""
    try:
        shutil.copy2(src, dst)
    except OSError as e:
        raise DataError(f"{dst}: {e.strerror} (copying {src} into the temp folder for nix-store --add-fixed); "
                        "free space there or set TMPDIR to a folder with room, then run data add again") from None


def _slow_import(src: Path, name: str) -> Imported:
    files, size = _count(src)
    try:
        sha = nar_sha256(str(src))
    except NotStorableError as e:   # the same message as the fast path's
        raise not_storable(e.path) from None
    target = fixed_output_path(sha, name, recursive=True)
    existed = not _nix.invalid_paths([target])
    if not existed:
        if src.name == name:
            # Named as the dataset already (data/raw for raw): no hard-link tree, whose links and
            # their removal changed each file's ctime, so the stat cache missed and the next
            # command (the first build after data add) read the whole dataset again.
            got = _nix.add_fixed(src, recursive=True)
        else:
            with tempfile.TemporaryDirectory(prefix="mlbuild-import-") as tmp:
                named = Path(tmp) / name
                try:  # a hard-link tree with the store name, no copy on the same file system
                    shutil.copytree(src, named, symlinks=True, copy_function=os.link) if src.is_dir() \
                        else os.link(src, named)
                except OSError:   # another file system than the temp folder's (a dataset on /dev/shm): copy
                    if os.path.lexists(named):   # the links made before the first that failed
                        remove_tree(str(named))
                    shutil.copytree(src, named, symlinks=True, copy_function=_copy_to_temp) if src.is_dir() \
                        else _copy_to_temp(str(src), str(named))
                got = _nix.add_fixed(named, recursive=True)
        if got != target:   # Nix hashed other bytes than were hashed here a moment before
            raise DataError(f"{src} changed while it was imported (Nix stored it at {got}, not {target}); "
                            "run data add again once nothing writes to it")
    return Imported(target, sha, 0, files, size, existed)


def import_path(src: Path, name: str) -> Imported:
    """Put ``src`` into the store as ``<hash>-<name>``; returns where and its NAR sha256.

    ``src`` itself is followed when it is a symlink (its content is the data); links inside it
    stay links, and must point inside it. DataError names a file that cannot go in."""
    src = src.resolve()
    return _fast_import(src, name) if fast_path_available() else _slow_import(src, name)
