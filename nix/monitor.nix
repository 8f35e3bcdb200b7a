# The monitor of a model: its validation suite run against a live server (mlbuild/runtime/monitor.py).
#
#   mkMonitor { name; model; package; src; toolchain; datasets }
#   -> $out/bin/monitor --url http://host:8080 [--once] [--interval 60] [--port 9109] [--webhook URL]
#
# Uses [models.NAME.validation] (suite, dataset, thresholds): the same metric names and suite
# version as the validation build, computed on what the live server answers.
{ system, lib, runtimeFor, mkCode }:
{
  mkMonitor = { name, model, package, src, toolchain, datasets }:
    let
      v = model.validation or (throw "mlbuild: the monitor of ${name} needs [models.${name}.validation]");
      suite = v.suite or (throw "mlbuild: [models.${name}.validation] needs suite = \"validate.py\"");
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
        suite = mkCode { inherit src; files = v.code or [ suite ]; name = "suite"; what = "[models.${name}.validation]"; };
        script = suite;
        dataset = "${datasets.${v.dataset}}";
        thresholds = v.thresholds or { };
        runtime = "${runtimeFor [ "spec" "prepare" "hashing" "validate" "monitor" ]}";
        python = "${toolchain}/bin/python";
      };
      passAsFile = [ "spec" ];
    };
}
