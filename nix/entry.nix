# What the driver evaluates for a project folder that has no flake.nix of its own:
#   nix build -f nix/entry.nix --argstr src /path/to/project toolchain
{ src, system ? "x86_64-linux" }:
(import ./default.nix { inherit system; }).mkProject { src = /. + src; }
