# The monitor of a model: its validation suite run against a live server (mlbuild/runtime/monitor.py).
#
#   mkMonitor { name; model; package; src; toolchain; datasets }
#   -> $out/bin/monitor --url http://host:8080 [--once] [--interval 60] [--port 9109] [--webhook URL]
#
# Uses [models.NAME.validation] (suite, dataset, thresholds): the same metric names and suite
# version as the validation build, computed on what the live server answers. The suite's
# load(data) runs at build time: the monitor holds those held-out rows (heldout/*.npy), not the
# dataset, whose split holds the training rows too.
{ runtimeFor, pythonStage, validationSuite }:
{
  mkMonitor = { name, model, package, src, toolchain, datasets }:
    let
      s = validationSuite { inherit name model src datasets; };
    in
    pythonStage {
      name = "${name}-monitor";
      inherit toolchain;
      module = "monitor";
      entry = "build_main";
      modules = [ "spec" "prepare" "hashing" "monitor" ];
      needs = { what = "the monitor of [models.${name}]"; wheels = [ "numpy" "scikit-learn" "prometheus-client" ]; };
      spec = {
        version = 1;
        inherit name;
        package = "${package}";
        suite = s.code;
        inherit (s) script thresholds;
        dataset = "${s.data}";
        runtime = "${runtimeFor [ "spec" "stagespec" "prepare" "hashing" "validate" "monitor" ]}";
        python = "${toolchain}/bin/python";
      };
    };
}
