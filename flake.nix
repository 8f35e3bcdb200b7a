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
      # `digits` is the model package; every stage is an attribute of it: .toolchain,
      # .interpreter, .datasets.<name>, .model (the training run).
      expose = p: m: p.${m} // { inherit (p) interpreter; };
      serve = pkg: { type = "app"; program = "${pkg}/bin/serve"; };
    in
    {
      lib = mlbuild;
      packages.${system} = {
        digits = expose digits "digits";
        cancer = expose cancer "cancer";
        default = digits.digits;
      };
      # `nix flake check` runs the example validations offline (no nixpkgs-backed output here).
      checks.${system} = {
        digits-validation = digits.digits.validation;
        cancer-validation = cancer.cancer.validation;
      } // mlbuild.notebookChecks digits // mlbuild.notebookChecks cancer;
      apps.${system} = {
        serve-digits = serve digits.digits;
        serve-cancer = serve cancer.cancer;
        default = serve digits.digits;
      };
    };
}
