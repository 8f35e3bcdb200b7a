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
  inherit (code) mkCode;
  inherit (import ./stage.nix { inherit system lib runtimeFor; }) pythonStage;
  dataset = import ./dataset.nix { inherit lib mkCode pythonStage; inherit (fetch) fetchLocked; };
  train = import ./train.nix { inherit system lib mkCode pythonStage; };
  package = import ./package.nix { inherit runtimeFor mkCode pythonStage; };
  validate = import ./validate.nix { inherit lib mkCode pythonStage; };
  notebook = import ./notebook.nix { inherit lib mkCode pythonStage; };
  images = import ./image.nix { inherit system lib pythonStage; };
  monitor = import ./monitor.nix { inherit runtimeFor pythonStage; inherit (validate) validationSuite; };
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
