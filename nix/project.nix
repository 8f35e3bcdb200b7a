# mkProject: everything a project folder (mlbuild.toml + mlbuild.lock) builds, as attributes.
#
#   mkProject {
#     src;                  # the project folder (a path); only the files each stage uses are copied
#     nixpkgs ? null;       # a nixpkgs flake or package set: use its python instead of the snapshot
#     overrides ? { };      # { MODEL = { params = { lr = 0.01; }; }; }  (mlbuild exp run --set)
#     dirty ? false;        # built from a dirty worktree (mlbuild build --allow-dirty)
#   }
#   -> { name config lock toolchain interpreter datasets notebooks.<n> models.<m> <m> }
#      <m> is the model package, with .model (the training run), .package, .toolchain, .datasets,
#      .notebooks, .image (nix/image.nix); notebooks.<n> runs [notebooks.<n>] (nix/notebook.nix)
#
# Nix reads both files itself (builtins.fromTOML / fromJSON): no driver runs at build time.
{ system, lib, toolchain, dataset, train, package, validate, notebook, images, monitor }:
{
  mkProject = { src, nixpkgs ? null, overrides ? { }, dirty ? false }:
    let
      config = lib.readTOML (src + "/mlbuild.toml") "create it (see the README) in ${toString src}";
      lock = lib.readJSON (src + "/mlbuild.lock") "mlbuild lock";
      name = config.project.name;
      requirements = (config.python or { }).requirements or [ ];
      locked = lock.requirements or [ ];
      fresh = lib.assertMsg (requirements == locked)
        "mlbuild.lock of ${name} was made for requirements ${builtins.toJSON locked}, but mlbuild.toml asks for ${builtins.toJSON requirements}; run `mlbuild lock`";
      tc = assert fresh; toolchain.mkToolchain { inherit lock name nixpkgs; };
      datasets = dataset.mkDatasets { inherit src config lock; toolchain = tc; };
      notebooks = notebook.mkNotebooks { inherit src config datasets; toolchain = tc; };
      unknownOverrides = builtins.filter (m: !((config.models or { }) ? ${m})) (builtins.attrNames overrides);
      withOverrides = m: table:
        let o = overrides.${m} or { };
        in table // o // { params = (lib.field "[models.${m}]" table "params" "table" { }) // (lib.field "overrides.${m}" o "params" "table" { }); };
      models = assert lib.assertMsg (unknownOverrides == [ ])
        "overrides name models ${builtins.toJSON unknownOverrides} that mlbuild.toml does not declare";
        builtins.mapAttrs (m: table:
          let
            spec = withOverrides m table;
            model = train.mkTraining { name = m; model = spec; inherit src datasets dirty; toolchain = tc; };
            pkg = package.mkPackage { name = m; model = spec; training = model; inherit src; toolchain = tc; };
            validation = validate.mkValidation {
              name = m; model = spec; package = pkg; inherit src datasets; toolchain = tc;
            };
            # A release: the package, only once its validation passed.
            release = derivation {
              name = "${m}-release";
              inherit system;
              builder = "${tc}/bin/python";
              args = [ "-s" "-c" "import os, sys; os.mkdir(os.environ['out']); [os.symlink(p, os.path.join(os.environ['out'], n)) for n, p in (('package', sys.argv[1]), ('validation', sys.argv[2]))]" "${pkg}" "${validation}" ];
              PATH = "${tc}/bin";
            };
            # The OCI image (nix/image.nix): the package, only once its validation passed;
            # [models.<m>.image] sets mkImage's options (port, uid, gid, user, tag, labels, maxLayers).
            image = images.mkImage ((spec.image or { }) // {
              name = m; package = pkg; training = model; toolchain = tc; inherit validation nixpkgs;
            });
            # The validation suite against a live server (nix/monitor.nix).
            monitorOf = monitor.mkMonitor { name = m; model = spec; package = pkg; inherit src datasets; toolchain = tc; };
          in
          # `nix build .#<m>` is the package; its stages are attributes of it.
          pkg // { inherit model validation release image; monitor = monitorOf; package = pkg; toolchain = tc; inherit datasets notebooks; }
        ) (config.models or { });
    in
    {
      inherit name config lock datasets notebooks models;
      toolchain = tc;
      interpreter = tc.interpreter;
    } // models;
}
