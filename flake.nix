{
  description = "mlbuild: reproducible ML builds (data, training, packages, images) on Nix";

  # No inputs: everything builds offline from the locked wheels and interpreter snapshots.
  # Users who have nixpkgs pass it to mkProject { nixpkgs = ...; } (or flakeOutputs).
  outputs = { self }:
    let
      system = "x86_64-linux";
      mlbuild = import ./nix { inherit system; };
      # A project's own flake is `outputs = { self, mlbuild }: mlbuild.lib.flakeOutputs { inherit self; src = ./.; };`
      # (as `mlbuild init` writes it; `self` marks builds from a dirty tree dirty).
      # Here two example projects share one flake: `digits` and `cancer` are their model packages
      # (every stage an attribute: .model, .validation, .image...), `serve-digits` and
      # `serve-cancer` their servers; the defaults are digits'.
      digits = mlbuild.flakeOutputs { src = ./examples/digits; };
      cancer = mlbuild.flakeOutputs { src = ./examples/cancer; };
      merge = out: cancer.${out}.${system} // digits.${out}.${system};
    in
    {
      lib = mlbuild;
      packages.${system} = merge "packages";
      apps.${system} = merge "apps";
      # `nix flake check` runs the example validations and test notebooks offline.
      checks.${system} = merge "checks";
    };
}
