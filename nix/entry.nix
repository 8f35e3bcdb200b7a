# What the driver evaluates for a project folder:
#   nix build -f nix/entry.nix --argstr src /path/to/project [--argstr overrides JSON] [--arg dirty true] ATTR
{ src, system ? "x86_64-linux", overrides ? "{}", dirty ? false }:
(import ./default.nix { inherit system; }).mkProject {
  src = /. + src;
  overrides = builtins.fromJSON overrides;
  inherit dirty;
}
