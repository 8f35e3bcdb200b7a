# mkProject: everything a project folder (mlbuild.toml + mlbuild.lock) builds, as attributes.
#
#   mkProject {
#     src;              # the project folder (a path); only the files each stage uses are copied
#     nixpkgs ? null;   # a nixpkgs flake or package set: use its python instead of the snapshot
#   }
#
# Nix reads both files itself (builtins.fromTOML / fromJSON): no driver runs at build time.
{ system, lib, toolchain }:
{
  mkProject = { src, nixpkgs ? null }:
    let
      config = lib.readTOML (src + "/mlbuild.toml") "create it (see the README) in ${toString src}";
      lock = lib.readJSON (src + "/mlbuild.lock") "mlbuild lock";
      name = config.project.name;
      requirements = (config.python or { }).requirements or [ ];
      locked = lock.requirements or [ ];
      fresh = lib.assertMsg (requirements == locked)
        "mlbuild.lock of ${name} was made for requirements ${builtins.toJSON locked}, but mlbuild.toml asks for ${builtins.toJSON requirements}; run `mlbuild lock`";
      tc = assert fresh; toolchain.mkToolchain { inherit lock name nixpkgs; };
    in
    {
      inherit name config lock;
      toolchain = tc;
      interpreter = tc.interpreter;
    };
}
