"""The Nix library's own unit tests (nix/tests/default.nix), evaluated by real Nix (nothing built)."""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from tests.conftest import REPO, have_nix

pytestmark = pytest.mark.skipif(not have_nix(), reason="needs nix (bash .ci/setup installs it)")


def nix_eval(expr: str, *flags: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """``nix eval --impure [FLAGS] --expr EXPR`` (the result checked by the caller)."""
    return subprocess.run(["nix", "--extra-experimental-features", "nix-command", "eval", "--impure", *flags,
                           "--expr", expr], capture_output=True, text=True, timeout=timeout)


def evaluates_or_names(out: subprocess.CompletedProcess[str], message: str | None) -> None:
    """A ``nix_eval`` that must succeed (``message`` None) or fail with ``message`` in its stderr."""
    if message is None:
        assert out.returncode == 0, out.stderr
    else:
        assert out.returncode != 0 and message in out.stderr, out.stderr


def dataset_drv(lock: dict, name: str, table: dict) -> str:
    """The expression of the drvPath of dataset ``name`` declared as ``table``, pinned by ``lock``
    (mlbuild.lock's contents), in a project at /tmp."""
    config = {"datasets": {name: table}}
    return (f'(((import {REPO / "nix"} {{ }}).mkDatasets {{ src = /tmp; toolchain = null; '
            f'lock = builtins.fromJSON {json.dumps(json.dumps(lock))}; '
            f'config = builtins.fromJSON {json.dumps(json.dumps(config))}; }}).{name}.drvPath)')


def cases() -> dict:
    out = subprocess.run(["nix", "--extra-experimental-features", "nix-command", "eval", "--json", "-f",
                          str(REPO / "nix" / "tests")], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


_CASES = cases() if have_nix() else {}


@pytest.mark.parametrize("name", sorted(_CASES) or ["none"])
def test_nix_case(name: str) -> None:
    case = _CASES[name]
    assert case["ok"], f"{name}: got {case['got']!r}, expected {case['expected']!r}"


@pytest.mark.skipif(not have_nix(), reason="needs nix")
def test_a_toml_syntax_error_names_the_file(tmp_path) -> None:
    """fromTOML's own message shows the bad line but not the file; mlbuild adds it (shown by
    default from Nix 2.20 on, with --show-trace before)."""
    bad = tmp_path / "mlbuild.toml"
    bad.write_text('[project]\nname = "x\n')
    expr = f'(import {REPO / "nix" / "lib.nix"}).readTOML {bad} "create it"'
    out = subprocess.run(["nix", "--extra-experimental-features", "nix-command", "eval", "--show-trace",
                          "--impure", "--expr", expr], capture_output=True, text=True)
    assert out.returncode != 0 and f"while reading {bad} (mlbuild: fix the TOML there)" in out.stderr, out.stderr


@pytest.mark.skipif(not have_nix(), reason="needs nix")
@pytest.mark.parametrize(("inputs", "chain"), [
    ({"a": ["b"], "b": ["c"], "c": ["a"]}, "a -> b -> c -> a"),
    ({"a": ["a"]}, "a -> a"),
    ({"a": ["b", "c"], "b": ["c"], "c": ["raw"]}, None),    # shared inputs are no cycle
])
def test_a_derived_dataset_that_is_its_own_input_is_named(inputs: dict, chain: str | None) -> None:
    """It was Nix's bare "infinite recursion encountered", naming no dataset."""
    tables = {n: {"prepare": "p.py", "inputs": i} for n, i in inputs.items()} | {"raw": {"path": "data/raw"}}
    expr = (f'(((import {REPO / "nix"} {{ }}).mkDatasets {{ src = /tmp; lock = {{ }}; toolchain = null; '
            f'config = builtins.fromJSON {json.dumps(json.dumps({"datasets": tables}))}; }}).a.name)')
    out = nix_eval(expr)
    if chain is None:
        assert out.returncode == 0 and out.stdout.strip() == '"a"', out.stderr
    else:
        assert out.returncode != 0 and f"[datasets.a] inputs lead back to it ({chain})" in out.stderr, out.stderr


@pytest.mark.skipif(not have_nix(), reason="needs nix")
@pytest.mark.parametrize("name", ["../outside.py", "/tmp/outside.py", "lib/../../x"])
def test_code_outside_the_project_is_named_so(name: str) -> None:
    """`script = "../x.py"` was "names ../x.py, which does not exist" though it does (outside)."""
    expr = (f'((import {REPO / "nix"} {{ }}).mkCode {{ src = {REPO / "nix" / "tests" / "fixture"}; '
            f'files = [ "m.py" {json.dumps(name)} ]; what = "[models.m].code"; }}).name')
    out = nix_eval(expr)
    assert out.returncode != 0 and (f"[models.m].code names {name}, which is outside the project: a build sees only "
                                    "the project folder's files") in out.stderr, out.stderr


@pytest.mark.skipif(not have_nix(), reason="needs nix")
@pytest.mark.parametrize(("files", "ok"), [(["m.py"], True), (["other.py", "m.py"], True),
                                            (["lib/"], False), (["other.py"], False)])
def test_code_that_leaves_out_the_script_is_named(files: list, ok: bool, tmp_path) -> None:
    """`code = ["lib/"]` without the script built, then failed in importlib: a FileNotFoundError
    for <code store path>/m.py, naming neither the key nor the fix."""
    for f in ("m.py", "other.py", "lib/x.py"):
        (tmp_path / f).parent.mkdir(exist_ok=True)
        (tmp_path / f).write_text("")
    expr = (f'((import {REPO / "nix"} {{ }}).mkCode {{ src = {tmp_path}; script = "m.py"; '
            f'files = {json.dumps(files).replace(",", "")}; what = "[datasets.d]"; }}) != ""')
    evaluates_or_names(nix_eval(expr), None if ok else (
        f"[datasets.d]: code = {json.dumps(files, separators=(',', ':'))} leaves out m.py, the script the stage runs "
        '(a build sees only the code files): add "m.py" to code'))


@pytest.mark.skipif(not have_nix(), reason="needs nix")
@pytest.mark.parametrize("entry", [{"kind": "path"}, {"kind": "path", "sha256": "zz"}, "x",
                                   {"sha256": "AB" * 32}, {"sha256": "ab" * 32}])
def test_a_dataset_pin_that_is_no_sha256_is_named(entry: object) -> None:
    """A hand-edited or merged lock: Nix said "attribute 'sha256' missing" or "invalid hash", naming
    no dataset and no fix."""
    expr = dataset_drv({"datasets": {"raw": entry}}, "raw", {"path": "data/raw"})
    ok = entry in ({"sha256": "ab" * 32}, {"sha256": "AB" * 32})   # in either case, as Nix reads it
    evaluates_or_names(nix_eval(expr), None if ok else (
        f"mlbuild: mlbuild.lock pins dataset raw as {json.dumps(entry, separators=(',', ':'))}, with no sha256 of 64 "
        "hex digits (a hand edit or a merge); run `mlbuild data add raw data/raw` where its files are"))


@pytest.mark.skipif(not have_nix(), reason="needs nix")
@pytest.mark.parametrize(("url", "ok"), [("data/raw.csv", False), (" http://h/x.csv", False), ("http://h/a b", False),
                                         ("https://h/x.csv", True), ("file:///srv/x.csv", True)])
def test_a_url_that_is_no_url_is_named(url: str, ok: bool) -> None:
    """A relative path was curl's "Couldn't resolve host name", a leading space its "bad/illegal format"."""
    expr = dataset_drv({}, "r", {"url": url, "sha256": "ab" * 32})
    evaluates_or_names(nix_eval(expr), None if ok else (
        f"[datasets.r].url is {json.dumps(url)}, not a URL (scheme://...: https://, http://, file:///); a file of this "
        'machine is a local dataset: path = "..." instead of url and sha256, pinned by `mlbuild data add r PATH`'))


@pytest.mark.skipif(not have_nix(), reason="needs nix")
def test_the_cycle_check_walks_shared_inputs_once() -> None:
    """Datasets each of which uses every one before it: the check walked every path, 2^n of them
    (30 datasets took minutes to evaluate, where Nix alone takes milliseconds)."""
    tables = {"raw": {"path": "data/raw"}} | {
        f"d{k}": {"prepare": "p.py", "inputs": ["raw", *(f"d{j}" for j in range(k))]} for k in range(30)}
    expr = (f'(((import {REPO / "nix"} {{ }}).mkDatasets {{ src = /tmp; lock = {{ }}; toolchain = null; '
            f'config = builtins.fromJSON {json.dumps(json.dumps({"datasets": tables}))}; }}).d29.name)')
    out = nix_eval(expr, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == '"d29"', out.stderr


def model_spec(params_expr: str) -> str:
    """The fixture's model spec (the JSON text its builder reads) with ``params_expr`` (a Nix
    expression) as its params."""
    expr = (f'builtins.unsafeDiscardStringContext ((import {REPO / "nix"} {{ }}).mkProject {{ '
            f'src = {REPO / "nix" / "tests" / "fixture"}; overrides = {{ m = {{ params = {params_expr}; }}; }}; }})'
            '.m.model.spec')
    out = nix_eval(expr, "--raw")
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.skipif(not have_nix(), reason="needs nix")
def test_a_specs_floats_are_exact_and_alike_in_every_nix_version() -> None:
    """builtins.toJSON wrote a float with 6 significant digits in Nix 2.8 (lr = 0.1234567891
    trained with 0.123457) and exactly, `2.0` for 2.8's `2`, in later versions: Debian 12 and 13 gave
    a project other store paths, so CI retrained what a developer had pushed to the shared store."""
    from mlbuild.runtime.stagespec import read_spec

    params = {"lr": 0.1234567891, "scale": 2.0, "big": 1234567.0, "tiny": 1e-7, "neg": -2.5, "zero": 0.0, "n": 3}
    text = model_spec(f"builtins.fromJSON {json.dumps(json.dumps(params))}")
    got = read_spec(text)["params"]
    assert got == params and all(type(got[k]) is type(v) for k, v in params.items()), got
    # the text every Nix version writes: the binary value's integers, no float literal
    assert json.loads(text)["params"]["scale"] == {"mlbuild-float": [4503599627370496, -51]}


@pytest.mark.skipif(not have_nix(), reason="needs nix")
def test_a_params_table_named_like_the_float_encoding_is_read_back_as_that_table() -> None:
    """A param that is a table whose one key is mlbuild-float ({"mlbuild-float": [1, 2]}) reached the
    training as the float 4.0 (and {"mlbuild-float": "nan"} as nan): specJSON wraps it once more."""
    from mlbuild.runtime.stagespec import read_spec

    params = {"t": {"mlbuild-float": [1, 2]}, "u": {"mlbuild-float": "nan"},
              "v": {"mlbuild-float": {"mlbuild-float": 1.5}}, "w": [{"mlbuild-float": [0.5, 3]}],
              "x": {"mlbuild-float": 1, "other": 2.5}}
    text = model_spec(f"builtins.fromJSON {json.dumps(json.dumps(params))}")
    got = read_spec(text)["params"]
    assert {k: got[k] for k in params} == params, got


@pytest.mark.skipif(not have_nix(), reason="needs nix")
def test_a_negative_zero_param_keeps_its_sign() -> None:
    """lr = -0.0 in mlbuild.toml reached the training (and its provenance.json) as 0.0."""
    from mlbuild.runtime.stagespec import read_spec

    text = model_spec('builtins.fromTOML "z = -0.0\\nl = [-0.0, 0.0]"')
    got = read_spec(text)["params"]
    assert [math.copysign(1, v) for v in (got["z"], *got["l"])] == [-1, -1, 1], got


@pytest.mark.skipif(not have_nix(), reason="needs nix")
def test_a_float_in_a_message_is_shown_with_15_significant_digits() -> None:
    """lib.show: Nix 2.8's builtins.toJSON printed 6 digits, so a message said max_wait_ms = 10000.0001
    "is 10000; it must be ... in 0..10000"."""
    values = [10000.0001, 1.0000001, 1e-7, 2.0, 0.003, 1e20, 0.1, -2.5, 1e308, 1234567.0, 0.1234567891, 95.5, 7]
    expr = (f'map (import {REPO / "nix" / "lib.nix"}).show (builtins.fromJSON {json.dumps(json.dumps(values))})')
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["10000.0001", "1.0000001", "1e-7", "2.0", "0.003", "1e20", "0.1", "-2.5", "1e308",
                                      "1234567.0", "0.1234567891", "95.5", "7"]
