"""The closure graph and the layer plan of images (mlbuild/runtime/oci/graph.py)."""

from __future__ import annotations

import pytest

from mlbuild.runtime.oci.graph import (ETC, GROUP, MODEL, STORE, PlanError, closure, dependents, merge,
                                       parse_registration, plan_layers, popularity)

S = "/nix/store/"


def p(name: str, h: str = "a") -> str:
    return S + h * 32 + "-" + name


INTERP, TC, RT, CODE, SPLIT = p("python-3.11"), p("python-3.11-toolchain"), p("mlbuild-runtime"), p("code"), p("digits-split")
TRAIN, PKG, VAL = p("digits-model", "b"), p("digits-package", "c"), p("digits-validation", "d")

# The digits package's closure, as Nix reports it.
GRAPH = {
    INTERP: (),
    TC: (INTERP,),
    RT: (),
    CODE: (),
    SPLIT: (),
    TRAIN: (CODE, SPLIT, TC),
    PKG: (CODE, RT, SPLIT, TC, TRAIN),
    VAL: (PKG, SPLIT),
}


def registration(graph: dict[str, tuple[str, ...]]) -> str:
    lines = []
    for path, refs in graph.items():
        lines += [path, "", str(len(refs) + 1), path, *refs]  # Nix lists the self-reference too
    return "\n".join(lines) + "\n"


def test_parse_registration_drops_self_references() -> None:
    assert parse_registration(registration(GRAPH)) == {k: tuple(sorted(v)) for k, v in GRAPH.items()}


def test_parse_registration_names_a_truncated_entry() -> None:
    with pytest.raises(PlanError, match="graph-package: line 3"):
        parse_registration(f"{PKG}\n\nthree\n", "graph-package")
    with pytest.raises(PlanError, match="truncated"):
        parse_registration(f"{PKG}\n\n2\n{TC}\n", "g")


def test_merge_needs_a_closed_graph() -> None:
    assert merge([{VAL: (PKG,)}, {PKG: ()}]) == {VAL: (PKG,), PKG: ()}
    with pytest.raises(PlanError, match="digits-package is referenced but not listed"):
        merge([{VAL: (PKG,)}])


def test_closure_dependents_popularity() -> None:
    assert closure(GRAPH, [TRAIN]) == {TRAIN, CODE, SPLIT, TC, INTERP}
    assert dependents(GRAPH, [TRAIN]) == {TRAIN, PKG, VAL}
    pop = popularity(GRAPH)
    assert pop[INTERP] == 4 and pop[TC] == 3 and pop[VAL] == 0 and pop[PKG] == 1


def test_plan_toolchain_first_model_last_etc_on_top() -> None:
    layers = plan_layers(GRAPH, first=[TC], model=[TRAIN])
    assert [l.paths for l in layers[:2]] == [(INTERP,), (TC,)]
    assert {l.paths[0] for l in layers[2:5]} == {RT, CODE, SPLIT}
    assert all(l.kind == STORE for l in layers[:5])
    assert layers[5] == layers[5].__class__(MODEL, tuple(sorted([TRAIN, PKG, VAL])))
    assert layers[5].dedup and not layers[0].dedup
    assert layers[6].kind == ETC and layers[6].paths == ()


def test_retraining_changes_only_the_model_layer() -> None:
    """A new training output (new hash) changes the package and validation paths: the plan of
    every other layer is the same."""
    train2, pkg2, val2 = p("digits-model", "e"), p("digits-package", "f"), p("digits-validation", "g")
    g2 = {k: v for k, v in GRAPH.items() if k not in (TRAIN, PKG, VAL)}
    g2 |= {train2: (CODE, SPLIT, TC), pkg2: (CODE, RT, SPLIT, TC, train2), val2: (pkg2, SPLIT)}
    a, b = plan_layers(GRAPH, first=[TC], model=[TRAIN]), plan_layers(g2, first=[TC], model=[train2])
    assert [x for x, y in zip(a, b) if x != y] == [a[5]]


def test_without_training_every_path_has_a_layer() -> None:
    layers = plan_layers(GRAPH, first=[TC])
    assert [l.kind for l in layers] == [STORE] * 8 + [ETC]


def test_max_layers_groups_the_least_popular() -> None:
    many = {p(f"lib{i:02}"): () for i in range(20)}
    top = p("app", "z")
    graph = {**many, top: tuple(many)}
    layers = plan_layers(graph, max_layers=10)
    assert len(layers) == 10
    assert [l.kind for l in layers] == [STORE] * 8 + [GROUP, ETC]
    grouped = set(layers[8].paths)
    assert top in grouped and len(grouped) == 21 - 8  # the root is the least popular of all
    assert sorted(x for l in layers for x in l.paths) == sorted(graph)


def test_max_layers_too_small() -> None:
    with pytest.raises(PlanError, match="max_layers is 2"):
        plan_layers(GRAPH, max_layers=2)


def test_plan_is_deterministic_whatever_the_input_order() -> None:
    reversed_graph = dict(reversed(list(GRAPH.items())))
    assert plan_layers(reversed_graph, first=[TC], model=[TRAIN]) == plan_layers(GRAPH, first=[TC], model=[TRAIN])
