# The monitor of a model: its validation suite run against a live server (mlbuild/runtime/monitor.py).
#
#   mkMonitor { name; model; package; src; toolchain; datasets }
#   -> $out/bin/monitor --url http://host:8080 [--once] [--interval 60] [--port 9109] [--webhook URL]
#
# Uses [models.NAME.validation] (suite, dataset, thresholds): the same metric names and suite
# version as the validation build, computed on what the live server answers.
{ system, lib, runtimeFor, validationSuite }:
{
  mkMonitor = { name, model, package, src, toolchain, datasets }:
    let
      s = validationSuite { inherit name model src datasets; };
    in
    derivation {
      name = "${name}-monitor";
      inherit system;
      builder = "${toolchain}/bin/python";
      args = [ "-s" "-c" "import sys; sys.path.insert(0, sys.argv[1]); from mlbuild.runtime.monitor import build_main; build_main()"
               (runtimeFor [ "spec" "hashing" "monitor" ]) ];
      PATH = "${toolchain}/bin";
      PYTHONDONTWRITEBYTECODE = "1";
      spec = builtins.toJSON {
        version = 1;
        inherit name;
        package = "${package}";
        suite = s.code;
        inherit (s) script thresholds;
        dataset = "${s.data}";
        runtime = "${runtimeFor [ "spec" "prepare" "hashing" "validate" "monitor" ]}";
        python = "${toolchain}/bin/python";
      };
      passAsFile = [ "spec" ];
    };
}
