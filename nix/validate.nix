# Validation of the packaged model (what is deployed is what is validated).
#
#   mkValidation { name; model; package; src; toolchain; datasets }
#
# [models.NAME.validation]
#   suite = "validate.py"            # defines load(data) -> (inputs, targets); its files' hash
#   code = [ "validate.py" ]         #   is the suite version (default: [ suite ])
#   dataset = "digits-split"         # the held-out dataset
#   thresholds = { accuracy = 0.95; f1_macro = 0.9; }   # a number means >=; or "<= 0.3"
#
# Returns the gate (fails the build, listing each metric, value and threshold, unless every
# threshold is met) with `.report` (the metrics, always built: history and diffs use it).
# Thresholds are inputs of the gate only: changing one never recomputes the metrics.
{ lib, mkCode, pythonStage }:
rec {
  # The suite of [models.NAME.validation], read once for the validation and the monitor:
  # { script; code (store path of its files); dataset (name); data (its derivation); thresholds }.
  validationSuite = { name, model, src, datasets }:
    let
      v = model.validation or (throw ("mlbuild: [models.${name}.validation] is not declared in mlbuild.toml; declare it: "
        + "suite = \"validate.py\" (defines load(data) -> (inputs, targets)), dataset = \"<the held-out dataset>\", "
        + "thresholds = { accuracy = 0.9 } (a regression model: { mae = \"<= 0.5\" }; see the README's Validation section)"));
      get = lib.field "[models.${name}.validation]" v;
      script = get "suite" "string" (throw "mlbuild: [models.${name}.validation] needs suite = \"validate.py\"");
      dataset = get "dataset" "string" (throw "mlbuild: [models.${name}.validation] needs dataset = \"<held-out dataset>\"");
    in
    assert lib.assertMsg (datasets ? ${dataset})
      "[models.${name}.validation].dataset is ${dataset}, which is not a dataset; declared: ${builtins.toJSON (builtins.attrNames datasets)}";
    {
      inherit script dataset;
      code = mkCode { inherit src script; files = get "code" "strings" [ script ]; name = "suite";
                     what = "[models.${name}.validation].${if v ? code then "code" else "suite"}"; };
      data = datasets.${dataset};
      thresholds = get "thresholds" "table" { };
    };

  mkValidation = { name, model, package, src, toolchain, datasets }:
    let
      s = validationSuite { inherit name model src datasets; };
      report = pythonStage {
          name = "${name}-validation-report";
          inherit toolchain;
          module = "validate";
          modules = [ "spec" "prepare" "dtypes" "hashing" "validate" "serve/" ];
          needs = {
            what = "validating [models.${name}]";
            wheels = [ "torch" "safetensors" "numpy" "scikit-learn" ];
          };
          OMP_NUM_THREADS = "1";
          spec = {
            version = 1;
            inherit name;
            package = "${package}";
            suite = s.code;
            inherit (s) script;
            dataset = lib.datasetInput s.data;
            dataset_name = s.dataset;
          };
          # The report names the held-out data by hash: the image carries the report, not the data.
          disallowedReferences = [ s.data ];
        };
      gate = pythonStage {
        name = "${name}-validation";
        inherit toolchain;
        module = "validate";
        entry = "gate_main";
        modules = [ "spec" "hashing" "validate" ];
        spec = {
          version = 1;
          inherit name;
          report = "${report}";
          inherit (s) thresholds;
        };
      };
    in
    gate // { inherit report; };
}
