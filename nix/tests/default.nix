# Unit tests of the Nix library: `nix eval --json -f nix/tests` gives { name = { ok; got; expected; }; }
# (tests/unit/test_nix_lib.py runs it). Evaluation only: nothing is built.
let
  mlbuild = import ../. { };
  lib = mlbuild.lib;
  fixture = ./fixture;
  project = mlbuild.mkProject { src = fixture; };
  variant = mlbuild.mkProject { src = fixture; overrides = { m = { params = { lr = 0.5; }; }; }; };
  gpu = mlbuild.mkProject { src = fixture; overrides = { m = { device = "cuda"; }; }; };
  spec = drv: unfloat (builtins.fromJSON (builtins.unsafeDiscardStringContext drv.spec));
  # lib.specJSON's {"mlbuild-float": [m, e]} back to m * 2^e (as mlbuild.runtime.spec reads it)
  unfloat = v:
    let pow2 = e: if e == 0 then 1.0 else if e > 0 then 2.0 * pow2 (e - 1) else pow2 (e + 1) / 2.0; in
    if builtins.isList v then map unfloat v
    else if builtins.isAttrs v && builtins.attrNames v == [ "mlbuild-float" ]
    then (builtins.elemAt v.mlbuild-float 0) * pow2 (builtins.elemAt v.mlbuild-float 1)
    else if builtins.isAttrs v then builtins.mapAttrs (_: unfloat) v else v;
  wheel = mlbuild.fetchLocked { name = "a-1-py3-none-any.whl"; sha256 = "0000000000000000000000000000000000000000000000000000000000000000"; hint = "mlbuild prefetch"; };
  code = mlbuild.mkCode { src = fixture; files = [ "m.py" "sub/" ]; };
  throws = e: !(builtins.tryEval e).success;
  cases = {
    lib-strings = {
      got = [ (lib.hasPrefix "ab" "abc") (lib.hasSuffix "bc" "abc") (lib.removePrefix "a" "abc") (lib.removeSuffix "c" "abc") ];
      expected = [ true true "bc" "ab" ];
    };
    fetchLocked-is-fixed-output = {
      got = { inherit (wheel) outputHashMode outputHashAlgo name; };
      expected = { outputHashMode = "flat"; outputHashAlgo = "sha256"; name = "a-1-py3-none-any.whl"; };
    };
    mkCode-keeps-only-listed-files = {
      got = builtins.attrNames (builtins.readDir code);
      expected = [ "m.py" "sub" ];
    };
    mkCode-leaves-out-tool-caches = {   # sub/.ipynb_checkpoints is in the fixture
      got = builtins.attrNames (builtins.readDir "${code}/sub");
      expected = [ "helper.py" ];
    };
    project-stages = {
      got = map (a: project.m ? ${a}) [ "model" "package" "validation" "release" "toolchain" "datasets" ]
        ++ [ (project.m.validation ? report) (project.m.drvPath == project.m.package.drvPath) ];
      expected = [ true true true true true true true true ];
    };
    training-inputs = {
      got = let s = spec project.m.model; in { inherit (s) params seed device threads; datasets = builtins.attrNames s.datasets; };
      expected = { params = { lr = 0.1; }; seed = 3; device = "cpu"; threads = 1; datasets = [ "raw" ]; };
    };
    override-changes-only-params = {
      got = [ ((spec variant.m.model).params) (variant.m.model.drvPath != project.m.model.drvPath) ((spec variant.m.model).seed) ];
      expected = [ { lr = 0.5; } true 3 ];
    };
    cuda-needs-a-gpu-builder = {
      got = [ gpu.m.model.requiredSystemFeatures (project.m.model ? requiredSystemFeatures) ];
      expected = [ [ "cuda" ] false ];
    };
    bad-device-is-refused = {
      got = throws (mlbuild.mkProject { src = fixture; overrides = { m = { device = "tpu"; }; }; }).m.model.drvPath;
      expected = true;
    };
    unknown-dataset-is-refused = {
      got = throws (mlbuild.mkProject { src = fixture; overrides = { m = { datasets = [ "nope" ]; }; }; }).m.model.drvPath;
      expected = true;
    };
    lib-field-checks-kinds = {
      got = [ (lib.field "[t]" { a = "x"; } "a" "string" null) (lib.field "[t]" { } "a" "strings" [ "d" ])
              (lib.field "[t]" { a = 2; } "a" "int" 0) (lib.field "[t]" { a = { }; } "a" "table" null)
              (throws (lib.field "[t]" { a = 2; } "a" "string" null)) (throws (lib.field "[t]" { a = [ 1 ]; } "a" "strings" [ ]))
              (throws (lib.field "[t]" { a = 1.5; } "a" "int" 0)) (throws (lib.field "[t]" { a = [ ]; } "a" "table" { })) ];
      expected = [ "x" [ "d" ] 2 { } true true true true ];
    };
    mistyped-model-fields-are-refused = {
      got = map (o: throws (mlbuild.mkProject { src = fixture; overrides = { m = o; }; }).m.model.drvPath)
        [ { script = 3; } { seed = "x"; } { threads = 1.5; } { code = "m.py"; } { datasets = "raw"; } { params = 3; } { device = 1; } ];
      expected = [ true true true true true true true ];
    };
    dataset-is-recursive-fixed-output = {
      got = { inherit (project.datasets.raw) outputHashMode outputHash; };
      expected = { outputHashMode = "recursive"; outputHash = "1111111111111111111111111111111111111111111111111111111111111111"; };
    };
    datasets-are-named-by-hash-and-never-referenced = {
      got = let
        derived = derivation { name = "split"; system = "x86_64-linux"; builder = "/bin/sh"; };
        url = derivation { name = "u"; system = "builtin"; builder = "builtin:fetchurl"; outputHashMode = "flat";
                           outputHash = "2222222222222222222222222222222222222222222222222222222222222222"; };
        input = d: removeAttrs (lib.datasetInput d) [ "path" ];
      in [ (input project.datasets.raw) (input url) (input derived)
           ((spec project.m.model).datasets.raw.of)
           (map (p: "${p}" == project.datasets.raw.outPath) project.m.model.disallowedReferences)
           (map (p: "${p}" == project.datasets.raw.outPath) project.m.validation.report.disallowedReferences) ];
      expected = [ { sha256 = "1111111111111111111111111111111111111111111111111111111111111111"; of = "nar"; }
                   { sha256 = "2222222222222222222222222222222222222222222222222222222222222222"; of = "file"; }
                   { sha256 = null; of = "files"; } "nar" [ true ] [ true ] ];
    };
    missing-wheels-by-pep503-name = {
      got = [ (lib.missingWheels { distributions = [ "numpy" "prometheus-client" ]; } [ "NumPy" "Prometheus_Client" "uvicorn" ])
              (lib.missingWheels { } [ "uvicorn" ]) (lib.distName "zope.Interface_x") ];
      expected = [ [ "uvicorn" ] [ ] "zope-interface-x" ];
    };
    toolchain-lists-its-distributions = {
      got = builtins.filter (d: builtins.elem d [ "prometheus-client" "scikit-learn" "numpy" ]) project.m.toolchain.distributions;
      expected = [ "numpy" "prometheus-client" "scikit-learn" ];
    };
    a-stage-without-its-wheels-is-refused-when-instantiated = {
      got = let
        bare = project.m.toolchain // { distributions = [ "numpy" "torch" "safetensors" ]; };
        pkg = mlbuild.mkPackage { name = "m"; model = { script = "m.py"; }; training = project.m.model; src = fixture; toolchain = bare; };
        training = mlbuild.mkTraining { name = "m"; model = { script = "m.py"; }; src = fixture; toolchain = bare; datasets = { }; };
      in [ (pkg ? name) (throws pkg.drvPath) (throws training.drvPath) (throws project.m.package.drvPath) ];
      expected = [ true true false false ];
    };
    flake-outputs-of-a-project = {
      got = let o = mlbuild.flakeOutputs { src = fixture; }; sys = "x86_64-linux"; in [
        (builtins.attrNames o.packages.${sys}) (builtins.attrNames o.apps.${sys}) (builtins.attrNames o.checks.${sys})
        (o.packages.${sys}.m.drvPath == project.m.drvPath) (o.checks.${sys}.m-validation.drvPath == project.m.validation.drvPath)
        (o.apps.${sys}.serve-m.program == "${project.m.release}/package/bin/serve")   # validated: the release
        (builtins.attrNames o.packages.${sys}.default == builtins.attrNames o.packages.${sys}.m) ];   # .interpreter too
      expected = [ [ "default" "m" ] [ "default" "serve-m" ] [ "m-validation" ] true true true true ];
    };
    thresholds-only-in-the-gate = {
      got = (spec project.m.validation).thresholds;
      expected = { accuracy = 0.9; };
    };
  };
in
builtins.mapAttrs (_: c: c // { ok = c.got == c.expected; }) cases
