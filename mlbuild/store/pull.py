"""``mlbuild store pull``: fetch closures from the shared store into a local Nix store.

Nix does the copying (``nix copy --from file://<store>``) with the store's keys as its only
trusted keys and ``require-sigs``: a narinfo without a trusted signature, or a NAR whose hash
differs from its signed narinfo, is refused by Nix itself. The closure is read from the narinfos
first so that a path missing from the store is reported by name before anything is copied.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .. import _nix
from ..errors import NixError, StoreCorruptError, StoreError, StoreMissingError
from .config import StoreConfig
from .keys import check_signatures
from .layout import DENIED, Layout, denied_fix, read_store_file, store_command
from .narinfo import NarInfo
from .push import resolve_targets
from .restore import real_store_dir, restore_paths
from .verify import check_nar, untrusted_hint

__all__ = ["pull", "PullResult", "cache_closure", "trust_options"]


@dataclass
class PullResult:
    """``fetched``: paths copied in; ``present``: closure paths the local store already had."""

    targets: list[str]
    fetched: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    seconds: float = 0.0


def read_narinfo(layout: Layout, path: str) -> NarInfo:
    f = layout.narinfo(path)
    try:
        text = read_store_file(f)
    except FileNotFoundError:
        raise StoreMissingError(f"{path} is not in the store {layout.root}; push it from a machine that "
                                f"has it (`mlbuild store push {path}`)") from None
    except PermissionError:
        raise StoreError(f"cannot fetch {path}: its narinfo {f}: {DENIED}; make it readable to the store's "
                         f"group ({denied_fix([f])})") from None
    return NarInfo.parse(text, str(f))


def cache_closure(layout: Layout, paths: Sequence[str]) -> dict[str, NarInfo]:
    """The narinfos of ``paths`` and everything they reference, as the store has them."""
    seen: dict[str, NarInfo] = {}
    todo = list(paths)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        info = read_narinfo(layout, p)
        if info.store_path != p:
            raise StoreCorruptError(f"{layout.narinfo(p)} describes {info.store_path}, not {p}; run "
                                    f"`mlbuild store verify --repair`")
        seen[p] = info
        todo += [r for r in info.reference_paths if r not in seen]
    return seen


def trust_options(cfg: StoreConfig) -> list[str]:
    """Only the store's keys are trusted, signatures required, no stale narinfo lookups."""
    return [
        "--option", "trusted-public-keys", " ".join(str(k) for k in cfg.trusted_keys()),
        "--option", "require-sigs", "true",
        "--option", "narinfo-cache-negative-ttl", "0",
        "--option", "narinfo-cache-positive-ttl", "0",
    ]


def _references_first(closure: dict[str, NarInfo], wanted: set[str]) -> list[str]:
    order: list[str] = []
    seen: set[str] = set()
    for root in sorted(wanted):
        stack = [(root, False)]
        while stack:
            p, expanded = stack.pop()
            if expanded:
                order.append(p)
                continue
            if p in seen:
                continue
            seen.add(p)
            stack.append((p, True))
            stack += [(r, False) for r in closure[p].reference_paths if r in wanted and r not in seen]
    return order


def _check_nar_sizes(layout: Layout, closure: dict[str, NarInfo], paths: set[str]) -> None:
    """StoreCorruptError, before anything is copied, naming the entries whose NAR file is missing
    or not of its narinfo's size (a NAR cut short by a crash, removed by hand): Nix said only
    "Failed to open archive (Truncated zstd input)", naming neither the NAR nor the fix."""
    bad: list[tuple[str, str]] = []
    denied: list[Path] = []
    for p in sorted(paths):
        nar = layout.nar(closure[p].url)
        why = check_nar(nar, closure[p], contents=False)
        if why is not None:
            bad.append((p, why))
        if why == "missing":
            continue
        try:
            nar.open("rb").close()
        except PermissionError:   # Nix said only "error: coroutine has finished"
            denied.append(nar)
        except OSError:
            pass
    if denied:
        it = "it" if len(denied) == 1 else "them"
        raise StoreError(f"cannot fetch from the store {layout.root}: this user may not read {', '.join(map(str, denied))}"
                         f", so nothing was fetched; make {it} readable to the store's group "
                         f"({denied_fix(denied)})")
    if bad:
        p, why = bad[0]
        why = f"has no NAR file {closure[p].url}" if why == "missing" else f"has a damaged NAR ({why})"
        more = f" (and {len(bad) - 1} more: {', '.join(q for q, _ in bad[1:4])}{'...' if len(bad) > 4 else ''})"
        raise StoreCorruptError(f"the store's entry of {p} {why} in {layout.root}{more if len(bad) > 1 else ''}, so "
                                f"nothing was fetched; run `{store_command(layout.root, 'verify --repair')}` and push "
                                f"it again from a machine that has it (`mlbuild store push {p}`)")


def pull(cfg: StoreConfig, targets: Sequence[str], *, local_store: str | None = None,
         fast: bool = True) -> PullResult:
    """Copy the closures of ``targets`` into ``local_store`` (default: the machine's Nix store).

    With ``fast`` (default), uncompressed NARs are restored by :mod:`mlbuild.store.restore` when
    the local store is writable here (same checks as Nix: trusted signature, NAR hash); the rest,
    in references-first batches, by ``nix copy``.
    """
    start = time.monotonic()
    layout = Layout(cfg.root)
    layout.require()
    paths = resolve_targets(targets)
    closure = cache_closure(layout, paths)
    missing = set(_nix.invalid_paths_in(sorted(closure), store=local_store))
    _check_nar_sizes(layout, closure, missing)
    result = PullResult(targets=paths, fetched=sorted(missing), present=sorted(set(closure) - missing))
    store_dir = real_store_dir(local_store) if fast and missing else None
    keys = cfg.trusted_keys()
    batch: list[str] = []

    def flush() -> None:
        if batch:
            try:
                _nix.copy_from_cache(cfg.url, batch, store=local_store, options=trust_options(cfg))
            except NixError as e:
                head = str(e.args[0]).split("\n", 1)[0]
                if "hash mismatch" in str(e):   # a NAR damaged in the store (same size, other bytes)
                    named = re.search(r"hash mismatch importing path '([^']+)'", str(e))
                    path = named.group(1) if named else ", ".join(batch)
                    raise NixError(f"{head}: the store's NAR of {path} does not have the hash its signed narinfo "
                                   f"says (damaged in the store {layout.root}); run "
                                   f"`{store_command(layout.root, 'verify --repair')}` and push it again from a "
                                   f"machine that has it", e.log_tail) from None
                bad = [closure[p] for p in batch
                       if not check_signatures(closure[p].sigs, closure[p].fingerprint(), keys)]
                if not bad and "signature" in str(e) and local_store is None and _nix.untrusted_daemon_user():
                    signers = [k for k in keys if any(check_signatures(closure[p].sigs, closure[p].fingerprint(), (k,))
                                                      for p in batch)]
                    signed_by = " ".join(str(k) for k in signers or keys)
                    raise NixError(f"cannot fetch {batch[0]}{' and more' if len(batch) > 1 else ''} from the store "
                                   f"{layout.root}, signed by {signed_by}: "
                                   f"{_nix.daemon_admin_hint([f'extra-trusted-public-keys = {signed_by}'])}",
                                   e.log_tail) from None
                if not bad or "signature" not in str(e):
                    raise
                raise NixError(f"{head}: Nix refused what has no valid signature by a trusted key. "
                               f"{untrusted_hint(bad, keys, layout.root)}", e.log_tail) from None
            batch.clear()

    for p in _references_first(closure, missing):
        if store_dir is not None and closure[p].compression == "none":
            flush()
            restore_paths(layout, [closure[p]], keys, local_store, store_dir)
        else:
            batch.append(p)
    flush()
    result.seconds = time.monotonic() - start
    return result
