{
  description = "mlbuild: reproducible ML builds (data, training, packages, images) on Nix";

  # No inputs: everything builds offline from the locked wheels and interpreter snapshots.
  # Users who have nixpkgs pass it to mkProject { nixpkgs = ...; }.
  outputs = { self }:
    let
      system = "x86_64-linux";
      mlbuild = import ./nix { inherit system; };
      digits = mlbuild.mkProject { src = ./examples/digits; };
      cancer = mlbuild.mkProject { src = ./examples/cancer; };
      # Until the model package exists, `digits` is its trained model with every stage as an
      # attribute: .toolchain, .interpreter, .datasets.<name>, .model.
      expose = p: m: p.${m}.model // { inherit (p) toolchain interpreter datasets; inherit (p.${m}) model; };
    in
    {
      lib = mlbuild;
      packages.${system} = {
        digits = expose digits "digits";
        cancer = expose cancer "cancer";
        default = digits.toolchain;
      };
    };
}
