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
let
  # Every key mlbuild.toml takes, table by table (the README documents each): an unknown key is an
  # error naming it, so that a misspelled one (`threshold`, `sed`, `[modles.x]`) is not ignored.
  # [models.NAME.params] and [datasets.NAME].params are the user's own and are not checked here.
  keys = {
    top = [ "project" "python" "datasets" "models" "notebooks" "store" ];
    project = [ "name" ];
    python = [ "interpreter" "requirements" "libraries" ];
    store = [ "path" "secret-key" "public-keys" "keep-last" "zstd-level" "fsync-nars" "push" ];
    model = [ "script" "code" "datasets" "params" "seed" "device" "threads" "validation" "serve" "image" ];
    validation = [ "suite" "code" "dataset" "thresholds" ];
    serve = [ "max_batch_size" "max_wait_ms" "max_body_bytes" ];
    image = [ "port" "uid" "gid" "user" "tag" "labels" "maxLayers" ];
    notebook = [ "path" "datasets" "test" "timeout" "code" "params" ];
    pathDataset = [ "path" ];
    urlDataset = [ "url" "sha256" ];
    preparedDataset = [ "prepare" "inputs" "params" "code" "seed" ];
  };
  # A threshold: a finite number (>=) or "<op> number" with op one of >= <= > <. TOML's nan and inf
  # are floats that JSON (the builder's spec) cannot carry.
  finite = v: builtins.isInt v || (builtins.isFloat v && v == v && v < 1.0e308 && v > -1.0e308);
  isNumber = v: builtins.isInt v || builtins.isFloat v;
  thresholdOk = v: finite v || (builtins.isString v
    && builtins.match "[ ]*(>=|<=|>|<)[ ]*[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?[ ]*" v != null);
  # Error metrics, better lower: a bare number (>= it) would pass the worse models
  # (mlbuild/runtime/validate.py's LOWER_IS_BETTER).
  lowerIsBetter = [ "mae" "rmse" "mse" "mape" "loss" "log_loss" ];
  # Fractions 0..1 (validate.py's is_fraction): a bare number above 1 (a percent) fails every model.
  isFraction = k: builtins.elem k [ "accuracy" "balanced_accuracy" "roc_auc" ]
    || builtins.match "(precision|recall|f1)(_.*)?" k != null;
  checkModel = m: t:
    let
      where = "[models.${m}]";
      sub = key: known: !(t ? ${key}) || lib.checkKeys "[models.${m}.${key}]" known t.${key};
      thresholds = (t.validation or { }).thresholds or { };
      bad = builtins.filter (k: !(thresholdOk thresholds.${k})) (builtins.attrNames thresholds);
      bare = builtins.filter (k: builtins.elem k lowerIsBetter && (builtins.isInt thresholds.${k} || builtins.isFloat thresholds.${k}))
        (builtins.attrNames thresholds);
      percent = builtins.filter (k: isFraction k && finite thresholds.${k} && thresholds.${k} > 1) (builtins.attrNames thresholds);
      # a fraction is never below 0: a gate below it passes every model
      negative = builtins.filter (k: isFraction k && finite thresholds.${k} && thresholds.${k} < 0) (builtins.attrNames thresholds);
      # an error is never below 0: "<= -1" fails every model
      belowZero = builtins.filter (k: builtins.elem k lowerIsBetter && builtins.isString thresholds.${k}
        && builtins.match "[ ]*(<=|<)[ ]*-[0-9]*[.]?[0-9]*[1-9][0-9]*([eE][-+]?[0-9]+)?[ ]*" thresholds.${k} != null)
        (builtins.attrNames thresholds);
      # r2 is at most 1 (a perfect fit) but may be negative: validate.py's AT_MOST_ONE.
      aboveOne = builtins.filter (k: k == "r2" && (builtins.isInt thresholds.${k} || builtins.isFloat thresholds.${k})
        && thresholds.${k} > 1) (builtins.attrNames thresholds);
    in
    lib.checkKeys where keys.model t && sub "validation" keys.validation && sub "serve" keys.serve
    && sub "image" keys.image
    && (!(builtins.isAttrs thresholds) || lib.assertMsg (bad == [ ])
      (let k = builtins.head bad; v = thresholds.${k}; in "[models.${m}.validation].thresholds.${k} is "
        + (if isNumber v then (if v != v then "nan" else "infinite") + ", not a finite number" else lib.show v) + "; "
        + "use a number (the metric must be >= it) or a string \"<op> number\" with op one of >= <= > < (e.g. \"<= 0.3\")"))
    && (!(builtins.isAttrs thresholds) || lib.assertMsg (bare == [ ])
      (let k = builtins.head bare; v = lib.show thresholds.${k}; in
        "[models.${m}.validation].thresholds.${k} is ${v}, a bare number, which means ${k} >= ${v}; "
        + "${k} is better lower: write ${k} = \"<= ${v}\""))
    && (!(builtins.isAttrs thresholds) || lib.assertMsg (percent == [ ])
      (let k = builtins.head percent; v = lib.show thresholds.${k}; in
        "[models.${m}.validation].thresholds.${k} is ${v}, but ${k} is a fraction from 0 to 1, so no model can reach it; "
        + "write it as a fraction (${v}% is ${lib.show (thresholds.${k} / 100.0)})"))
    && (!(builtins.isAttrs thresholds) || lib.assertMsg (negative == [ ])
      (let k = builtins.head negative; in
        "[models.${m}.validation].thresholds.${k} is ${lib.show thresholds.${k}}, but ${k} is a fraction from 0 "
        + "to 1, so every model passes it and the gate checks nothing; use a fraction, e.g. ${k} = 0.9"))
    && (!(builtins.isAttrs thresholds) || lib.assertMsg (belowZero == [ ])
      (let k = builtins.head belowZero; in
        "[models.${m}.validation].thresholds.${k} is ${lib.show thresholds.${k}}, but ${k} is an error, never "
        + "below 0, so no model can reach it; give a bound of 0 or more, e.g. ${k} = \"<= 0.5\""))
    && (!(builtins.isAttrs thresholds) || lib.assertMsg (aboveOne == [ ])
      (let k = builtins.head aboveOne; in
        "[models.${m}.validation].thresholds.${k} is ${lib.show thresholds.${k}}, but ${k} is at most 1 "
        + "(a perfect fit), so no model can reach it; use a value below 1, e.g. ${k} = 0.9"));
  checkDataset = d: t:
    let where = "[datasets.${d}]";
    in if !(builtins.isAttrs t) then lib.checkKeys where [ ] t
       else if t ? path then lib.checkKeys "${where} (a local dataset: path)" keys.pathDataset t
       else if t ? url then lib.checkKeys "${where} (a url dataset)" keys.urlDataset t
       else if t ? prepare then lib.checkKeys "${where} (a derived dataset: prepare)" keys.preparedDataset t
       else true;   # dataset.nix says it needs one of path, url or prepare
  checkAll = f: tables: builtins.all (n: f n tables.${n}) (builtins.attrNames tables);
  # Names become attributes and targets (`digits.image`, `datasets.digits-split`): no dots.
  checkNames = kind: tables: builtins.all (n: lib.assertMsg (builtins.match "[A-Za-z0-9][A-Za-z0-9_-]*" n != null)
    "[${kind}.${builtins.toJSON n}]: ${builtins.toJSON n} is not a valid name; use letters, digits, - and _ (a dot would read as MODEL.STAGE in targets such as ${n}.image)")
    (builtins.attrNames tables);
  # mkProject's own attributes, beside the models (`// models` below): a model so named replaced
  # one (`mlbuild build toolchain` built a model named toolchain; one named config left a flake
  # with no packages at all).
  reserved = [ "name" "config" "lock" "toolchain" "interpreter" "datasets" "notebooks" "models" ];
  checkReserved = models: builtins.all (n: lib.assertMsg (!(builtins.elem n reserved))
    ("[models.${n}]: ${builtins.toJSON n} is a name mlbuild uses itself (a project's "
      + builtins.concatStringsSep ", " reserved + " are attributes beside its models); rename the model, e.g. [models.${n}-model]"))
    (builtins.attrNames models);
  table = c: key: c.${key} or { };
  # A [models.NAME.*] table (validation, params...) alone declares model NAME too: under a typo
  # (`[models.digit.validation]`) the real model had no gate, and a model `digit` nobody meant
  # appeared. A model needs its script; the default NAME.py missing says which table it came from.
  checkScripts = src: models: builtins.all (m:
    let
      t = models.${m};
      others = builtins.filter (o: o != m && models.${o} ? script) (builtins.attrNames models);
      subs = builtins.filter (k: builtins.isAttrs t.${k}) (builtins.attrNames t);
    in lib.assertMsg (!(builtins.isAttrs t) || t ? script || builtins.pathExists (src + "/${m}.py"))
      ("[models.${m}] has no script, and its default ${m}.py does not exist; declared by "
        + (if subs == [ ] || builtins.length subs < builtins.length (builtins.attrNames t) then "[models.${m}]"
           else builtins.concatStringsSep ", " (map (k: "[models.${m}.${k}]") subs))
        + (if others != [ ] then " (a typo of ${builtins.concatStringsSep " or " (map (o: "[models.${o}]") others)}?)" else "")
        + ": set script = \"...\" in [models.${m}], create ${m}.py, or fix the table's name"))
    (builtins.attrNames models);
  checkConfig = c:
    assert lib.checkKeys "mlbuild.toml" keys.top c;
    assert lib.checkKeys "[project]" keys.project (table c "project");
    # [project].name as the driver takes it (config.py's _NAME); it was Nix's bare
    # "attribute 'project' missing".
    assert lib.assertMsg (c ? project && c.project ? name)
      "mlbuild.toml needs a [project] table with name = \"...\" (letters, digits, - and _, starting with a letter)";
    assert lib.assertMsg (builtins.isString c.project.name && builtins.match "[A-Za-z][A-Za-z0-9_-]*" c.project.name != null)
      "[project].name is ${builtins.toJSON c.project.name}; use letters, digits, - and _, starting with a letter (mlbuild.toml)";
    assert lib.checkKeys "[python]" keys.python (table c "python");
    assert lib.checkKeys "[store]" keys.store (table c "store");
    assert lib.checkKeys "[models]" (builtins.attrNames (table c "models")) (table c "models")
      && checkAll checkModel (table c "models");
    assert checkNames "models" (table c "models") && checkReserved (table c "models") && checkNames "datasets" (table c "datasets")
      && checkNames "notebooks" (table c "notebooks");
    assert checkAll checkDataset (table c "datasets");
    assert checkAll (n: lib.checkKeys "[notebooks.${n}]" keys.notebook) (table c "notebooks");
    c;
in
{
  mkProject = { src, nixpkgs ? null, overrides ? { }, dirty ? false }:
    let
      # A relative string (src = "./.") or a number ended in Nix's bare "doesn't represent an
      # absolute path" or "cannot add a string to an integer".
      srcOk = lib.assertMsg ((builtins.isPath src || builtins.isString src || (builtins.isAttrs src && src ? outPath))
          && lib.hasPrefix "/" (toString src))
        "mkProject's src is ${lib.describe src}; it must be the project folder as a path: src = ./.; (no quotes)";
      config = assert srcOk; let c = checkConfig (lib.readTOML (src + "/mlbuild.toml") "create it (see the README) in ${toString src}");
               in assert checkScripts src (table c "models"); c;
      # A lock a newer mlbuild wrote (a teammate's CLI, with the flake pinning this older library)
      # would be read by guesswork: the driver refuses it too (lockfile.read_lock).
      lock = let l = lib.readJSON (src + "/mlbuild.lock") "mlbuild lock"
        ("take one side (`git checkout --ours -- mlbuild.lock`, or `--theirs`), then pin the other side's datasets with "
         + "`mlbuild data add NAME PATH` (`mlbuild data status` lists them), run `mlbuild lock` if the sides' [python] "
         + "settings differ, and `git add mlbuild.lock`"); v = l.version or 1; in
        assert lib.assertMsg (!(builtins.isInt v) || v <= 1)
          "mlbuild.lock of ${config.project.name} is lock version ${toString v}, written by a newer mlbuild than this Nix library (it reads version 1); update the flake's mlbuild input (`nix flake lock --update-input mlbuild`) and commit flake.lock";
        l;
      name = config.project.name;
      # The lock must have been made for mlbuild.toml's [python] settings (toolchain.check_fresh
      # says the same before Nix runs). Locks from before mlbuild recorded the command lack it.
      py = config.python or { };
      li = lock.interpreter or { };
      settings = [
        { key = "requirements"; want = py.requirements or [ ]; have = lock.requirements or [ ]; }
        { key = "libraries"; want = py.libraries or [ ]; have = li.libraries or [ ]; }
        { key = "interpreter"; want = py.interpreter or "python3"; have = li.command or (py.interpreter or "python3"); }
      ];
      stale = builtins.filter (s: s.want != s.have) settings;
      fresh = stale == [ ] || (let s = builtins.head stale; in lib.assertMsg false
        "mlbuild.lock of ${name} was made for [python].${s.key} ${builtins.toJSON s.have}, but mlbuild.toml has ${builtins.toJSON s.want}; run `mlbuild lock`");
      tc = assert fresh; toolchain.mkToolchain { inherit lock name nixpkgs; };
      datasets = dataset.mkDatasets { inherit src config lock; toolchain = tc; };
      notebooks = notebook.mkNotebooks { inherit src config datasets; toolchain = tc; };
      # mkProject's own arguments, checked as mlbuild.toml is: an override's misspelled key
      # (`sed`) was ignored, a non-table one ended in Nix's bare "value is ... while a set was expected".
      argsOk = lib.assertMsg (builtins.isAttrs overrides)
          "mkProject's overrides is ${lib.describe overrides}; it must be an attribute set { MODEL = { params = { lr = 0.01; }; }; }"
        && builtins.all (m: lib.checkKeysIn "mkProject's overrides" "overrides.${m}" keys.model overrides.${m})
          (builtins.attrNames overrides)
        && lib.assertMsg (builtins.isBool dirty) "mkProject's dirty is ${lib.describe dirty}; it must be true or false";
      unknownOverrides = assert argsOk; builtins.filter (m: !((config.models or { }) ? ${m})) (builtins.attrNames overrides);
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
              where = "[models.${m}.image]";
            });
            # The validation suite against a live server (nix/monitor.nix).
            monitorOf = monitor.mkMonitor { name = m; model = spec; package = pkg; inherit src datasets; toolchain = tc; };
          in
          # `nix build .#<m>` is the package; its stages are attributes of it.
          # meta.mainProgram: `nix run .#<m>` serves, `nix run .#<m>.monitor` monitors.
          pkg // { inherit model validation release image; monitor = monitorOf // { meta.mainProgram = "monitor"; };
                   package = pkg; toolchain = tc; inherit datasets notebooks; meta.mainProgram = "serve"; }
        ) (config.models or { });
    in
    {
      inherit name config lock datasets notebooks models;
      toolchain = tc;
      interpreter = tc.interpreter;
    } // models;
}
