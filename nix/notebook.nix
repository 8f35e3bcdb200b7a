# Notebooks as derivations: a project notebook run top to bottom, headless, in the toolchain.
#
#   mkNotebooks { src; config; toolchain; datasets; } -> { NAME = <derivation>; ... }
#   notebookChecks project -> { "<project>-notebook-<NAME>" = <derivation>; ... }  (test = true)
#
# [notebooks.NAME]
#   path = "explore.ipynb"          the notebook, relative to the project (required)
#   datasets = [ "digits-raw" ]     inputs: DATA[name] in the notebook is the store path
#   params = { ... }                PARAMS in the notebook (default {})
#   code = [ "explore.ipynb" ... ]  the project files it uses (default: [ path ]); nothing else
#                                   of the project is an input
#   timeout = 600                   seconds per cell
#   test = true | false             run by `mlbuild notebook check` and the flake's checks
#                                   (not an input: flipping it rebuilds nothing)
#
# The output holds the executed notebook (<path's file name>), outputs/ (what the notebook
# writes to OUTPUTS) and summary.json. Input-addressed: an unchanged notebook, unchanged data and
# an unchanged toolchain give the same store path, so it is not run again. The builder is
# mlbuild/runtime/notebook.py (ipykernel over ipc sockets; HOME and Jupyter folders in the
# build's temporary folder).
{ lib, mkCode, pythonStage }:
rec {
  mkNotebooks = { src, config, toolchain, datasets }:
    builtins.mapAttrs (name: t:
      let
        where = "[notebooks.${name}]";
        # Checked as the driver checks them (mlbuild/notebook/config.py): a string for datasets or a
        # number for path was Nix's bare "value is a string while a list was expected", and
        # params = 3 built, then failed in the notebook's first cell.
        get = lib.field where t;
        path = get "path" "string" (throw "mlbuild: ${where} needs path = \"<notebook>.ipynb\"");
        wanted = get "datasets" "strings" [ ];
        unknown = builtins.filter (d: !(datasets ? ${d})) wanted;
        test = t.test or false;
        timeout = t.timeout or 600;
      in
      assert lib.assertMsg (lib.hasSuffix ".ipynb" path)
        "${where}.path is ${builtins.toJSON path}; it must name a .ipynb file";
      assert lib.assertMsg (unknown == [ ])
        "${where}.datasets names ${builtins.toJSON unknown}, which are not datasets; declared: ${builtins.toJSON (builtins.attrNames datasets)}";
      assert lib.assertMsg (builtins.isBool test)
        "${where}.test is ${builtins.toJSON test}; use true or false";
      assert lib.assertMsg (builtins.isInt timeout && timeout > 0)
        "${where}.timeout is ${builtins.toJSON timeout}; use a whole number of seconds > 0 (timeout = 600, a TOML integer)";
      pythonStage {
        name = "${name}-notebook";
        inherit toolchain;
        module = "notebook";
        modules = [ "spec" "prepare" "notebook" ];
        needs = { what = "running ${where}"; wheels = [ "nbclient" "nbformat" "ipykernel" ]; };
        spec = {
          version = 1;
          notebook = name;
          inherit path timeout;
          code = mkCode { inherit src; files = t.code or [ path ]; what = if t ? code then "${where}.code" else "${where}.path"; };
          datasets = builtins.listToAttrs (map (d: { name = d; value = "${datasets.${d}}"; }) wanted);
          params = get "params" "table" { };
          toolchain = "${toolchain}";
        };
      } // { inherit test; }
    ) (config.notebooks or { });

  # The notebooks marked test = true, named for a flake's `checks`:
  #   checks.${system} = mlbuild.notebookChecks digits // mlbuild.notebookChecks cancer;
  notebookChecks = project:
    let tests = builtins.filter (n: project.notebooks.${n}.test) (builtins.attrNames project.notebooks);
    in builtins.listToAttrs (map (n: {
      name = "${project.name}-notebook-${n}";
      value = project.notebooks.${n};
    }) tests);
}
