"""Store paths predicted in Python equal the ones `nix-store --print-fixed-path` printed."""

from mlbuild.storepath import check_output_path, fixed_output_path


def test_recursive_path() -> None:
    assert fixed_output_path("a56770246f1b9adb00a804c967911d120f5fd86a4ac7540ef4abc5ffe82e8fcc", "d", True) == \
        "/nix/store/lifmwrbx8filj6vz3zk86h3nyhdbacx4-d"


def test_flat_path() -> None:
    name = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert fixed_output_path("6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b", name, False) == \
        f"/nix/store/7d3c0x90lw30hzn27ajx7allfy0q33jx-{name}"


def test_check_output_path() -> None:
    """Where Nix 2.8's `nix build --rebuild` left its second build of a valid output (an invalid
    path, found in /nix/store after a check that passed): `mlbuild build --check` removes it."""
    assert check_output_path("/nix/store/qq6yb359bh3x444zzq8djqfs43vrba16-scale-chk-10247.drv",
                             "/nix/store/5icfidj41isnpyqps15fldxfp4hz56wi-scale-chk-10247") == \
        "/nix/store/aqid8lk94ghx99s20k141kzxla6z0qsj-scale-chk-10247"
    assert check_output_path("/nix/store/b5f996czx5rjb5jzx2w2mma46hl3bcg0-big-model.drv",
                             "/nix/store/0mpirc54lh1szahhhcr17n187vpvjlf0-big-model") == \
        "/nix/store/3gbvyf15a2irhjvzkqv391bvlg4jiwrz-big-model"
