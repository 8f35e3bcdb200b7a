{
  description = "mlbuild: reproducible ML builds (data, training, packages, images) on Nix";

  # No inputs: everything builds offline from the locked wheels and interpreter snapshots.
  # Users who have nixpkgs pass it to mkProject { nixpkgs = ...; }.
  outputs = { self }:
    let
      system = "x86_64-linux";
      mlbuild = import ./nix { inherit system; };
      digits = mlbuild.mkProject { src = ./examples/digits; };
      # Until the model package exists, `digits` is its toolchain with the stages as attributes.
      expose = p: p.toolchain // { inherit (p) toolchain interpreter; };
    in
    {
      lib = mlbuild;
      packages.${system} = {
        digits = expose digits;
        default = digits.toolchain;
      };
    };
}
