# Datasets as derivations.
#
#   mkDatasets { src; config; lock; toolchain; } -> { NAME = <derivation>; ... }
#
# [datasets.NAME] path = "..."     -> fixed-output (recursive sha256 from mlbuild.lock);
#                                     `mlbuild data add` or a substituter provides it
# [datasets.NAME] url = "..."       -> fixed-output fetch (flat sha256 from mlbuild.toml)
#   sha256 = "<hex>"
# [datasets.NAME] prepare = "x.py"  -> built in the toolchain from `inputs` (other datasets):
#   inputs = [ ... ]; params = { }; code = [ "x.py" ... ] (default: the prepare script)
{ lib, fetchLocked, mkCode, pythonStage }:
{
  mkDatasets = { src, config, lock, toolchain }:
    let
      tables = config.datasets or { };
      locked = lock.datasets or { };
      # The chain of inputs that leads from derived dataset `name` back to it, or null: without
      # this check a cycle is Nix's bare "infinite recursion encountered". Depth first, each dataset
      # walked once (`seen`): walking every path took 2^n steps for n datasets sharing inputs.
      inputsOf = n: let t = tables.${n} or { }; i = t.inputs or [ ]; in
        if t ? prepare && builtins.isList i then builtins.filter builtins.isString i else [ ];
      cycle = name:
        let walk = state: chain: n: builtins.foldl' (s: i:
              if s.found != null || s.seen ? ${i} then s
              else if i == name then s // { found = chain ++ [ i ]; }
              else walk (s // { seen = s.seen // { ${i} = true; }; }) (chain ++ [ i ]) i) state (inputsOf n);
        in (walk { found = null; seen = { }; } [ name ] name).found;
      mk = name: t:
        let get = lib.field "[datasets.${name}]" t; in
        # path, url and sha256 checked as the driver checks them (data/datasets.py): path = 3 was
        # Nix's bare "cannot coerce an integer to a string", sha256 = "abc" its "hash 'abc' has wrong
        # length" naming no dataset, and url = 3 evaluated (a fetch of "3").
        if t ? path then
          let
            path = get "path" "string" null;
            entry = locked.${name} or (throw
              "mlbuild: dataset ${name} is not locked; run `mlbuild data add ${name} ${path}`");
            # a hand edit or a merge: Nix said "attribute 'sha256' missing" or "invalid hash", naming no dataset
            sha256 = if builtins.isAttrs entry && builtins.isString (entry.sha256 or null)
                        && builtins.match "[0-9a-fA-F]{64}" entry.sha256 != null then entry.sha256
              else throw "mlbuild: mlbuild.lock pins dataset ${name} as ${builtins.toJSON entry}, with no sha256 of 64 hex digits (a hand edit or a merge); run `mlbuild data add ${name} ${path}` where its files are, or restore mlbuild.lock from git";
          in fetchLocked {
            inherit name sha256;
            recursive = true;
            what = "dataset ${name}";
            hint = "mlbuild data pull ${name}   (or, where the files are: mlbuild data add ${name} ${path})";
          }
        else if t ? url then
          let
            given = get "sha256" "string" (throw "mlbuild: [datasets.${name}] url needs sha256 = \"<64 hex digits>\" (the file's sha256)");
            # in either case, as the driver takes it (data/datasets.py) and Nix before this check
            # did: an upper-case one (PowerShell's Get-FileHash) built before mlbuild checked it.
            # Given to Nix as written, as before: the stages that read the dataset record it
            # (lib.datasetInput), and a lowercased one changed their derivations (a retraining).
          in
          assert lib.assertMsg (builtins.match "[0-9a-f]{64}" (lib.toLower given) != null)
            "[datasets.${name}].sha256 is ${builtins.toJSON given}; it must be the file's sha256 as 64 hex digits (`sha256sum FILE`)";
          # "data/x.csv" was curl's "Couldn't resolve host name", " http://..." its "bad/illegal format"
          assert lib.assertMsg (builtins.match "[A-Za-z][A-Za-z0-9+.-]*://[^[:space:]]+" (get "url" "string" null) != null)
            "[datasets.${name}].url is ${builtins.toJSON t.url}, not a URL (scheme://...: https://, http://, file:///); a file of this machine is a local dataset: path = \"...\" instead of url and sha256, pinned by `mlbuild data add ${name} PATH`";
          derivation {
            inherit name;
            system = "builtin";
            builder = "builtin:fetchurl";
            url = get "url" "string" null;
            outputHashAlgo = "sha256";
            outputHashMode = "flat";
            outputHash = given;
            unpack = false;
            executable = false;
            preferLocalBuild = true;
          }
        else if t ? prepare then
          let
            script = get "prepare" "string" null;
            inputs = get "inputs" "strings" [ ];
            missing = builtins.filter (i: !(tables ? ${i})) inputs;
          in
          assert lib.assertMsg (missing == [ ])
            "[datasets.${name}] inputs names ${builtins.toJSON missing}, which are not datasets; declared: ${builtins.toJSON (builtins.attrNames tables)}";
          assert lib.assertMsg (cycle name == null)
            "[datasets.${name}] inputs lead back to it (${builtins.concatStringsSep " -> " (cycle name)}): a derived dataset cannot be an input of itself; take ${builtins.toJSON (builtins.elemAt (cycle name) 1)} out of its inputs, or break the chain further on";
          pythonStage {
            inherit name toolchain;
            module = "prepare";
            modules = [ "spec" "prepare" ];
            spec = {
              version = 1;
              dataset = name;
              code = mkCode { inherit src script; files = get "code" "strings" [ script ]; what = "[datasets.${name}]"; };
              inherit script;
              inputs = builtins.listToAttrs (map (i: { name = i; value = "${built.${i}}"; }) inputs);
              params = get "params" "table" { };
              seed = get "seed" "int" 0;
            };
          }
        else throw "mlbuild: [datasets.${name}] needs one of path, url or prepare";
      built = builtins.mapAttrs mk tables;
    in
    built;
}
