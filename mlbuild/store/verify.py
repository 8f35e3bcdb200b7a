"""``mlbuild store verify``: every narinfo's signature, every NAR's size and hashes, every closure.

Problems found, by kind:

- ``corrupt``: the narinfo cannot be read, names another path than its file name, or its NAR has
  another size, file hash, NAR hash, BLAKE3 hash or NAR size than the narinfo says;
- ``unsigned``: no signature by a trusted key (Nix with require-sigs would refuse it) on an entry
  whose NAR is sound, or a BLAKE3 hash without one; ``signers`` names the keys it is signed by, if
  any (then it is likely sound, signed by a key this machine does not trust:
  :meth:`VerifyReport.untrusted`);
- ``missing``: the NAR file the narinfo names is not there;
- ``incomplete``: a path it references has no good entry (its closure cannot be substituted);
- ``unreadable``: this user may not read its narinfo or NAR (file permissions, not damage: a
  repair leaves it, and what references it is not counted incomplete).

Nothing changes unless ``repair``: then the bad narinfos go first, then the NAR files that only
they named (a NAR still named by a good narinfo is never removed).
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from ..errors import StoreCorruptError
from ..nar import CHUNK
from .config import StoreConfig
from .keys import PublicKey, check_signatures
from .layout import DENIED, Layout, denied_fix, fsync_dir, read_store_file, store_command
from ..fastcopy import new_hash
from .narinfo import STORE_DIR, NarInfo, format_b3, format_hash

UNREADABLE = "unreadable"

__all__ = ["verify", "VerifyReport", "Problem", "check_nar", "check_entry", "signers", "untrusted_hint"]


@dataclass(frozen=True)
class Problem:
    kind: str
    narinfo: Path
    store_path: str
    detail: str
    signers: tuple[str, ...] = ()   # unsigned: the names of the keys that did sign it
    lost: tuple[str, ...] = ()      # incomplete: the references with no good entry


@dataclass
class VerifyReport:
    checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    absent: set[str] = field(default_factory=set)   # referenced paths the store has no narinfo for

    @property
    def ok(self) -> bool:
        return not self.problems

    def by_kind(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]

    def untrusted(self) -> list[Problem]:
        """Problems only an untrusted signing key causes: entries signed, but by no trusted key,
        and entries incomplete only because of those. Trusting the key fixes them all."""
        found = [p for p in self.problems if p.kind == "unsigned" and p.signers]
        return self._with_incomplete(found, {p.store_path for p in found})

    def unreferenced(self) -> list[Problem]:
        """Entries incomplete only because paths they reference have no entry at all (removed by
        hand, never pushed): sound themselves, whole again once those paths are pushed."""
        return self._with_incomplete([], set(self.absent))

    def _with_incomplete(self, found: list[Problem], paths: set[str]) -> list[Problem]:
        """``found`` and every entry incomplete only for lack of ``paths`` or of those entries'
        paths, in turn (a package referencing a model referencing a missing path), in report order."""
        found, paths = list(found), set(paths)
        grew = True
        while grew:
            more = [p for p in self.by_kind("incomplete") if p not in found and set(p.lost) <= paths]
            found += more
            paths |= {p.store_path for p in more}
            grew = bool(more)
        return [p for p in self.problems if p in found]

    def advice(self, cfg: StoreConfig) -> str:
        """What to do about the problems. Entries signed only by keys this machine does not trust
        are not damaged: the fix is the trusted-key setting, and a repair would delete them. Nor
        are entries that lack only references the store does not have: the fix is to push those."""
        untrusted = self.untrusted()
        lacking = [p for p in self.unreferenced() if p not in untrusted]
        denied = self.by_kind(UNREADABLE)
        others = [p for p in self.problems if p not in untrusted and p not in lacking and p not in denied]
        repair = f"`{store_command(cfg.root, 'verify --repair')}`"
        advice = []
        if denied:
            advice.append(f"{len(denied)} entries cannot be checked: this user may not read their files (not damage, "
                          f"as far as anyone knows, and {repair} keeps them); make them readable to the store's "
                          f"group ({denied_fix(sorted({p.narinfo for p in denied}))})")
        if others:
            advice.append(f"{len(others)} bad entries in the store; remove them with {repair}, then push the "
                          f"paths again")
        if lacking:
            absent = sorted(self.absent & {r for p in lacking for r in p.lost})
            advice.append(
                f"{len(lacking)} entries are sound but reference paths the store does not have ({', '.join(absent[:3])}"
                f"{f' and {len(absent) - 3} more' if len(absent) > 3 else ''}): push "
                f"{'it' if len(absent) == 1 else 'them'} from a machine that has "
                f"{'it' if len(absent) == 1 else 'them'} (`mlbuild store push {absent[0]}`"
                f"{' ...' if len(absent) > 1 else ''}) and they are whole again; {repair} would delete "
                f"{'it' if len(lacking) == 1 else 'all ' + str(len(lacking))}")
        if untrusted:
            signed = [p for p in untrusted if p.kind == "unsigned"]
            signed_by = sorted({s for p in signed for s in p.signers})
            more = len(untrusted) - len(signed)
            advice.append(
                f"{len(signed)} entries are signed only by keys this machine does not trust (signed by "
                f"{', '.join(signed_by)}; trusted here: {', '.join(str(k) for k in cfg.trusted_keys())})"
                + (f" and {more} more reference them" if more else "")
                + f": if that is your store's signing key, trust its public half (MLBUILD_STORE_PUBLIC_KEYS or "
                f"[store].public-keys here, trusted-public-keys in every reader's nix.conf) rather than remove "
                f"them: {repair} would delete them" + (" too" if others else ""))
        return "; ".join(advice)


def _reader(f: BinaryIO, compression: str) -> Any:
    if compression == "none":
        return f
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    if compression == "xz":
        return lzma.LZMAFile(f)
    if compression == "bzip2":
        return bz2.BZ2File(f)
    raise StoreCorruptError(f"compression {compression!r} cannot be checked here")


def check_nar(path: Path, info: NarInfo, contents: bool = True) -> str | None:
    """Why the NAR file at ``path`` does not match ``info`` (None: it matches)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if info.file_size and size != info.file_size:
        return f"NAR file has {size} bytes, narinfo says {info.file_size}"
    if not contents:
        return None
    file_h, nar_h = hashlib.sha256(), hashlib.sha256()
    b3_h = new_hash("blake3") if info.b3 else None
    nar_size = 0

    class _Tee:
        def __init__(self, f: BinaryIO) -> None:
            self.f = f

        def read(self, n: int = -1) -> bytes:
            data = self.f.read(n)
            file_h.update(data)
            return data

    try:
        raw_file = open(path, "rb")
    except PermissionError as e:
        return f"{UNREADABLE}: {DENIED} ({e.strerror})"
    try:
        with raw_file as raw:
            tee = _Tee(raw)
            stream = _reader(tee, info.compression)  # type: ignore[arg-type]
            while chunk := stream.read(4 * CHUNK):
                nar_h.update(chunk)
                if b3_h is not None:
                    b3_h.update(chunk)
                nar_size += len(chunk)
            while tee.read(CHUNK):   # count any bytes the decompressor left unread
                pass
    except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError) as e:
        return f"NAR file cannot be decompressed ({e})"
    if info.file_hash and format_hash(file_h.digest()) != info.file_hash:
        return f"NAR file hashes to {format_hash(file_h.digest())}, narinfo says {info.file_hash}"
    if format_hash(nar_h.digest()) != info.nar_hash or nar_size != info.nar_size:
        return (f"NAR hashes to {format_hash(nar_h.digest())} ({nar_size} bytes), narinfo says "
                f"{info.nar_hash} ({info.nar_size} bytes)")
    if b3_h is not None and format_b3(b3_h.digest()) != info.b3:
        return f"NAR's BLAKE3 hash is {format_b3(b3_h.digest())}, narinfo says {info.b3}"
    return None


def signers(info: NarInfo) -> tuple[str, ...]:
    """The names of the keys ``info``'s ``Sig`` lines say they are by (not checked)."""
    return tuple(sorted({sig.split(":", 1)[0] for sig in info.sigs if ":" in sig}))


def _untrusted(info: NarInfo, keys: tuple[PublicKey, ...]) -> str:
    """Why ``info`` has no valid signature by ``keys``, and how to trust another key."""
    trusted = {k.name for k in keys}
    same_name = [n for n in signers(info) if n in trusted]
    if same_name:
        why = (f"its signature by {same_name[0]} does not verify with the trusted key of that name: another key "
               f"pair under the same name, or the narinfo was changed after signing")
    elif signers(info):
        why = f"signed only by {', '.join(signers(info))}"
    else:
        why = "not signed"
    return (f"no signature by a trusted key ({why}; trusted: {', '.join(sorted(trusted))}; to trust another "
            f"key, set MLBUILD_STORE_PUBLIC_KEYS or [store].public-keys)")


def untrusted_hint(infos: list[NarInfo], keys: tuple[PublicKey, ...], root: Path) -> str:
    """Why a reader refuses ``infos`` (no signature by a trusted key), naming the signers, the
    trusted keys, and the fix: the key setting when they are signed at all."""
    named = {k.name for k in keys}
    changed = [i for i in infos if set(signers(i)) & named]
    infos = changed or infos
    signed_by = sorted({name for i in infos for name in signers(i)})
    paths = ", ".join(i.store_path for i in infos[:3]) + (f" and {len(infos) - 3} more" if len(infos) > 3 else "")
    trusted = ", ".join(str(k) for k in keys)
    if changed:   # signed under a trusted key's name, yet it does not verify: not a matter of trust
        names = sorted(set(signed_by) & named)
        return (f"{paths} {'is' if len(infos) == 1 else 'are'} signed by {', '.join(names)}, "
                + ("a key trusted here, but the signature does not verify" if len(names) == 1 else
                   "keys trusted here, but the signatures do not verify")
                + f": the narinfo was changed after signing (or another key pair has that name); remove the bad "
                f"entries with "
                f"`{store_command(root, 'verify --repair')}` and push them again")
    if not signed_by:
        return (f"{paths} {'is' if len(infos) == 1 else 'are'} not signed (trusted keys here: {trusted}); remove "
                f"the bad entries with `{store_command(root, 'verify --repair')}` and push them again")
    return (f"{paths} {'is' if len(infos) == 1 else 'are'} signed only by {', '.join(signed_by)}, which this "
            f"machine does not trust (trusted keys here: {trusted}). If that key signs your store, trust it: add "
            f"its public half (`name:base64`, the .pub file beside its secret key) to MLBUILD_STORE_PUBLIC_KEYS or "
            f"[store].public-keys; if not, `{store_command(root, 'verify')}` lists what it signed")


def _check_one(layout: Layout, f: Path, keys: tuple[PublicKey, ...],
               contents: bool) -> tuple[Path, NarInfo | None, Problem | None]:
    try:
        info = NarInfo.parse(read_store_file(f), str(f))
    except PermissionError as e:
        return f, None, Problem(UNREADABLE, f, "", f"{DENIED} ({e.strerror})")
    except (StoreCorruptError, UnicodeDecodeError) as e:
        return f, None, Problem("corrupt", f, "", str(e))
    except FileNotFoundError:
        return f, None, None   # removed meanwhile (gc): nothing to check
    if info.hash_part + ".narinfo" != f.name:
        # the entry of the path whose hash is f.stem (its name unknown here), not of info.store_path,
        # which may well have a sound entry of its own
        return f, info, Problem("corrupt", f, "", f"filed as the entry of the path {STORE_DIR}/{f.stem}-…, but "
                                                  f"describes {info.store_path}")
    unsigned = None   # reported when the NAR is sound: signed by a key not trusted here, it may well be
    if not check_signatures(info.sigs, info.fingerprint(), keys):
        # Only signers this machine does not trust make it a matter of trust (see untrusted()): a
        # signature under a trusted key's name that does not verify is a changed narinfo, to repair.
        trusted = {k.name for k in keys}
        unsigned = Problem("unsigned", f, info.store_path, _untrusted(info, keys),
                           signers=tuple(n for n in signers(info) if n not in trusted))
    elif info.b3 and not check_signatures(info.b3_sigs, info.b3_message(), keys):
        # reported only when the NAR itself is sound: a damaged NAR is corrupt, whatever its signatures
        unsigned = Problem("unsigned", f, info.store_path, "its MlbuildB3 hash has no signature by a trusted "
                           "key (restores fall back to NarHash; a repair and re-push signs it)")
    try:
        nar = layout.nar(info.url)
    except StoreCorruptError as e:
        return f, info, Problem("corrupt", f, info.store_path, str(e))
    why = check_nar(nar, info, contents)
    if why == "missing":
        return f, info, Problem("missing", f, info.store_path, f"no NAR file {nar.name}")
    if why and why.startswith(UNREADABLE + ": "):
        return f, info, Problem(UNREADABLE, nar, info.store_path, f"its NAR file: {why[len(UNREADABLE) + 2:]}")
    if why:
        return f, info, Problem("corrupt", f, info.store_path, why)
    return f, info, unsigned


def check_entry(layout: Layout, store_path: str, keys: tuple[PublicKey, ...] | None,
                contents: bool = False) -> str | None:
    """Why the store's entry for ``store_path`` is not one a reader would take (None: it is): no
    narinfo, one that cannot be read or describes another path, no valid signature by one of
    ``keys`` (of its ``NarHash`` or of its ``MlbuildB3`` hash; ``None``: signatures not checked), a
    NAR missing or of another size (and, with ``contents``, other bytes). What ``mlbuild store push``
    checks before it counts an entry as already there, and ``store tag`` before it tags one."""
    f = layout.narinfo(store_path)
    if not f.exists():
        return "is not in the store"
    _, info, problem = _check_one(layout, f, keys or (), contents)
    if keys is None and problem is not None and problem.kind == "unsigned":
        problem = None
    if info is None and problem is None:
        return "is not in the store"   # removed meanwhile
    if info is not None and info.store_path != store_path:
        return f"describes {info.store_path}, not {store_path}"
    if problem is not None:
        return f"is {problem.kind}: {problem.detail}"
    return None


def verify(cfg: StoreConfig, *, repair: bool = False, contents: bool = True, jobs: int = 2) -> VerifyReport:
    """Check the whole store; with ``repair``, remove what is bad (see the module docstring)."""
    layout = Layout(cfg.root)
    layout.require()
    if repair:
        layout.require_writable("repair")
    keys = cfg.trusted_keys()
    report = VerifyReport()
    files = sorted(layout.narinfos())
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(lambda f: _check_one(layout, f, keys, contents), files))
    good: dict[str, NarInfo] = {}
    infos: dict[Path, NarInfo] = {}
    for f, info, problem in results:
        report.checked += 1 if (info or problem) else 0
        if info:
            infos[f] = info
        if problem:
            report.problems.append(problem)
        elif info:
            good[info.store_path] = info
    # what this user may not read may well be sound: what references it is not counted incomplete
    denied = {p.narinfo for p in report.problems if p.kind == UNREADABLE}
    denied |= {layout.narinfo(p.store_path) for p in report.problems if p.kind == UNREADABLE and p.store_path}
    changed = True
    while changed:   # a path whose reference is bad or absent cannot be substituted either
        changed = False
        for path, info in list(good.items()):
            lost = [r for r in info.reference_paths if r not in good and r != path and layout.narinfo(r) not in denied]
            if lost:
                del good[path]
                absent = [r for r in lost if not layout.narinfo(r).exists()]
                report.absent.update(absent)
                why = ("which the store does not have" if len(absent) == len(lost) else
                       "which has no good entry" if not absent else
                       f"which have no good entry ({', '.join(absent)}: not in the store)")
                report.problems.append(Problem("incomplete", layout.narinfo(path), path,
                                               f"references {', '.join(lost)}, {why}", lost=tuple(lost)))
                changed = True
    if repair and report.problems:
        _repair(layout, report, infos, good)
    return report


def _repair(layout: Layout, report: VerifyReport, infos: dict[Path, NarInfo], good: dict[str, NarInfo]) -> None:
    keep_nars = {i.url for i in good.values()}
    for problem in report.problems:
        if problem.kind == UNREADABLE:   # not damaged as far as anyone knows: kept, with its NAR
            if problem.store_path and (kept := infos.get(layout.narinfo(problem.store_path))):
                keep_nars.add(kept.url)
            continue
        _remove(problem.narinfo, "a narinfo")
        report.removed.append(problem.narinfo)
    fsync_dir(layout.root)
    for f, info in infos.items():
        if f in report.removed and info.url not in keep_nars:
            try:
                nar = layout.nar(info.url)
            except StoreCorruptError:
                continue
            if os.path.lexists(nar):
                _remove(nar, "a NAR")
                report.removed.append(nar)
                keep_nars.add(info.url)


def _remove(path: Path, what: str) -> None:
    """Remove a bad entry's file; a folder in its place (a `cp -r` or `mkdir` into the wrong place:
    an IsADirectoryError traceback) is removed when empty and named when not."""
    try:
        path.unlink(missing_ok=True)
    except IsADirectoryError:
        try:
            path.rmdir()
        except OSError:
            raise StoreCorruptError(f"{path} is a folder, not {what}, and not empty; move it out of the store "
                                    f"(`mv {path} /some/where/else`), then repair again") from None
