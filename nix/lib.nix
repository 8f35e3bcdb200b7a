# Small helpers in place of nixpkgs.lib, which mlbuild does not require.
rec {
  hasPrefix = pre: s: builtins.substring 0 (builtins.stringLength pre) s == pre;
  hasSuffix = suf: s:
    let n = builtins.stringLength s; m = builtins.stringLength suf;
    in n >= m && builtins.substring (n - m) m s == suf;
  removePrefix = pre: s:
    if hasPrefix pre s
    then builtins.substring (builtins.stringLength pre) (builtins.stringLength s) s
    else s;
  removeSuffix = suf: s:
    if hasSuffix suf s
    then builtins.substring 0 (builtins.stringLength s - builtins.stringLength suf) s
    else s;
  # assertMsg: fail evaluation with `msg` unless `cond` holds.
  assertMsg = cond: msg: if cond then true else throw "mlbuild: ${msg}";
  # The -c program of a Python builder: put the runtime store path (argv[1]) first on sys.path
  # and run mlbuild.runtime.<module>.<entry>() (usually main).
  builderCode = module: entry:
    "import sys; sys.path.insert(0, sys.argv[1]); from mlbuild.runtime.${module} import ${entry}; ${entry}()";
  # A field of a TOML table, checked: table.${key} (or `default` when absent) if it is of `kind`
  # (string, strings, table, int), else an error naming the table, the key, the value and the kind.
  field = where: table: key: kind: default:
    let
      v = table.${key} or default;
      ok = {
        string = builtins.isString v;
        strings = builtins.isList v && builtins.all builtins.isString v;
        table = builtins.isAttrs v;
        int = builtins.isInt v;
      }.${kind};
      wanted = { string = "a string"; strings = "a list of strings"; table = "a table"; int = "an integer"; }.${kind};
    in
    if ok then v else throw "mlbuild: ${where}.${key} is ${show v}; it must be ${wanted} (mlbuild.toml)";
  # true, or an error naming the keys of `table` that are not in `known` (and the known ones):
  # a misspelled key (`threshold` for `thresholds`) must not be silently ignored.
  checkKeys = checkKeysIn "mlbuild.toml";
  # The same for a table from elsewhere (`source`: mkProject's overrides).
  checkKeysIn = source: where: known: table:
    let
      unknown = builtins.filter (k: !(builtins.elem k known)) (builtins.attrNames table);
      names = ks: builtins.concatStringsSep ", " (map builtins.toJSON ks);
    in
    if !(builtins.isAttrs table) then throw "mlbuild: ${where} is ${describe table}; it must be a table (${source})"
    else if unknown == [ ] then true
    else throw ("mlbuild: ${where} has unknown key${if builtins.length unknown > 1 then "s" else ""} ${names unknown}; "
      + "it takes ${names known} (${source}; see the README)");
  # A value in a message: JSON where it has one (a function has none; a path would be copied to
  # the store), else its type.
  describe = v: if builtins.isFunction v then "a function" else if builtins.isPath v then "a path"
    else if builtins.isAttrs v then "an attribute set" else show v;
  # A value in a message as JSON, a float with 15 significant digits: Nix 2.8's builtins.toJSON
  # prints 6 ([models.m.serve].max_wait_ms = 10000.0001 "is 10000; it must be ... in 0..10000").
  show = v: if builtins.isFloat v then showFloat v else builtins.toJSON v;
  showFloat = x:
    let
      a = if x < 0 then -x else x;
      # a = s.v * 10^s.k with s.v in [1e14, 1e15): 15 digits (steps of 1e22, exact, where far)
      scale = v: k:
        if v >= 1.0e37 then scale (v / 1.0e22) (k + 22)
        else if v >= 1.0e15 then scale (v / 10.0) (k + 1)
        else if v < 1.0e-8 then scale (v * 1.0e22) (k - 22)
        else if v < 1.0e14 then scale (v * 10.0) (k - 1)
        else { inherit v k; };
      s = scale a 0;
      n0 = builtins.floor (s.v + 0.5);
      carry = n0 >= 1000000000000000;
      e = s.k + 14 + (if carry then 1 else 0);   # the first digit's decimal exponent
      strip = d: if builtins.stringLength d > 1 && hasSuffix "0" d
        then strip (builtins.substring 0 (builtins.stringLength d - 1) d) else d;
      ds = strip (toString (if carry then n0 / 10 else n0));
      nd = builtins.stringLength ds;
      zeros = n: builtins.concatStringsSep "" (builtins.genList (_: "0") n);
      body =
        if e >= 15 || e < -5 then builtins.substring 0 1 ds + (if nd > 1 then "." + builtins.substring 1 nd ds else "")
          + "e" + toString e
        else if e < 0 then "0." + zeros (0 - e - 1) + ds
        else if nd <= e + 1 then ds + zeros (e + 1 - nd) + ".0"
        else builtins.substring 0 (e + 1) ds + "." + builtins.substring (e + 1) nd ds;
    in
    if x != x then "nan"
    else if x - x != 0.0 then (if x > 0 then "inf" else "-inf")
    else if x == 0.0 then (if hasPrefix "-" (builtins.toJSON x) then "-0.0" else "0.0")
    else (if x < 0 then "-" else "") + body;
  toLower = builtins.replaceStrings
    [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ]
    [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
  # A distribution's name as pip compares them (PEP 503): Prometheus_Client -> prometheus-client.
  distName = n: toLower (builtins.replaceStrings [ "_" "." ] [ "-" "-" ] n);
  # Which of the distributions `names` the toolchain's locked wheels lack (none when the toolchain
  # does not say what it holds).
  missingWheels = toolchain: names:
    let have = toolchain.distributions or null;
    in if have == null then [ ] else builtins.filter (n: !(builtins.elem (distName n) have)) names;
  # How a stage names a dataset it reads: its store path (to read it) and the content hash that
  # provenance and reports record instead of the path. Recording the path would make the output
  # refer to the dataset, and carry the data into every package, shared-store push and image.
  # Fixed-output datasets have their hash already (mlbuild.lock's NAR sha256, a url's file sha256);
  # a derived one gets the digest of its files, computed where it is read (sha256 = null).
  datasetInput = d: {
    path = "${d}";
    sha256 = d.outputHash or null;
    of = if !(d ? outputHash) then "files" else if (d.outputHashMode or "flat") == "recursive" then "nar" else "file";
  };
  # A builder's spec as JSON that every Nix version writes alike, floats exact. builtins.toJSON
  # prints a float with 6 significant digits in Nix 2.8 (0.1234567891 -> 0.123457, 1234567.0 ->
  # 1.23457e+06: the build got another value than mlbuild.toml's) and exactly in later versions,
  # `2.0` where 2.8 writes `2`: one project gave other store paths on Debian 12 and 13, and CI
  # retrained what the shared store held. So a float is written as the integers of its binary
  # value, m * 2^e (scaling by 2 is exact), `{"mlbuild-float": [m, e]}`, or "nan", "inf", "-inf";
  # mlbuild.runtime.spec.load_spec reads them back as floats.
  specJSON = v: builtins.toJSON (exactFloats v);
  exactFloats = v:
    if builtins.isFloat v then { mlbuild-float = floatParts v; }
    else if builtins.isList v then map exactFloats v
    # A table of the project's own whose one key is mlbuild-float (params.x = { mlbuild-float = [1, 2]; })
    # is wrapped once more, so it is read back as that table, not as the float 4.0.
    else if builtins.isAttrs v && builtins.attrNames v == [ "mlbuild-float" ] then { mlbuild-float = { mlbuild-float = exactFloats v.mlbuild-float; }; }
    else if builtins.isAttrs v && !(v ? outPath) then builtins.mapAttrs (_: exactFloats) v
    else v;
  floatParts = x:
    let
      a = if x < 0 then -x else x;
      lo = 4503599627370496.0;   # 2^52: a double in [2^52, 2^53) is a whole number
      hi = 9007199254740992.0;   # 2^53
      up = v: e: if v >= lo then { inherit v e; } else up (v * 2.0) (e - 1);
      down = v: e: if v < hi then { inherit v e; } else down (v / 2.0) (e + 1);
      s = if a < lo then up a 0 else down a 0;
      m = builtins.floor s.v;
    in
    if x != x then "nan"
    else if x - x != 0.0 then (if x > 0 then "inf" else "-inf")
    # -0.0 (TOML's -0.0, JSON's -0.0 from `exp run --set`) keeps its sign: toJSON writes it "-0"
    else if x == 0.0 then (if hasPrefix "-" (builtins.toJSON x) then "-0" else [ 0 0 ])
    else [ (if x < 0 then 0 - m else m) s.e ];
  optionalAttrs = cond: attrs: if cond then attrs else { };
  attrOr = name: default: set: if builtins.hasAttr name set then builtins.getAttr name set else default;
  # A flake's source is in the store and holds only git-tracked files: a file missing there is
  # most often one that exists but was never `git add`ed.
  inFlake = path: hasPrefix builtins.storeDir (toString path);
  untrackedHint = path:
    if inFlake path
    then " (this flake's source holds only the files git tracks: if ${baseNameOf (toString path)} is in your folder, `git add` it)"
    else "";
  # The first git conflict marker line of `text` (a merge left the file half-resolved), as
  # { line (from 1); text; }, or null: mlbuild.git.conflict_marker's rule.
  conflictMarker = text:
    let
      lines = builtins.filter builtins.isString (builtins.split "\n" text);
      marker = l: builtins.elem (builtins.substring 0 7 l) [ "<<<<<<<" "|||||||" "=======" ">>>>>>>" ]
        && builtins.elem (builtins.substring 7 1 l) [ "" " " ];
      hits = builtins.filter (i: marker (builtins.elemAt lines i)) (builtins.genList (i: i) (builtins.length lines));
    in if hits == [ ] then null
       else let i = builtins.head hits; in { line = i + 1; text = builtins.elemAt lines i; };
  # Read a JSON or TOML file under `src`, or throw naming it and the command that makes it. A JSON
  # file cannot hold a conflict marker line but as one (strings have no raw newlines): fromJSON
  # named only a "parse error at line N", so such a file is named half-merged, with `merged`, the fix.
  readJSON = path: fix: merged:
    if builtins.pathExists path then
      let text = builtins.readFile path; conflict = conflictMarker text; name = baseNameOf (toString path); in
      if conflict != null
      then throw "mlbuild: ${name}: a git merge left it half-resolved (conflict marker '${conflict.text}' at line ${toString conflict.line}); ${merged}"
      else builtins.fromJSON text
    else throw "mlbuild: ${toString path} does not exist${untrackedHint path}; else run `${fix}`";
  readTOML = path: fix:
    if builtins.pathExists path
    then builtins.addErrorContext "while reading ${toString path} (mlbuild: fix the TOML there)"
      (builtins.fromTOML (builtins.readFile path))
    else throw "mlbuild: ${toString path} does not exist${untrackedHint path}; else ${fix}";
}
