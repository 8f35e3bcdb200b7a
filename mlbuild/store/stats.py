"""``mlbuild store stats``: what the store holds, per top-level item and kind, and what is shared.

A top-level item is an entry no other entry references (a model package, a validation, an
image, a toolchain pushed alone...). Each gets its closure's size and the part of it no other
item uses; ``shared`` is what two or more items' closures have in common (a toolchain used by
several models is stored once). Kinds come from store path names (see ``KINDS``); other
fixed-output paths count as datasets (locked data is fixed-output). Sizes are the
bytes on disk (``FileSize``: after compression) and, for reference, the NAR sizes. Entries whose
narinfo cannot be read are not counted; ``unreadable`` names them (``mlbuild store verify``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .config import StoreConfig
from .layout import Layout, store_command
from .narinfo import NarInfo

__all__ = ["stats", "StoreStats", "Item", "classify", "KINDS"]

KINDS: list[tuple[str, re.Pattern[str]]] = [   # names nix/*.nix gives; first match wins
    ("wheel", re.compile(r"\.whl$")),
    ("toolchain", re.compile(r"(toolchain|^python-|^python3|interpreter|snapshot|mlbuild-runtime)")),
    ("validation", re.compile(r"(-validation(-report)?$|validat)")),
    ("image", re.compile(r"(-image(\.tar)?$|\boci\b|docker)")),
    ("notebook", re.compile(r"notebook")),
    ("release", re.compile(r"-release$")),
    ("package", re.compile(r"(-package$|serve)")),
    ("model", re.compile(r"(-model$|model|train|weights|\.safetensors$|checkpoint)")),
    ("code", re.compile(r"^(code|suite)$")),
    ("dataset", re.compile(r"(dataset|data\b|\.csv$|\.parquet$)")),
]


def classify(store_path: str, ca: str | None = None) -> str:
    """The kind of a store path from its name; other fixed-output paths are datasets (locked data)."""
    name = store_path.rsplit("/", 1)[-1][33:].lower()
    kind = next((kind for kind, rx in KINDS if rx.search(name)), None)
    return kind or ("dataset" if ca else "other")


@dataclass
class Item:
    path: str
    kind: str
    closure_paths: int
    closure_bytes: int
    unique_bytes: int


@dataclass
class StoreStats:
    paths: int = 0
    file_bytes: int = 0                 # on disk, each NAR file counted once
    nar_bytes: int = 0                  # uncompressed
    by_kind: dict[str, list[int]] = field(default_factory=dict)   # kind -> [paths, file bytes]
    by_compression: dict[str, list[int]] = field(default_factory=dict)
    items: list[Item] = field(default_factory=list)
    shared_paths: int = 0
    shared_bytes: int = 0
    unreadable: list[str] = field(default_factory=list)   # why each narinfo that is not counted is unreadable
    fix: str = ""   # what to do about them: repair, or make readable those this user may not read


def _closure(path: str, entries: dict[str, NarInfo]) -> set[str]:
    seen: set[str] = set()
    todo = [path]
    while todo:
        p = todo.pop()
        if p in seen or p not in entries:
            continue
        seen.add(p)
        todo += entries[p].reference_paths
    return seen


def stats(cfg: StoreConfig) -> StoreStats:
    """Sizes per item and kind, totals, and how much the items share."""
    layout = Layout(cfg.root)
    layout.require()
    loaded = layout.entries()
    entries = loaded.infos
    out = StoreStats(paths=len(entries), unreadable=[why for _, why in sorted(loaded.unreadable.items())])
    if loaded.unreadable:
        out.fix = loaded.fix(f"remove {'them' if not loaded.denied else 'the others'} with "
                                       f"`{store_command(cfg.root, 'verify --repair')}`, then push them again")
    seen_urls: set[str] = set()
    for p, info in entries.items():
        if info.url not in seen_urls:
            seen_urls.add(info.url)
            out.file_bytes += info.file_size
        out.nar_bytes += info.nar_size
        kind = out.by_kind.setdefault(classify(p, info.ca), [0, 0])
        kind[0] += 1
        kind[1] += info.file_size
        comp = out.by_compression.setdefault(info.compression, [0, 0])
        comp[0] += 1
        comp[1] += info.file_size
    referenced = {r for i in entries.values() for r in i.reference_paths if r != i.store_path}
    tops = sorted(p for p in entries if p not in referenced)
    closures = {t: _closure(t, entries) for t in tops}
    users: dict[str, int] = {}
    for c in closures.values():
        for p in c:
            users[p] = users.get(p, 0) + 1
    for t in tops:
        c = closures[t]
        out.items.append(Item(
            path=t, kind=classify(t, entries[t].ca), closure_paths=len(c),
            closure_bytes=sum(entries[p].file_size for p in c),
            unique_bytes=sum(entries[p].file_size for p in c if users[p] == 1)))
    shared = [p for p, n in users.items() if n > 1]
    out.shared_paths = len(shared)
    out.shared_bytes = sum(entries[p].file_size for p in shared)
    out.items.sort(key=lambda i: (-i.closure_bytes, i.path))
    return out
