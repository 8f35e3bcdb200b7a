"""Store paths predicted in Python equal the ones `nix-store --print-fixed-path` printed."""

from mlbuild.storepath import fixed_output_path


def test_recursive_path() -> None:
    assert fixed_output_path("a56770246f1b9adb00a804c967911d120f5fd86a4ac7540ef4abc5ffe82e8fcc", "d", True) == \
        "/nix/store/lifmwrbx8filj6vz3zk86h3nyhdbacx4-d"


def test_flat_path() -> None:
    name = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert fixed_output_path("6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b", name, False) == \
        f"/nix/store/7d3c0x90lw30hzn27ajx7allfy0q33jx-{name}"
