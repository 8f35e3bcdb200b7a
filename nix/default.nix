# The mlbuild Nix library. No nixpkgs needed: every builder runs in the toolchain's Python.
#
#   import ./nix { system ? "x86_64-linux"; }
#   -> { lib, fetchLocked, mkInterpreter, mkToolchain, mkProject, runtimeFor, mkNotebooks,
#        notebookChecks, mkImage, ... }
{ system ? "x86_64-linux" }:
let
  lib = import ./lib.nix;
  root = toString ../.;
  # Only mlbuild/__init__.py and mlbuild/runtime/ go into builds: editing the driver (CLI,
  # lock code) rebuilds nothing. `runtimeFor [ "elf" ]` holds only the named runtime modules,
  # so a builder's derivation changes only when the code it runs changes.
  runtimeFilter = keep: path: type:
    let rel = lib.removePrefix (root + "/") (toString path);
    in baseNameOf path != "__pycache__" && !(lib.hasSuffix ".pyc" rel)
       && (rel == "mlbuild" || rel == "mlbuild/__init__.py" || rel == "mlbuild/runtime"
           || rel == "mlbuild/runtime/__init__.py" || keep rel);
  # `runtimeFor [ "train" "serve/" ]`: runtime modules (X.py) and subpackages (X/).
  runtimeFor = modules: builtins.path {
    name = "mlbuild-runtime";
    path = ../.;
    filter = runtimeFilter (rel: builtins.any (m:
      if lib.hasSuffix "/" m
      then rel == "mlbuild/runtime/${lib.removeSuffix "/" m}" || lib.hasPrefix "mlbuild/runtime/${m}" rel
      else rel == "mlbuild/runtime/${m}.py") modules);
  };
  fetch = import ./fetch.nix { inherit system; };
  toolchain = import ./toolchain.nix { inherit system lib runtimeFor; inherit (fetch) fetchLocked; };
  code = import ./code.nix { inherit lib; };
  dataset = import ./dataset.nix {
    inherit system lib runtimeFor;
    inherit (fetch) fetchLocked;
    inherit (code) mkCode;
    inherit (lib) builderCode;
  };
  train = import ./train.nix {
    inherit system lib runtimeFor;
    inherit (code) mkCode;
    inherit (lib) builderCode;
  };
  package = import ./package.nix {
    inherit system lib runtimeFor;
    inherit (code) mkCode;
    inherit (lib) builderCode;
  };
  validate = import ./validate.nix {
    inherit system lib runtimeFor;
    inherit (code) mkCode;
    inherit (lib) builderCode;
  };
  notebook = import ./notebook.nix {
    inherit system lib runtimeFor;
    inherit (code) mkCode;
    inherit (lib) builderCode;
  };
  images = import ./image.nix {
    inherit system lib runtimeFor;
    inherit (lib) builderCode;
  };
  monitor = import ./monitor.nix {
    inherit system lib runtimeFor;
    inherit (validate) validationSuite;
  };
  project = import ./project.nix { inherit system lib toolchain dataset train package validate notebook images monitor; };
in
{
  inherit lib runtimeFor;
  inherit (fetch) fetchLocked;
  inherit (toolchain) mkInterpreter mkToolchain;
  inherit (project) mkProject;
  inherit (code) mkCode;
  inherit (dataset) mkDatasets;
  inherit (train) mkTraining;
  inherit (package) mkPackage;
  inherit (validate) mkValidation;
  inherit (images) mkImage;
  inherit (monitor) mkMonitor;
  inherit (notebook) mkNotebooks notebookChecks;
}
