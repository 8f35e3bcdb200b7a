# Training runs as derivations.
#
#   mkTraining { name; model; src; toolchain; datasets; dirty ? false }
#
# `model` is the [models.NAME] table (with experiment overrides merged into params):
#   script   = "model.py"          the module defining build_model(params) and train(ctx)
#   code     = [ "model.py" ... ]  the files the model uses (default: [ script ]); nothing else
#                                  of the project is an input
#   datasets = [ "digits-split" ]  dataset names (ctx.data[name] is the store path)
#   params   = { ... }             hyper-parameters (ctx.params)
#   seed = 0; device = "cpu" | "cuda"; threads = 1
#
# device = "cuda" sets requiredSystemFeatures = [ "cuda" ]: Nix sends the build to a builder
# that has a GPU (see store-config/README.md). CPU training is bit-reproducible.
{ system, lib, mkCode, pythonStage }:
{
  mkTraining = { name, model, src, toolchain, datasets, dirty ? false }:
    let
      where = "[models.${name}]";
      get = lib.field where model;
      script = get "script" "string" "${name}.py";
      device = get "device" "string" "cpu";
      threads = get "threads" "int" 1;
      wanted = get "datasets" "strings" [ ];
      unknown = builtins.filter (d: !(datasets ? ${d})) wanted;
    in
    assert lib.assertMsg (builtins.elem device [ "cpu" "cuda" ])
      "[models.${name}].device is ${builtins.toJSON device}; use \"cpu\" or \"cuda\"";
    assert lib.assertMsg (threads >= 1)
      "[models.${name}].threads is ${toString threads}; it must be 1 or more (the CPU threads training uses)";
    assert lib.assertMsg (unknown == [ ])
      "[models.${name}].datasets names ${builtins.toJSON unknown}, which are not datasets; declared: ${builtins.toJSON (builtins.attrNames datasets)}";
    pythonStage ({
      name = "${name}-model";
      inherit toolchain;
      module = "train";
      modules = [ "spec" "prepare" "determinism" "dtypes" "hashing" "train" ];
      # numpy: ctx.save_reference (the drift statistics)
      needs = { what = "training ${where}"; wheels = [ "torch" "safetensors" "numpy" ]; };
      spec = {
        version = 1;
        model = name;
        inherit script device system dirty;
        module = lib.removeSuffix ".py" script;
        code = mkCode {
          inherit src script;
          files = get "code" "strings" [ script ];
          what = if model ? code then "${where}.code" else if model ? script then "${where}.script"
                 else "${where}.script (default: ${script})";
        };
        datasets = builtins.listToAttrs (map (d: {
          name = d;
          value = lib.datasetInput datasets.${d};
        }) wanted);
        params = get "params" "table" { };
        seed = get "seed" "int" 0;
        inherit threads;
        toolchain = "${toolchain}";
        interpreter = toolchain.pythonVersion;
      };
      # The outputs record the datasets' hashes, not their paths (lib.datasetInput): a reference
      # would put the training data into the package's closure and its image.
      disallowedReferences = map (d: datasets.${d}) wanted;
    } // lib.optionalAttrs (device == "cuda") {
      requiredSystemFeatures = [ "cuda" ];
      # The host driver's libcuda, bound into the sandbox (store-config/README.md, GPU builders).
      LD_LIBRARY_PATH = "/run/opengl-driver/lib";
    });
}
