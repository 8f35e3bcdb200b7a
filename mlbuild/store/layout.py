"""The store folder: Nix's ``file://`` binary-cache layout plus mlbuild's roots, and atomic publishing.

::

    <root>/nix-cache-info               StoreDir, WantMassQuery, Priority (Nix reads it first)
    <root>/<hash>.narinfo               one per store path, signed
    <root>/nar/<filehash>.nar[.zst]     NARs, named by the sha256 of the file (content-addressed)
    <root>/realisations/, log/          made up front so read-only readers never need to create them
    <root>/mlbuild/roots/tags/<NAME>    release tags: store paths, one a line
    <root>/mlbuild/roots/pushes/<NAME>/<time>.<host>.<pid>.<rand>   one file per push
    <root>/mlbuild/gc-condemned.json    NARs gc found unreferenced, and since when

Publishing is write-temp, fsync, rename, fsync the folder. Temporary names carry the host, the pid
and random bytes (``.tmp.<host>.<pid>.<rand>``), so writers on several hosts sharing one NFS
folder never collide; they start with a dot, and nothing that reads the cache lists them. The NAR
is renamed into place before its narinfo is written, so a narinfo never names a partial NAR.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shlex
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import StoreConfigError, StoreCorruptError, StoreError
from .narinfo import REPAIR_HINT, STORE_DIR, NarInfo, hash_part

__all__ = ["Layout", "Entries", "read_store_file", "store_command", "temp_name", "parse_temp_name", "publish_bytes", "fsync_dir",
           "DIR_MODE", "FILE_MODE", "writing"]

DIR_MODE = 0o2775   # setgid: files inherit the store's group; the group may add and remove entries
FILE_MODE = 0o664
TEMP_PREFIX = ".tmp."
CACHE_INFO = f"StoreDir: {STORE_DIR}\nWantMassQuery: 1\nPriority: 30\n"


def _host() -> str:
    return socket.gethostname().replace("/", "_").replace(".", "_") or "host"


def temp_name(suffix: str = "") -> str:
    """``.tmp.<host>.<pid>.<random>``: unique across hosts sharing one folder."""
    return f"{TEMP_PREFIX}{_host()}.{os.getpid()}.{secrets.token_hex(6)}{suffix}"


def parse_temp_name(name: str) -> tuple[str, int] | None:
    """(host, pid) of a name made by :func:`temp_name`, else None."""
    if not name.startswith(TEMP_PREFIX):
        return None
    parts = name[len(TEMP_PREFIX):].split(".")
    if len(parts) < 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:   # some network filesystems refuse fsync on folders
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def publish_bytes(dest: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Write ``dest`` atomically: unique temp file in the same folder, fsync, rename, fsync folder."""
    tmp = dest.parent / temp_name()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


_GONE = (errno.ESTALE, errno.ENOTCONN, errno.ENODEV, errno.EIO)   # a store folder whose mount failed under us


@contextlib.contextmanager
def writing(root: Path, what: str, fix: str | None = None) -> Iterator[None]:
    """Turn a full store folder (no space left, or over quota), or one that went away (its mount
    dropped or went stale), met while doing ``what`` into a StoreError naming the folder, instead of
    a traceback. Writers remove their temp files as the
    error passes, so nothing partial is left; ``fix`` replaces the advice (free space, e.g. by gc)."""
    try:
        yield
    except OSError as e:
        if e.errno in _GONE or e.errno == errno.ENOENT and not Layout(root).is_initialised():
            # an NFS mount that dropped, was unmounted or went stale: a FileNotFoundError traceback
            raise StoreError(f"cannot {what}: the store folder {root} went away meanwhile ({e.strerror}: "
                             f"{e.filename}), as an NFS mount that dropped or was unmounted does; mount it again, "
                             f"then run it again (`{store_command(root, 'verify')}` checks what it holds)") from None
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        why = "is full" if e.errno == errno.ENOSPC else "is over this user's disk quota"
        fix = fix or (f"free space there (`{store_command(root, 'gc')}` removes what no tag, recent push or "
                      f"lock keeps), then run it again")
        raise StoreError(f"cannot {what}: the store folder {root} {why} ({e.strerror}); {fix}") from None


def read_store_file(path: Path) -> str:
    """The text of a file of the store (a narinfo, a tag, a push record), read only as a file: not
    through a link, which any writer of the store could point at a file only root may read (whose
    lines `store verify` or `store tag`, run by root, then showed), nor from a FIFO (which hung them).
    FileNotFoundError and PermissionError pass; StoreCorruptError for a link or a non-file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise StoreCorruptError(f"{path} is a symbolic link (to {os.readlink(path)}), not a file of the store; "
                                f"mlbuild does not read it: remove it (`rm {shlex.quote(str(path))}`)") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):   # before fdopen, which refuses a folder (IsADirectoryError)
        folder = stat.S_ISDIR(os.fstat(fd).st_mode)
        os.close(fd)
        raise StoreCorruptError(f"{path} is not a file; mlbuild does not read it: remove it "
                                f"(`rm {'-r ' if folder else ''}{shlex.quote(str(path))}`)")
    with os.fdopen(fd, "rb") as f:
        return f.read().decode()


def _group(path: Path) -> str:
    import grp

    gid = path.stat().st_gid
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


class Layout:
    """Paths inside one store folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def nar_dir(self) -> Path:
        return self.root / "nar"

    @property
    def roots_dir(self) -> Path:
        return self.root / "mlbuild" / "roots"

    @property
    def condemned_file(self) -> Path:
        return self.root / "mlbuild" / "gc-condemned.json"

    def narinfo(self, store_path_or_hash: str) -> Path:
        h = store_path_or_hash if len(store_path_or_hash) == 32 else hash_part(store_path_or_hash)
        return self.root / f"{h}.narinfo"

    def nar(self, url: str) -> Path:
        """The file a narinfo's URL names; refuses URLs that leave ``nar/``."""
        name = url[4:] if url.startswith("nar/") else ""
        if not name or "/" in name or name.startswith("."):
            raise StoreCorruptError(f"narinfo URL {url!r} does not name a file in {self.nar_dir}; "
                                    f"remove the entry with `mlbuild store verify --repair`")
        return self.nar_dir / name

    def is_initialised(self) -> bool:
        return (self.root / "nix-cache-info").is_file() and self.nar_dir.is_dir()

    def require(self) -> None:
        self.refuse_links()   # first: a link to a folder that is gone is not a store to init again
        if not self.is_initialised():
            raise StoreConfigError(f"{self.root} is not an mlbuild store (no nix-cache-info or nar/); create it "
                                   f"with `{store_command(self.root, 'init')}`, or give the store's folder "
                                   f"(`mlbuild store --store DIR ...`, MLBUILD_STORE or [store].path)")
        damaged, other = self.cache_info_problem()
        if damaged:   # Nix refuses every entry: pushes went on into a store no reader could use
            raise StoreCorruptError(f"{damaged}, so Nix refuses the whole store; "
                                    f"`{store_command(self.root, 'init')}` writes it again")
        if other:
            raise StoreConfigError(f"{other}; use another store location")

    def cache_info_problem(self) -> tuple[str | None, str | None]:
        """(why nix-cache-info is damaged, why it is another Nix store folder's); (None, None) where
        Nix reads it as this store's. Nix compares its StoreDir with its own store folder and refuses
        the whole store on a mismatch: a file cut short (``StoreDir: /nix/sto``, by a full disk or a
        crash as an older mlbuild wrote it) or garbled is damaged, and ``init`` writes it again; a
        StoreDir that is another folder (``/gnu/store``) is a store for another Nix."""
        info = self.root / "nix-cache-info"
        try:
            text = read_store_file(info)
        except FileNotFoundError:
            return None, None
        except UnicodeDecodeError:   # Nix reads bytes: only a StoreDir line it cannot match matters
            text = info.read_bytes().decode("utf-8", "replace")
        except StoreCorruptError as e:
            return str(e).split("; mlbuild does not read it", 1)[0], None
        for line in text.split("\n"):
            name, colon, value = line.partition(":")
            if colon and name == "StoreDir" and value.strip() != STORE_DIR:
                said = value.strip()
                if not said or STORE_DIR.startswith(said) or "\ufffd" in said or not said.isprintable():
                    return f"{info} says StoreDir: {said!r}, which is {STORE_DIR} cut short or garbled", None
                return None, f"{info} is for another Nix store folder ({said}) than {STORE_DIR}"
        return None, None

    def refuse_links(self) -> None:
        """StoreCorruptError naming a folder of the store that is a symbolic link. Its folders are the
        store's own: one that a writer of the store replaced with a link to another folder would have
        gc (run by root, say) delete that folder's files as unused NARs, and init, pushes and gc write
        there. The store's root itself may be a link (see store-config)."""
        pushes = self.roots_dir / "pushes"
        own = [self.nar_dir, self.root / "mlbuild", self.roots_dir, self.roots_dir / "tags", pushes]
        if pushes.is_dir() and not pushes.is_symlink():
            own += sorted(pushes.iterdir())
        for d in own:
            if d.is_symlink():
                raise StoreCorruptError(
                    f"{d} is a symbolic link (to {os.readlink(d)}), not a folder of the store {self.root}: mlbuild "
                    f"writes and deletes files in the store's folders (gc would delete what the link leads to); "
                    f"remove the link (`rm {shlex.quote(str(d))}`) and make the folder itself "
                    f"(`{store_command(self.root, 'init')}`), or mount the other folder there")

    def require_writable(self, what: str) -> None:
        """StoreError naming the folder, before ``what`` (a push, a tag...) writes anything, when
        this machine cannot write the store: a read-only mount (consumers may mount it ``ro``),
        or folders this user may not write (the ``mlbuild`` group, see store-config/README.md)."""
        for d in (self.root, self.nar_dir, self.roots_dir / "pushes", self.roots_dir / "tags", self.roots_dir):
            if d.is_dir() and not os.access(d, os.W_OK):
                if os.statvfs(d).f_flag & os.ST_RDONLY:
                    why, fix = "it is mounted read-only here", "do it from a machine that mounts the store read-write"
                else:
                    why = "this user may not write it"
                    fix = (f"run it as a member of the folder's group ({_group(d)}: see store-config/README.md), "
                           f"or ask the store's owner to make the folder group-writable")
                raise StoreError(f"cannot {what}: the shared store {self.root} is not writable ({d}: {why}); {fix}")

    def init(self) -> None:
        """Create the folders and nix-cache-info (idempotent; keeps existing entries)."""
        self.refuse_links()   # else it made roots/ and wrote the public key where the link leads
        for d in (self.root, self.nar_dir, self.root / "realisations", self.root / "log",
                  self.root / "mlbuild", self.roots_dir / "tags", self.roots_dir / "pushes"):
            make_dir(d)
        info = self.root / "nix-cache-info"
        damaged, other = self.cache_info_problem()
        if other:
            raise StoreConfigError(f"{other}; use another store location")
        # empty (a full disk's), cut short or garbled: written again
        if damaged or not info.exists() or (info.is_file() and info.stat().st_size == 0):
            if os.path.lexists(info) and not info.is_file():
                raise StoreCorruptError(f"{damaged}; remove it (`rm {shlex.quote(str(info))}`) and run init again")
            publish_bytes(info, CACHE_INFO.encode(), 0o664)

    def narinfos(self) -> Iterator[Path]:
        """Every published narinfo (temporary files excluded)."""
        with os.scandir(self.root) as it:
            for e in it:
                if e.name.endswith(".narinfo") and not e.name.startswith("."):
                    yield Path(e.path)

    def entries(self) -> Entries:
        """Every published narinfo, parsed, and those that cannot be read (a narinfo removed
        meanwhile, by gc or a repair, is neither)."""
        out = Entries()
        for f in self.narinfos():
            try:
                info = NarInfo.parse(read_store_file(f), str(f))
                mtime = f.stat().st_mtime
            except FileNotFoundError:
                continue
            except StoreCorruptError as e:
                out.unreadable[f] = str(e).removesuffix(REPAIR_HINT)
                continue
            except PermissionError as e:   # the file is sound as far as anyone knows: its mode is the fault
                out.unreadable[f] = f"{f}: {DENIED} ({e.strerror})"
                out.denied.add(f)
                continue
            except (OSError, UnicodeDecodeError) as e:
                out.unreadable[f] = f"{f}: {e}"
                continue
            if info.hash_part + ".narinfo" != f.name:
                out.unreadable[f] = f"{f}: describes {info.store_path}, not {f.stem}"
            else:
                out.infos[info.store_path] = info
                out.mtimes[info.store_path] = mtime
        return out

    def nar_files(self) -> Iterator[Path]:
        with os.scandir(self.nar_dir) as it:
            for e in it:
                if not e.name.startswith("."):
                    yield Path(e.path)

    def temp_files(self) -> Iterator[Path]:
        """Temporary files in every folder a writer uses."""
        dirs = [self.root, self.nar_dir, self.root / "mlbuild", self.roots_dir / "tags"]
        pushes = self.roots_dir / "pushes"
        if pushes.is_dir():
            dirs += [p for p in pushes.iterdir() if p.is_dir()]
        for d in dirs:
            if d.is_dir():
                yield from (p for p in d.iterdir() if p.name.startswith(TEMP_PREFIX))


@dataclass
class Entries:
    """The store's narinfos by store path (with their mtimes), and the files that cannot be
    read, with why (``mlbuild store verify`` reports and repairs those)."""

    infos: dict[str, NarInfo] = field(default_factory=dict)
    mtimes: dict[str, float] = field(default_factory=dict)
    unreadable: dict[Path, str] = field(default_factory=dict)
    denied: set[Path] = field(default_factory=set)   # of those, the ones this user may not read

    def fix(self, repair: str) -> str:
        """What to do about the unreadable entries: make readable those this user may not read (a
        repair would delete sound entries), ``repair`` the others."""
        fixes = []
        if self.denied:
            fixes.append(f"make {'it' if len(self.denied) == 1 else 'those this user may not read'} readable to the "
                         f"store's group ({denied_fix(sorted(self.denied))})")
        if set(self.unreadable) - self.denied:
            fixes.append(repair)
        return "; ".join(fixes)


DENIED = "this user may not read it"


def denied_fix(files: list[Path]) -> str:
    """``chmod g+r FILE...`` by the files' owner: what makes files of the store readable to its group."""
    shown = " ".join(shlex.quote(str(f)) for f in files[:3]) + (" ..." if len(files) > 3 else "")
    return (f"`chmod g+r {shown}` as their owner or root, or run it as a user who may read them; the writer "
            f"sets 0664, see store-config/README.md")


def store_command(root: Path, args: str) -> str:
    """``mlbuild store --store ROOT ARGS``: a suggestion that works whichever way the store was named."""
    return f"mlbuild store --store {shlex.quote(str(root))} {args}"


def make_dir(path: Path) -> None:
    """mkdir -p with the store's group-writable setgid mode, whatever the umask."""
    if path.is_dir():
        return
    if not path.parent.exists():
        make_dir(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return
    try:
        os.chmod(path, DIR_MODE)
    except PermissionError:
        pass


# A temp file written in the last TEMP_QUIET_S seconds is spared even when its pid looks gone: two
# containers may share a hostname but not a PID namespace, so `kill(pid, 0)` here says nothing about
# a writer there. A live writer keeps its temp file's mtime fresh as it writes.
TEMP_QUIET_S = 600.0


def temp_is_stale(path: Path, grace_s: float, now: float) -> bool:
    """A temp file is stale once it has not been written for ``TEMP_QUIET_S``, whatever the grace
    (``gc --grace 0`` removed a push's file as it wrote it), and then when it is older than grace
    or its writer (same host, dead pid) is gone."""
    try:
        age = now - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age <= TEMP_QUIET_S:
        return False
    if age > grace_s:
        return True
    owner = parse_temp_name(path.name)
    if owner and owner[0] == _host():
        try:
            os.kill(owner[1], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
    return False
