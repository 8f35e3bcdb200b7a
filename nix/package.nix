# The model package: trained weights + config + the model's code (build_model and its optional
# pre-/post-processing handler) + the serving runtime + the toolchain, with a manifest of hashes.
# Its closure is all a server needs; `bin/serve` starts it.
#
#   mkPackage { name; model (the [models.NAME] table); training; src; toolchain }
{ lib, runtimeFor, mkCode, pythonStage }:
{
  mkPackage = { name, model, training, src, toolchain }:
    let
      runtime = runtimeFor [ "spec" "stagespec" "prepare" "dtypes" "hashing" "serve/" ];
      get = lib.field "[models.${name}]" model;
      script = get "script" "string" "${name}.py";
      serve = {
        max_batch_size = 32;
        max_wait_ms = 2.0;
        max_body_bytes = 8388608;
      } // (get "serve" "table" { });
      # The server's limits (mlbuild/runtime/serve/package.py SETTING_LIMITS): a bad value would
      # build, then stop the server at start, in its image too.
      limits = {
        max_batch_size = { int = true; lo = 1; hi = 65536; };
        max_wait_ms = { int = false; lo = 0; hi = 10000; };
        max_body_bytes = { int = true; lo = 1024; hi = null; };
      };
      bad = builtins.filter (k: let v = serve.${k}; l = limits.${k}; in
        !((builtins.isInt v || (!l.int && builtins.isFloat v)) && v >= l.lo && (l.hi == null || v <= l.hi)))
        (builtins.attrNames limits);
      describe = k: let l = limits.${k}; in
        "${if l.int then "a whole number" else "a number"} ${if l.hi == null then ">= ${toString l.lo}" else "in ${toString l.lo}..${toString l.hi}"}";
    in
    assert lib.assertMsg (bad == [ ])
      (let k = builtins.head bad; in
        "[models.${name}.serve].${k} is ${lib.show serve.${k}}; it must be ${describe k} (fix it in mlbuild.toml)");
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
        code = mkCode { inherit src script; files = get "code" "strings" [ script ]; what = "[models.${name}].code"; };
        inherit serve;
        runtime = "${runtime}";
        python = "${toolchain}/bin/python";
        toolchain = "${toolchain}";
      };
    };
}
