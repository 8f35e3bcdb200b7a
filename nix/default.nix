# The mlbuild Nix library. No nixpkgs needed: every builder runs in the toolchain's Python.
#
#   import ./nix { system ? "x86_64-linux"; }
#   -> { lib, fetchLocked, mkInterpreter, mkToolchain, mkProject, runtimeSrc }
{ system ? "x86_64-linux" }:
let
  lib = import ./lib.nix;
  root = toString ../.;
  # Only mlbuild/__init__.py and mlbuild/runtime/ go into builds: editing the driver (CLI,
  # lock code) rebuilds nothing.
  runtimeSrc = builtins.path {
    name = "mlbuild-runtime";
    path = ../.;
    filter = path: type:
      let rel = lib.removePrefix (root + "/") (toString path);
      in (rel == "mlbuild" || rel == "mlbuild/__init__.py" || rel == "mlbuild/runtime"
          || lib.hasPrefix "mlbuild/runtime/" rel)
         && baseNameOf path != "__pycache__" && !(lib.hasSuffix ".pyc" rel);
  };
  fetch = import ./fetch.nix { inherit system; };
  toolchain = import ./toolchain.nix { inherit system lib runtimeSrc; inherit (fetch) fetchLocked; };
  project = import ./project.nix { inherit system lib toolchain; };
in
{
  inherit lib runtimeSrc;
  inherit (fetch) fetchLocked;
  inherit (toolchain) mkInterpreter mkToolchain;
  inherit (project) mkProject;
}
