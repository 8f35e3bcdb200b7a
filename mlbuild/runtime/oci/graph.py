"""The closure's reference graph and the layer plan: which store paths go in which layer.

The graph comes from Nix's ``exportReferencesGraph`` (the ``nix-store --register-validity``
format: path, deriver, number of references, references). The plan follows mlbuild's layout
conventions, the same for both image backends (see nix/image.nix):

1. Every store path that does not depend on the training output gets a layer of its own, the
   toolchain's closure first, then the others; within each part the most *popular* path first
   (popularity: how many paths of the closure depend on it, as in nixpkgs' layered images).
2. Past ``max_layers``, the least popular of those share one last "group" layer.
3. The "model" layer: the training output and every path that depends on it (the package,
   its validation). Retraining changes these paths and nothing else, so two model versions
   share every layer but this one; in it, the package's copy of the weights is a hardlink to
   the training output's (see :mod:`.layer`), so the layer holds the weights once.
4. Last, a small "etc" layer (``/etc/passwd``, ``/etc/group``, ``/tmp``) that never changes
   (last as in nixpkgs, whose customisation layer always comes last).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Graph", "Layer", "PlanError", "parse_registration", "merge", "closure", "dependents",
           "popularity", "plan_layers", "STORE", "GROUP", "ETC", "MODEL"]

Graph = dict[str, tuple[str, ...]]
STORE, GROUP, ETC, MODEL = "store", "group", "etc", "model"


class PlanError(ValueError):
    """The graph or the layer limit cannot give a valid plan; the message names the value."""


@dataclass(frozen=True)
class Layer:
    """One layer: its kind (``store``, ``group``, ``etc`` or ``model``) and store paths."""

    kind: str
    paths: tuple[str, ...] = ()

    @property
    def dedup(self) -> bool:
        """Layers of several store paths store identical files once (hardlinks)."""
        return self.kind in (GROUP, MODEL)

    def describe(self) -> str:
        if self.kind == ETC:
            return "mlbuild: /etc/passwd, /etc/group, /tmp"
        names = ", ".join(_name(p) for p in self.paths[:4]) + (" ..." if len(self.paths) > 4 else "")
        return f"mlbuild {self.kind} layer: {names}"


def parse_registration(text: str, source: str = "graph") -> Graph:
    """Parse one ``exportReferencesGraph`` file into ``{path: references}`` (self excluded)."""
    lines = text.splitlines()
    graph: Graph = {}
    i = 0
    while i < len(lines):
        path = lines[i]
        if not path:
            i += 1
            continue
        try:
            count = int(lines[i + 2])
        except (IndexError, ValueError):
            raise PlanError(f"{source}: line {i + 3} should count the references of {path}") from None
        refs = lines[i + 3:i + 3 + count]
        if len(refs) != count or not path.startswith("/"):
            raise PlanError(f"{source}: entry {path!r} is truncated or not a store path")
        graph[path] = tuple(sorted({r for r in refs if r != path}))
        i += 3 + count
    return graph


def merge(graphs: Iterable[Graph]) -> Graph:
    """The union of several closures' graphs."""
    out: Graph = {}
    for g in graphs:
        out.update(g)
    missing = sorted({r for refs in out.values() for r in refs} - out.keys())
    if missing:
        raise PlanError(f"the reference graph is not closed: {missing[0]} is referenced but not listed")
    return out


def closure(graph: Graph, roots: Iterable[str]) -> set[str]:
    """Every path reachable from ``roots`` (roots included)."""
    seen: set[str] = set()
    todo = [r for r in roots]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo.extend(graph.get(p, ()))
    return seen


def dependents(graph: Graph, targets: Iterable[str]) -> set[str]:
    """Every path whose closure contains one of ``targets`` (targets included)."""
    reverse: dict[str, list[str]] = {p: [] for p in graph}
    for p, refs in graph.items():
        for r in refs:
            reverse.setdefault(r, []).append(p)
    return closure({p: tuple(v) for p, v in reverse.items()}, [t for t in targets if t in graph])


def popularity(graph: Graph) -> dict[str, int]:
    """For each path, how many other paths of the graph have it in their closure."""
    counts = dict.fromkeys(graph, 0)
    for p in graph:
        for q in closure(graph, [p]):
            if q != p:
                counts[q] += 1
    return counts


def _name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return base[33:] if len(base) > 33 and base[32] == "-" else base


def plan_layers(graph: Graph, *, first: Sequence[str] = (), model: Sequence[str] = (),
                max_layers: int = 100) -> list[Layer]:
    """The layers of an image of ``graph``'s paths, bottom first (see the module docstring).

    ``first``: roots whose closure comes first (the toolchain). ``model``: the training
    output(s); they and their dependents form the last layer.
    """
    if max_layers < 3:
        raise PlanError(f"max_layers is {max_layers}; an image needs at least 3 (store paths, etc, model)")
    models = dependents(graph, model)
    stable = [p for p in graph if p not in models]
    pop = popularity(graph)
    base = closure(graph, [f for f in first if f in graph]) - models
    ordered = sorted(stable, key=lambda p: (p not in base, -pop[p], _name(p), p))
    budget = max_layers - 1 - (1 if models else 0)
    layers: list[Layer] = []
    if len(ordered) > budget:
        layers = [Layer(STORE, (p,)) for p in ordered[:budget - 1]]
        layers.append(Layer(GROUP, tuple(sorted(ordered[budget - 1:]))))
    else:
        layers = [Layer(STORE, (p,)) for p in ordered]
    if models:
        layers.append(Layer(MODEL, tuple(sorted(models))))
    layers.append(Layer(ETC))
    return layers
