# The model package: trained weights + config + the model's code (build_model and its optional
# pre-/post-processing handler) + the serving runtime + the toolchain, with a manifest of hashes.
# Its closure is all a server needs; `bin/serve` starts it.
#
#   mkPackage { name; model (the [models.NAME] table); training; src; toolchain }
{ lib, runtimeFor, mkCode, pythonStage }:
{
  mkPackage = { name, model, training, src, toolchain }:
    let
      runtime = runtimeFor [ "spec" "prepare" "hashing" "serve/" ];
      get = lib.field "[models.${name}]" model;
      script = get "script" "string" "${name}.py";
    in
    pythonStage {
      name = "${name}-package";
      inherit toolchain;
      module = "package";
      modules = [ "spec" "hashing" "package" ];
      # What bin/serve imports (httptools and uvloop, uvicorn's fast parser and loop, are optional).
      needs = {
        what = "the server of [models.${name}] (its package)";
        wheels = [ "torch" "safetensors" "numpy" "starlette" "uvicorn" "prometheus-client" ];
      };
      spec = {
        version = 1;
        inherit name;
        model = "${training}";
        code = mkCode { inherit src; files = get "code" "strings" [ script ]; what = "[models.${name}].code"; };
        serve = {
          max_batch_size = 32;
          max_wait_ms = 2.0;
          max_body_bytes = 8388608;
        } // (get "serve" "table" { });
        runtime = "${runtime}";
        python = "${toolchain}/bin/python";
        toolchain = "${toolchain}";
      };
    };
}
