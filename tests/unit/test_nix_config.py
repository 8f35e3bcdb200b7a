"""mlbuild.toml as Nix reads it (nix/project.nix): an unknown key or a bad value is an error naming
it, never silently ignored. Real Nix evaluates a copy of nix/tests/fixture with one edit each."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, have_nix

pytestmark = pytest.mark.skipif(not have_nix(), reason="needs nix (bash .ci/setup installs it)")

FIXTURE = REPO / "nix" / "tests" / "fixture"


def evaluate(tmp_path: Path, edit: tuple[str, str] | None, attr: str = "m.validation.drvPath",
             function: str = "mkProject", args: str = "") -> subprocess.CompletedProcess[str]:
    src = tmp_path / "p"
    shutil.copytree(FIXTURE, src)
    if edit is not None:
        text = (src / "mlbuild.toml").read_text()
        old, new = edit
        assert old in text
        (src / "mlbuild.toml").write_text(text.replace(old, new))
    expr = f"(import {REPO / 'nix'} {{ }}).{function} {{ src = {json.dumps(str(src))}; {args} }}"
    return subprocess.run(["nix", "--extra-experimental-features", "nix-command", "eval", "--impure", "--raw",
                           "--expr", f"({expr}).{attr}"], capture_output=True, text=True)


def test_the_fixture_evaluates(tmp_path: Path) -> None:
    proc = evaluate(tmp_path, None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith(".drv")


def test_a_url_datasets_sha256_in_upper_case_is_the_same_fetch(tmp_path: Path) -> None:
    """Nix's outputHash takes hex in either case (PowerShell's Get-FileHash prints upper case): a
    project that `nix build` fetched before the check came in was refused by it."""
    sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    paths = []
    for i, given in enumerate((sha, sha.upper())):
        proc = evaluate(tmp_path / str(i), ('path = "data/raw"', f'url = "https://example.org/raw.csv"\nsha256 = "{given}"'),
                        attr="datasets.raw.outPath")
        assert proc.returncode == 0, proc.stderr
        paths.append(proc.stdout)
    assert paths[0] == paths[1]
    # the training records it as written, as mlbuild 282d028 did (lowercased, it was another
    # derivation: a model trained before the upgrade trained again)
    proc = evaluate(tmp_path / "spec", ('path = "data/raw"', f'url = "https://example.org/raw.csv"\nsha256 = "{sha.upper()}"'),
                    attr="m.model.spec")
    assert json.loads(proc.stdout)["datasets"]["raw"]["sha256"] == sha.upper(), proc.stdout + proc.stderr
    # the driver too: it refused the upper-case one as not "<64 hex digits>"
    from mlbuild.config import load_project
    from mlbuild.data.remote import dataset_paths
    assert dataset_paths(load_project(tmp_path / "1" / "p"), ["raw"]) == {"raw": paths[0]}


@pytest.mark.parametrize("edit, message", [
    # [datasets.NAME] values: Nix's bare "cannot coerce an integer to a string", its "hash 'abc' has
    # wrong length" naming no dataset, and url = 3 evaluated (a fetch of "3")
    (('path = "data/raw"', "path = 3"), "[datasets.raw].path is 3; it must be a string (mlbuild.toml)"),
    (('path = "data/raw"', 'url = "https://example.org/raw.csv"\nsha256 = "abc"'),
     '[datasets.raw].sha256 is "abc"; it must be the file\'s sha256 as 64 hex digits'),
    (('path = "data/raw"', f'url = 3\nsha256 = "{"0" * 64}"'), "[datasets.raw].url is 3; it must be a string"),
    # a misspelled thresholds table would have turned the validation gate off
    (("thresholds = {", "threshold = {"),
     '[models.m.validation] has unknown key "threshold"; it takes "suite", "code", "dataset", "thresholds"'),
    (("seed = 3", "seed = 3\nsed = 1"), '[models.m] has unknown key "sed"; it takes "script", "code"'),
    (('name = "fixture"', 'name = "fixture"\nnmae = "x"'), '[project] has unknown key "nmae"; it takes "name"'),
    (("[models.m]\n", "[modles.foo]\nx = 1\n\n[models.m]\n"), 'mlbuild.toml has unknown key "modles"'),
    (('path = "data/raw"', 'path = "data/raw"\nprepare = "p.py"'),
     '[datasets.raw] (a local dataset: path) has unknown key "prepare"; it takes "path"'),
    (("[models.m.params]", "[models.m.serve]\nmax_batch = 4\n\n[models.m.params]"),
     '[models.m.serve] has unknown key "max_batch"; it takes "max_batch_size", "max_wait_ms", "max_body_bytes"'),
    (("accuracy = 0.9", 'accuracy = "high"'),
     '[models.m.validation].thresholds.accuracy is "high"; use a number'),
    (("accuracy = 0.9", 'accuracy = "=< 0.3"'), '[models.m.validation].thresholds.accuracy is "=< 0.3"'),
    # an error metric's bare number means >= it: the worse models would pass
    (("accuracy = 0.9", "mae = 60"),
     '[models.m.validation].thresholds.mae is 60, a bare number, which means mae >= 60; mae is better lower: '
     'write mae = "<= 60"'),
    (("[models.m]\n", '[models."a.b"]\nscript = "m.py"\n\n[models.m]\n'),
     '[models."a.b"]: "a.b" is not a valid name; use letters, digits, - and _'),
    # [models.m.serve] values: they built, then stopped the server at start ("rebuild the package")
    (("[models.m.params]", "[models.m.serve]\nmax_batch_size = 0\n\n[models.m.params]"),
     "[models.m.serve].max_batch_size is 0; it must be a whole number in 1..65536 (fix it in mlbuild.toml)"),
    (("[models.m.params]", '[models.m.serve]\nmax_batch_size = "x"\n\n[models.m.params]'),
     '[models.m.serve].max_batch_size is "x"; it must be a whole number in 1..65536'),
    (("[models.m.params]", "[models.m.serve]\nmax_wait_ms = -1\n\n[models.m.params]"),
     "[models.m.serve].max_wait_ms is -1; it must be a number in 0..10000"),
    # a float as mlbuild.toml has it, not Nix 2.8's 6 digits ("is 10000; it must be ... in 0..10000")
    (("[models.m.params]", "[models.m.serve]\nmax_wait_ms = 10000.0001\n\n[models.m.params]"),
     "[models.m.serve].max_wait_ms is 10000.0001; it must be a number in 0..10000"),
    (("accuracy = 0.9", "accuracy = 1.0000001"),
     "[models.m.validation].thresholds.accuracy is 1.0000001, but accuracy is a fraction from 0 to 1, so no model can "
     "reach it; write it as a fraction (1.0000001% is 0.010000001)"),
    (("seed = 3", "seed = 3.0000001"), "[models.m].seed is 3.0000001; it must be an integer"),
    (("[models.m.params]", "[models.m.serve]\nmax_body_bytes = 10\n\n[models.m.params]"),
     "[models.m.serve].max_body_bytes is 10; it must be a whole number >= 1024"),
    # a percent for a fraction: no model can reach it
    (("accuracy = 0.9", "f1_macro = 90"),
     "[models.m.validation].thresholds.f1_macro is 90, but f1_macro is a fraction from 0 to 1, so no model can "
     "reach it; write it as a fraction (90% is 0.9)"),
    (("accuracy = 0.9", "r2 = 1.5"),
     "[models.m.validation].thresholds.r2 is 1.5, but r2 is at most 1 (a perfect fit), so no model can reach it"),
    (('script = "m.py"\ncode = ["m.py", "sub/"]', "script = 3"), "[models.m].script is 3; it must be a string"),
    (('code = ["m.py", "sub/"]', 'code = "m.py"'), '[models.m].code is "m.py"; it must be a list of strings'),
    (("seed = 3", "seed = 3\nthreads = 0"), "[models.m].threads is 0; it must be 1 or more"),
    # a lock made for other [python] settings (the build used the old snapshot without a word)
    (('interpreter = "python3.11"', 'interpreter = "python3.12"'),
     'was made for [python].interpreter "python3.11", but mlbuild.toml has "python3.12"; run `mlbuild lock`'),
    (('requirements = ["numpy"]', 'requirements = ["numpy"]\nlibraries = ["libfoo.so.1"]'),
     'was made for [python].libraries [], but mlbuild.toml has ["libfoo.so.1"]; run `mlbuild lock`'),
    # TOML's nan and inf: JSON cannot carry them, and the builder failed on its own spec
    (("accuracy = 0.9", "accuracy = nan"), "[models.m.validation].thresholds.accuracy is nan, not a finite number; use"),
    (("accuracy = 0.9", "accuracy = -inf"), "[models.m.validation].thresholds.accuracy is infinite, not a finite number"),
    # a fraction's gate below 0 passes every model
    (("accuracy = 0.9", 'rmse = "<= -1"'),
     '[models.m.validation].thresholds.rmse is "<= -1", but rmse is an error, never below 0, so no model can reach it'),
    (("accuracy = 0.9", "accuracy = -0.5"),
     "[models.m.validation].thresholds.accuracy is -0.5, but accuracy is a fraction from 0 to 1, so every model "
     "passes it and the gate checks nothing"),
    # a typo in a table's name declared another model, and left the real one without its gate
    (("[models.m.validation]", "[models.mm.validation]"),
     "[models.mm] has no script, and its default mm.py does not exist; declared by [models.mm.validation] "
     '(a typo of [models.m]?): set script = "..." in [models.mm], create mm.py, or fix the table\'s name'),
    (("[models.m]\n", "[models.n]\nseed = 1\n\n[models.m]\n"),
     "[models.n] has no script, and its default n.py does not exist; declared by [models.n] (a typo of [models.m]?)"),
    (('dataset = "raw"', 'dataset = "rw"'),
     '[models.m.validation].dataset is rw, which is not a dataset; declared: ["raw"]'),
    (('suite = "m.py"', 'suite = "v.py"'), "[models.m.validation].suite names v.py, which does not exist in"),
    # no [project] name: it was Nix's bare "attribute 'project' missing" (the driver names it)
    (('[project]\nname = "fixture"\n', ""), 'mlbuild.toml needs a [project] table with name = "..."'),
    (('name = "fixture"', "name = 3"), "[project].name is 3; use letters, digits, - and _, starting with a letter"),
    # a model named like one of mkProject's own attributes replaced it: `mlbuild build toolchain`
    # built the model, and a model `config` left the flake without packages
    (("[models.m]\n", '[models.toolchain]\nscript = "m.py"\n\n[models.m]\n'),
     '[models.toolchain]: "toolchain" is a name mlbuild uses itself'),
    (("[models.m]\n", '[models.config]\nscript = "m.py"\n\n[models.m]\n'),
     "rename the model, e.g. [models.config-model]"),
])
def test_a_bad_key_or_value_is_an_error_naming_it(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    proc = evaluate(tmp_path, edit)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize("image, message", [
    ("port = 0", "[models.m.image].port is 0, not a TCP port; use a whole number in 1..65535"),
    ('uid = "1000"', '[models.m.image].uid and .gid are "1000" and 1000; both must be whole numbers >= 0 (no quotes)'),
    # the runtime kept the low 32 bits: the server ran as root (uid 0)
    ("uid = 4294967296", "[models.m.image].uid and .gid are 4294967296 and 1000; both must be at most 4294967294"),
    ("gid = 4294967295", "[models.m.image].uid and .gid are 1000 and 4294967295; both must be at most 4294967294"),
    ('user = "Root"', '[models.m.image].user is "Root", not a valid user name; use lowercase letters, digits, _ and -'),
    # /etc/passwd had root twice (uid 0 and uid 1000): the server's uid 1000 looked like root
    ('user = "root"', '[models.m.image].user is "root" with uid 1000; root is uid 0\'s name in the image\'s /etc/passwd'),
    ("maxLayers = 200", "[models.m.image].maxLayers is 200; use 3..125"),
    ('labels = { "mlbuild.model" = "x" }', '[models.m.image].labels: "mlbuild.model" is mlbuild\'s own'),
])
def test_image_options_are_named_by_their_table(tmp_path: Path, image: str, message: str) -> None:
    """They were named as mkImage's arguments (`mkImage: port 0 is not a TCP port`), which
    mlbuild.toml never shows."""
    proc = evaluate(tmp_path, ("[models.m.params]", f"[models.m.image]\n{image}\n\n[models.m.params]"),
                    attr="m.image.drvPath")
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize("model", ["m_-x", "m___x", "m_"])
def test_a_model_name_that_is_no_image_name_is_refused(tmp_path: Path, model: str) -> None:
    """Its image was built, then podman load and docker load refused it: 'invalid reference format'."""
    proc = evaluate(tmp_path, ("[models.m]\n", f'[models.{model}]\nscript = "m.py"\n\n[models.m]\n'),
                    attr=f'"{model}".image.drvPath')
    assert proc.returncode != 0
    assert (f'[models.{model}.image]: name "{model}" is not a valid image name (lowercase letters and digits, '
            "separated by one . or _, by __ or by dashes: podman and docker load no other); the image takes the "
            "model's name: rename the model") in proc.stderr, proc.stderr
    ok = evaluate(tmp_path / "ok", ("[models.m]\n", '[models.m__x--Y]\nscript = "m.py"\n\n[models.m]\n'),
                  attr='"m__x--Y".image.name')
    assert "is not a valid image name" not in ok.stderr, ok.stderr


@pytest.mark.parametrize("table, message", [
    # Nix's bare "value is a string while a list was expected" / "cannot coerce an integer to a string"
    ('path = "n.ipynb"\ndatasets = "raw"', '[notebooks.n].datasets is "raw"; it must be a list of strings (mlbuild.toml)'),
    ('path = "n.ipynb"\ndatasets = [3]', "[notebooks.n].datasets is [3]; it must be a list of strings"),
    ("path = 3", "[notebooks.n].path is 3; it must be a string (mlbuild.toml)"),
    # built, then failed in the notebook's first cell (PARAMS = {**PARAMS, **3})
    ('path = "n.ipynb"\nparams = 3', "[notebooks.n].params is 3; it must be a table (mlbuild.toml)"),
])
def test_a_bad_notebook_value_is_an_error_naming_it(tmp_path: Path, table: str, message: str) -> None:
    """`nix build` and `nix flake check` read [notebooks.NAME] without the driver, which checks these."""
    proc = evaluate(tmp_path, ("[models.m]\n", f'[notebooks.n]\n{table}\ncode = ["m.py"]\n\n[models.m]\n'),
                    attr="notebooks.n.drvPath")
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    ok = evaluate(tmp_path / "ok", ("[models.m]\n", '[notebooks.n]\npath = "n.ipynb"\ndatasets = ["raw"]\n'
                                    'params = { a = 1 }\ncode = ["m.py"]\n\n[models.m]\n'), attr="notebooks.n.drvPath")
    assert ok.returncode == 0, ok.stderr


def test_a_lock_made_on_another_system_is_named(tmp_path: Path) -> None:
    """A lock made on aarch64-linux (its snapshot and wheels are aarch64's) built for x86_64-linux:
    the snapshot's loader failed with "Exec format error", or aarch64 wheels went into the toolchain."""
    src = tmp_path / "p"
    shutil.copytree(FIXTURE, src)
    lock = json.loads((src / "mlbuild.lock").read_text())
    lock["interpreter"]["system"] = "aarch64-linux"
    (src / "mlbuild.lock").write_text(json.dumps(lock))
    for attr in ("m.model.drvPath", "interpreter.drvPath"):
        proc = subprocess.run(["nix", "--extra-experimental-features", "nix-command", "eval", "--impure", "--raw",
                               "--expr", f"((import {REPO / 'nix'} {{ }}).mkProject {{ src = {src}; }}).{attr}"],
                              capture_output=True, text=True)
        assert proc.returncode != 0
        assert ("mlbuild.lock was made on aarch64-linux (its interpreter snapshot and wheels are for it), but this "
                "Nix library builds for x86_64-linux: run `mlbuild lock` on a machine of x86_64-linux") in proc.stderr, \
            proc.stderr
    ok = subprocess.run(["nix", "--extra-experimental-features", "nix-command", "eval", "--impure", "--raw", "--expr",
                         f"((import {REPO / 'nix'} {{ system = \"aarch64-linux\"; }}).mkProject {{ src = {src}; }}).m.model.drvPath"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("value", ['"<= 0.3"', '">=0.5"', '" > 1e-3 "', "1", "0.25", '"< .5"'])
def test_thresholds_in_every_documented_form_are_accepted(tmp_path: Path, value: str) -> None:
    proc = evaluate(tmp_path, ("accuracy = 0.9", f"accuracy = {value}"))
    assert proc.returncode == 0, proc.stderr


def test_an_unknown_input_dataset_lists_the_declared_ones(tmp_path: Path) -> None:
    proc = evaluate(tmp_path, ("[datasets.raw]", '[datasets.split]\nprepare = "p.py"\ninputs = ["rw"]\n\n[datasets.raw]'),
                    attr="datasets.split.drvPath")
    assert proc.returncode != 0
    assert '[datasets.split] inputs names ["rw"], which are not datasets; declared: ["raw","split"]' in proc.stderr, proc.stderr


@pytest.mark.parametrize("name, ok", [("m", False), ("fixture", True), ("default", True)])
def test_a_model_named_default_is_not_hidden_by_the_flakes_default(tmp_path: Path, name: str, ok: bool) -> None:
    """flakeOutputs' `default` is the model named like [project].name: a second model named
    default was hidden by it (`nix build .#default` built model m)."""
    edit = ('name = "fixture"\n', f'name = "{name}"\n[models.default]\nscript = "m.py"\n\n')
    proc = evaluate(tmp_path, edit, attr='packages.x86_64-linux.default.name', function="flakeOutputs")
    if ok:
        assert proc.returncode == 0 and proc.stdout == "default-package", proc.stderr
    else:
        assert proc.returncode != 0
        assert ("[models.default]: the flake's default package and app are [models.m] (the model named like "
                "[project].name, else the first), which would hide the model named default") in proc.stderr, proc.stderr


def test_a_project_without_models_builds_its_toolchain_and_datasets_from_the_flake(tmp_path: Path) -> None:
    """A project with data and no model yet: `nix build` said the flake "does not provide
    attribute packages.x86_64-linux.default", and its datasets had no flake attribute at all."""
    text = (FIXTURE / "mlbuild.toml").read_text()
    edit = (text[text.index("[models.m]"):], "")
    for attr, name in [("default.name", "python-3.11.7-toolchain"), ("default.datasets.raw.name", "raw")]:
        proc = evaluate(tmp_path / attr, edit, attr=f"packages.x86_64-linux.{attr}", function="flakeOutputs")
        assert proc.returncode == 0 and proc.stdout == name, proc.stderr


@pytest.mark.parametrize("args, message", [
    # a misspelled key was ignored: the variant trained with the configured seed
    ("overrides = { m = { sed = 1; }; };",
     'overrides.m has unknown key "sed"; it takes "script", "code", "datasets", "params", "seed"'),
    # these ended in Nix's bare "value is an integer while a set was expected"
    ("overrides = { m = 3; };", "overrides.m is 3; it must be a table (mkProject's overrides)"),
    ('overrides = "{}";', "mkProject's overrides is \"{}\"; it must be an attribute set { MODEL = { params"),
    # a string was taken as true
    ('dirty = "no";', "mkProject's dirty is \"no\"; it must be true or false"),
    # nixpkgs: "value is an integer while a set was expected", "attribute 'python311' missing"
    ("nixpkgs = 3;", "mkProject's nixpkgs is 3; pass the nixpkgs flake input (or its legacyPackages.x86_64-linux)"),
    ("nixpkgs = { legacyPackages.x86_64-linux = { }; };",
     "the nixpkgs passed to mkProject has no python311, the Python of mlbuild.lock's interpreter (3.11"),
])
def test_a_bad_mkproject_argument_is_an_error_naming_it(tmp_path: Path, args: str, message: str) -> None:
    proc = evaluate(tmp_path, None, attr="m.model.drvPath", args=args)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_an_override_of_params_is_taken(tmp_path: Path) -> None:
    assert evaluate(tmp_path, None, attr="m.model.drvPath", args="overrides = { m.params.lr = 1; }; dirty = true;").returncode == 0


@pytest.mark.parametrize("src", ['"./."', "3"])
def test_a_src_that_is_no_folder_path_is_named(src: str) -> None:
    """They ended in Nix's bare "string './mlbuild.toml' doesn't represent an absolute path" and
    "cannot add a string to an integer"."""
    expr = f"((import {REPO / 'nix'} {{ }}).flakeOutputs {{ src = {src}; }}).packages.x86_64-linux.m.drvPath"
    proc = subprocess.run(["nix", "--extra-experimental-features", "nix-command", "eval", "--impure", "--raw",
                           "--expr", expr], capture_output=True, text=True)
    assert proc.returncode != 0
    assert f"mkProject's src is {src}; it must be the project folder as a path: src = ./.; (no quotes)" in proc.stderr, \
        proc.stderr
