"""``mlbuild store gc``: keep the closures of the roots, remove the rest while others read.

Order of removal, so that readers and writers never see a broken store:

1. Entries (narinfos) not in the closure of a root and not touched for ``grace`` seconds go,
   referrers before references: what remains is always closed under references. A push in
   progress is safe: before it looks at what the store has, it records its whole closure as a
   root under the roots lock, which gc holds from reading the roots to removing the entries.
2. A NAR file no narinfo names is first *condemned* (``mlbuild/gc-condemned.json``, with the
   time); a later gc deletes it once it has been unreferenced for ``grace`` seconds, so a reader
   that read a narinfo just before step 1 still gets its NAR. A NAR that any narinfo names is
   never deleted (two narinfos may share one NAR).
3. Temp files of dead writers on this host, and any older than ``grace``, go; push records beyond
   the newest ``keep_last`` per name go, but for the newest ``keep_last`` whole ones (every path
   they name has an entry: a killed push's record names paths it never published).

With ``grace=0`` (tests, a store nobody else uses) everything unrooted goes in one run.

gc never removes anything because it could not read something: a narinfo it cannot read or parse
might be a root, or reference entries that must stay, so gc refuses to run (``--dry-run`` too)
until ``mlbuild store verify --repair`` has removed it.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import StoreCorruptError
from .config import StoreConfig
from .layout import Entries, Layout, fsync_dir, publish_bytes, read_store_file, store_command, temp_is_stale, writing
from .narinfo import NarInfo
from .roots import Roots, read_roots, roots_lock

__all__ = ["gc", "GcReport", "DEFAULT_GRACE_S"]

DEFAULT_GRACE_S = 3600.0


@dataclass
class GcReport:
    roots: Roots
    kept: list[str] = field(default_factory=list)
    removed_paths: list[str] = field(default_factory=list)
    removed_nars: list[Path] = field(default_factory=list)
    condemned_nars: list[Path] = field(default_factory=list)
    removed_temps: list[Path] = field(default_factory=list)
    removed_records: list[Path] = field(default_factory=list)
    freed_bytes: int = 0
    spared: int = 0   # unrooted entries kept by the grace period (or referenced by such)


def _load(layout: Layout, done: str = "removes nothing") -> Entries:
    """The store's entries; StoreCorruptError, naming them, when any cannot be read."""
    entries = layout.entries()
    if entries.unreadable:
        bad = sorted(entries.unreadable.items())
        listed = "\n".join(f"  {why}" for _, why in bad[:10])
        listed += f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise StoreCorruptError(
            f"gc cannot read {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} of {layout.root}, so it cannot tell "
            f"what they keep, and {done}:\n{listed}\n" + entries.fix(
                f"remove {'them' if not entries.denied else 'the others'} with "
                f"`{store_command(layout.root, 'verify --repair')}`, push again what they were (their file names are "
                f"the store paths' hashes)") + ", then run gc")
    return entries


def _closure(roots: set[str], entries: dict[str, NarInfo]) -> set[str]:
    keep: set[str] = set()
    todo = [r for r in roots if r in entries]
    while todo:
        p = todo.pop()
        if p in keep:
            continue
        keep.add(p)
        todo += [r for r in entries[p].reference_paths if r in entries and r not in keep]
    return keep


def _referrers_first(doomed: set[str], entries: dict[str, NarInfo]) -> list[str]:
    """Order ``doomed`` so every path comes before the paths it references."""
    referrers: dict[str, set[str]] = {p: set() for p in doomed}
    for q in doomed:
        for r in entries[q].reference_paths:
            if r in referrers and r != q:
                referrers[r].add(q)
    order: list[str] = []
    done: set[str] = set()
    for root in sorted(doomed):
        stack: list[tuple[str, list[str]]] = [(root, sorted(referrers[root]))]
        if root in done:
            continue
        done.add(root)
        while stack:
            path, todo = stack[-1]
            nxt = next((q for q in todo if q not in done), None)
            if nxt is None:
                stack.pop()
                order.append(path)
            else:
                done.add(nxt)
                stack.append((nxt, sorted(referrers[nxt])))
    return order


def gc(cfg: StoreConfig, *, locks: Sequence[Path] = (), keep_last: int | None = None,
       grace: float = DEFAULT_GRACE_S, dry_run: bool = False) -> GcReport:
    """Remove what no root needs (see the module docstring); ``dry_run`` only reports."""
    if keep_last is not None and keep_last < 0 or not grace >= 0:
        raise ValueError(f"gc: keep_last ({keep_last}) and grace ({grace}) must not be negative")
    layout = Layout(cfg.root)
    layout.require()
    if not dry_run:
        layout.require_writable("collect garbage")
    now = time.time()
    loaded = _load(layout)
    entries = loaded.infos
    # Under the roots lock from reading the roots to removing the entries: a push records its whole
    # closure under it before it relies on what the store has, so an entry it reuses is either rooted
    # here or gone before it looks (and published again). Without it, an old entry a push had just
    # found there (and touched) was removed after the push published what references it.
    with contextlib.nullcontext() if dry_run else roots_lock(layout):
        roots = read_roots(layout, cfg.keep_last if keep_last is None else keep_last, list(locks), set(entries))
        keep = _closure(roots.paths, entries)
        report = GcReport(roots=roots, kept=sorted(keep))
        doomed = {p for p, mtime in loaded.mtimes.items() if p not in keep and now - mtime >= grace}
        keep |= set(entries) - doomed   # recent entries stay, and so must what they reference
        rooted = set(report.kept)
        keep = _closure(keep, entries)
        doomed -= keep
        report.spared = len(set(entries) - rooted - doomed)
        for p in _referrers_first(doomed, entries):
            report.removed_paths.append(p)
            if not dry_run:
                layout.narinfo(p).unlink(missing_ok=True)
        if doomed and not dry_run:
            fsync_dir(layout.root)
        with writing(layout.root, "collect garbage", fix=(
                f"gc removed {len(report.removed_paths)} entries and {len(report.removed_nars)} NARs but could not "
                f"note the NARs it found unreferenced; free space there by other means (or raise the quota), "
                f"then run gc again")):
            _collect_nars(layout, {entries[p].url for p in entries if p not in doomed}, now, grace, dry_run, report)
    for tmp in layout.temp_files():
        if temp_is_stale(tmp, grace, now):
            report.removed_temps.append(tmp)
            if not dry_run:
                tmp.unlink(missing_ok=True)
    report.removed_records = list(roots.dropped_pushes)
    if not dry_run:
        for rec in roots.dropped_pushes:
            rec.unlink(missing_ok=True)
    return report


def _collect_nars(layout: Layout, used: set[str], now: float, grace: float, dry_run: bool,
                  report: GcReport) -> None:
    """Delete NARs unreferenced for ``grace`` seconds; condemn the newly unreferenced ones."""
    # Entries a concurrent push just wrote keep their NARs; a narinfo that cannot be read might name any.
    again = _load(layout, f"removed {len(report.removed_paths)} unrooted entries but no NAR file")
    # A dry run removed nothing: the narinfos it would remove are still there, and must not count.
    gone = set(report.removed_paths) if dry_run else set()
    used |= {i.url for p, i in again.infos.items() if p not in gone}
    condemned = _condemned(layout, now)
    still: dict[str, float] = {}
    for nar in layout.nar_files():
        url = f"nar/{nar.name}"
        if url in used:
            continue
        since = condemned.get(url, now)
        try:
            created = nar.stat().st_mtime
        except FileNotFoundError:
            continue
        if now - since >= grace and now - created >= grace:
            report.removed_nars.append(nar)
            report.freed_bytes += nar.stat().st_size
            if not dry_run:
                nar.unlink(missing_ok=True)
        else:
            still[url] = since
            report.condemned_nars.append(nar)
    if not dry_run and (still or condemned):
        publish_bytes(layout.condemned_file, (json.dumps(still, indent=1, sort_keys=True) + "\n").encode())


def _condemned(layout: Layout, now: float) -> dict[str, float]:
    """What an earlier gc condemned, and since when. A file that is no such record (cut short or
    garbled on the store's disk: bytes that are not UTF-8, JSON that is not an object of times) was
    a traceback of every later gc, for good; it is taken as empty: those NARs wait out the grace
    period again, and the file is written whole at the end of this run."""
    try:
        data = json.loads(read_store_file(layout.condemned_file))
    except (OSError, ValueError, StoreCorruptError):   # none yet, garbled, or not a file (a FIFO hung it)
        return {}
    if not isinstance(data, dict):
        return {}
    # a time that no gc wrote (0 or less: its NAR went at once, before the grace a reader mid-fetch
    # has; NaN or Infinity, which Python's json reads: never, and written back so, for good) is none
    return {k: float(v) for k, v in data.items()
            if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v) and 0 < v <= now}
