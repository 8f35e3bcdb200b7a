# The mlbuild Nix library. No nixpkgs needed: every builder runs in the toolchain's Python.
#
#   import ./nix { system ? "x86_64-linux"; }
#   -> { lib, fetchLocked, mkInterpreter, mkToolchain, mkProject, flakeOutputs, runtimeFor,
#        mkNotebooks, notebookChecks, mkImage, ... }
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
  package = import ./package.nix { inherit lib runtimeFor mkCode pythonStage; };
  validate = import ./validate.nix { inherit lib mkCode pythonStage; };
  notebook = import ./notebook.nix { inherit lib mkCode pythonStage; };
  images = import ./image.nix { inherit system lib pythonStage; };
  monitor = import ./monitor.nix { inherit runtimeFor pythonStage; inherit (validate) validationSuite; };
  project = import ./project.nix { inherit system lib toolchain dataset train package validate notebook images monitor; };
  # The flake outputs of one project folder, for a project's own flake.nix:
  #   outputs = { self, mlbuild }: mlbuild.lib.flakeOutputs { inherit self; src = ./.; };
  # packages.<system>.<model> (the package; every stage is an attribute: .model, .validation,
  # .image...), apps.<system>.serve-<model> (the package once its validation passed), checks.<system>.<model>-validation for each model
  # with [models.<model>.validation] and the notebooks marked test = true; `default` is the model
  # named like [project].name, else the first model (alphabetically).
  #
  # With `inherit self;`, a build from a dirty git tree (uncommitted changes to tracked files) is
  # marked dirty in its provenance, as `mlbuild build --allow-dirty` marks it: a dirty output never
  # shares a store path with a clean one. (Untracked files are not in a flake's source at all.)
  flakeOutputs = { src, nixpkgs ? null, self ? null }:
    let
      # Nix >= 2.16 gives a dirty tree dirtyRev; older ones just leave rev out (a path: flake,
      # not git, has neither rev nor submodules).
      dirty = self != null && (self ? dirtyRev || (self ? submodules && !(self ? rev)));
      p = project.mkProject { inherit src nixpkgs dirty; };
      models = builtins.attrNames (p.config.models or { });
      each = f: builtins.listToAttrs (map f models);
      first = if builtins.elem p.name models then p.name else builtins.head models;
      # A model named default is the flake's default only where it is `first`; else the default
      # package and app would hide it (`nix build .#default` built another model).
      defaultOk = !(builtins.elem "default" models) || first == "default" || lib.assertMsg false
        ("[models.default]: the flake's default package and app are [models.${first}] (the model named like "
          + "[project].name, else the first), which would hide the model named default; rename the model, "
          + "or set [project].name = \"default\" (mlbuild.toml)");
      default = assert defaultOk; lib.optionalAttrs (models != [ ]);
      validated = builtins.filter (m: p.config.models.${m} ? validation) models;
      # serve-<m> deploys: a model with a validation gate is served only once it passed (its
      # release), as its image is; `nix run .#<m>` runs the package itself, gate or not.
      package = m: p.${m} // { inherit (p) interpreter; };
      app = m: { type = "app"; program = if builtins.elem m validated
        then "${p.${m}.release}/package/bin/serve" else "${p.${m}}/bin/serve"; };
    in
    {
      # No model yet (data first): the default package is the toolchain, with the datasets and
      # notebooks beside it (`nix build .#default.datasets.raw`), as `mlbuild build` builds the
      # toolchain; it was Nix's bare "does not provide attribute packages.x86_64-linux.default".
      packages.${system} = each (m: { name = m; value = package m; })
        // (if models == [ ] then { default = p.toolchain // { inherit (p) interpreter datasets notebooks; }; }
            else default { default = package first; });
      apps.${system} = each (m: { name = "serve-${m}"; value = app m; })
        // default { default = app first; };
      checks.${system} = builtins.listToAttrs (map (m: { name = "${m}-validation"; value = p.${m}.validation; }) validated)
        // notebook.notebookChecks p;
    };
in
{
  inherit lib runtimeFor flakeOutputs;
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
