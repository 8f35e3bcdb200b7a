"""The nixpkgs backend of images evaluates: `mkProject { nixpkgs = ...; }` gives `.digits.image`
from `dockerTools.streamLayeredImage` with mlbuild's layout conventions.

nixpkgs cannot be fetched here, so a stub stands in for it: it has the attributes mlbuild uses
(python3XX, stdenv.cc, glibc, zlib, dockerTools.streamLayeredImage with nixpkgs' documented
arguments) and records what streamLayeredImage was called with. Nothing is built.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e

STUB = """
let
  drv = name: derivation { inherit name; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; };
  python = drv "python3-3.11.7";
  streamWith = pipeline:
    if pipeline
    then ({ name, tag ? null, config ? { }, maxLayers ? 100, extraCommands ? "", layeringPipeline ? null, ... }@args:
            drv "stream-${name}" // { inherit args; })
    else ({ name, tag ? null, config ? { }, maxLayers ? 100, extraCommands ? "", ... }@args:
            drv "stream-${name}" // { inherit args; });
  pkgs = pipeline: {
    python311 = python; python312 = python; python313 = python;
    glibc = drv "glibc"; zlib = drv "zlib";
    stdenv.cc = { bintools.dynamicLinker = "${drv "glibc"}/lib/ld-linux-x86-64.so.2"; cc.lib = drv "gcc-lib"; };
    dockerTools.streamLayeredImage = streamWith pipeline;
  };
  project = pipeline: (import REPO/nix { }).mkProject {
    src = REPO/examples/digits;
    nixpkgs = { legacyPackages.x86_64-linux = pkgs pipeline; };
  };
  show = pipeline:
    let
      img = (project pipeline).digits.image;
      builtin = (import REPO/nix { }).mkProject { src = REPO/examples/digits; };
    in {
      inherit (img) backend imageName;
      drv = img.drvPath;
      spec = builtins.fromJSON (builtins.unsafeDiscardStringContext img.spec);
      args = img.stream.args;
      builtinBackend = builtin.digits.image.backend;
      training = "${(project pipeline).digits.model}";
      package = "${(project pipeline).digits}";
    };
in { withPipeline = show true; withoutPipeline = show false; }
"""


@pytest.fixture(scope="module")
def evaluated() -> dict:  # type: ignore[type-arg]
    expr = STUB.replace("REPO", str(REPO))
    proc = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "--expr", expr],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_nixpkgs_backend_uses_stream_layered_image(evaluated: dict) -> None:  # type: ignore[type-arg]
    r = evaluated["withPipeline"]
    assert r["backend"] == "dockerTools" and r["builtinBackend"] == "builtin"
    assert r["drv"].endswith("-digits-image.tar.drv") and r["imageName"] == "digits"
    assert r["spec"]["backend"] == "repack" and r["spec"]["stream"].endswith("-stream-digits")
    cfg = r["args"]["config"]
    assert cfg["User"] == "1000:1000" and cfg["ExposedPorts"] == {"8080/tcp": {}}
    # host and port in the entrypoint: `podman run IMAGE ARGS...` replaces Cmd, not them
    assert cfg["Entrypoint"] == [f"{r['package']}/bin/serve", "--host", "0.0.0.0", "--port", "8080"]
    assert cfg["Cmd"] == []
    assert cfg["Labels"]["mlbuild.package"] == r["package"]
    assert "chmod 1777 tmp" in r["args"]["extraCommands"]
    assert "mlbuild:x:1000:1000:" in r["args"]["extraCommands"]


def test_training_and_dependents_share_the_last_store_layer(evaluated: dict) -> None:  # type: ignore[type-arg]
    r = evaluated["withPipeline"]
    pipeline = r["args"]["layeringPipeline"]
    assert pipeline[0] == ["subcomponent_in", [r["training"]]]
    assert pipeline[1] == ["over", "rest", ["pipe", [["popularity_contest"], ["limit_layers", 98], ["reverse"]]]]
    assert pipeline[2:] == [["flatten"], ["reverse"]]


def test_older_nixpkgs_falls_back_to_max_layers(evaluated: dict) -> None:  # type: ignore[type-arg]
    r = evaluated["withoutPipeline"]
    assert "layeringPipeline" not in r["args"] and r["args"]["maxLayers"] == 100


def test_bad_image_options_name_the_value() -> None:
    expr = (f"(import {REPO}/nix {{ }}).mkImage {{ name = \"Digits Model\"; package = \"/nix/store/x\"; "
            f"validation = \"/nix/store/y\"; toolchain = \"/nix/store/z\"; }}")
    proc = subprocess.run(["nix-instantiate", "--eval", "--expr", f"({expr}).drvPath"], capture_output=True, text=True)
    assert proc.returncode != 0 and 'name "Digits Model" is not a valid image name' in proc.stderr
    expr2 = expr.replace('"Digits Model"', '"digits"').replace("; }", "; maxLayers = 500; }")
    proc = subprocess.run(["nix-instantiate", "--eval", "--expr", f"({expr2}).drvPath"], capture_output=True, text=True)
    assert proc.returncode != 0 and "maxLayers is 500" in proc.stderr


def test_labels_may_not_replace_mlbuilds_own() -> None:
    """A user's "mlbuild.model.sha256" label overwrote the real hash in the image config."""
    base = (f"(import {REPO}/nix {{ }}).mkImage {{ name = \"digits\"; package = \"/nix/store/x\"; "
            f"validation = \"/nix/store/y\"; toolchain = \"/nix/store/z\"; labels = LABELS; }}")
    for key in ("mlbuild.model.sha256", "org.opencontainers.image.version"):
        expr = base.replace("LABELS", f'{{ team = "ml"; "{key}" = "spoof"; }}')
        proc = subprocess.run(["nix-instantiate", "--eval", "--expr", f"({expr}).drvPath"], capture_output=True,
                              text=True)
        assert proc.returncode != 0 and f'.labels: "{key}" is mlbuild\'s own' in proc.stderr, proc.stderr[-2000:]
    ok = base.replace("LABELS", '{ team = "ml"; "org.opencontainers.image.source" = "https://example.com/repo"; }')
    proc = subprocess.run(["nix-instantiate", "--eval", "--expr", f"({ok}).drvPath"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
