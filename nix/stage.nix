# pythonStage: the one shape of every mlbuild build step after the toolchain. The toolchain's
# Python runs `mlbuild.runtime.<module>.<entry>()` over only the runtime modules the step needs
# (`runtimeFor modules`), with its inputs as JSON in a file ($specPath), a fixed hash seed and no
# bytecode written (its floats exact and alike in every Nix version: lib.specJSON, read back by the
# runtime's `stagespec`, which every step gets beside its `modules`). Every other
# attribute (exportReferencesGraph, requiredSystemFeatures...) goes to the derivation as it is.
#
# Every step computes on one thread (OMP/MKL/OpenBLAS): numpy's BLAS and torch split a matrix
# product or a sum by the CPUs they may use, so a prepare(), a notebook or a validation doing
# arithmetic gave other bytes on a machine (or under `taskset`) with another core count. Training
# sets its own count ([models.NAME].threads, mlbuild/runtime/determinism.py). And numpy's OpenBLAS
# uses its SSE4.2 (Nehalem) kernels, as determinism.py's CPU_ENV has it: it picks them by the CPU
# model otherwise, and an AVX-512 machine gave other bytes than an AVX2 one.
#
#   pythonStage { name; toolchain; module; modules; spec; entry ? "main"; needs ? null; ... }
#     -> <derivation>
#
# needs = { what = "the server of [models.m]"; wheels = [ "uvicorn" ... ]; }: the distributions the
# step (or what it makes) imports. One the lock lacks is an error naming it and the fix, when the
# derivation is instantiated (not when its attributes are listed), instead of an ImportError in a
# build log or a server that does not start.
{ system, lib, runtimeFor }:
{
  pythonStage = { name, toolchain, module, modules, spec, entry ? "main", needs ? null, ... }@attrs:
    let
      missing = if needs == null then [ ] else lib.missingWheels toolchain needs.wheels;
      cpuEnv = { OMP_NUM_THREADS = "1"; MKL_NUM_THREADS = "1"; OPENBLAS_NUM_THREADS = "1";
                 OPENBLAS_CORETYPE = "Nehalem"; };
      them = if builtins.length missing == 1 then "it" else "them";
      names = builtins.concatStringsSep ", " missing;
    in
    derivation (cpuEnv // removeAttrs attrs [ "toolchain" "module" "modules" "entry" "needs" ] // {
      inherit name system;
      builder = "${toolchain}/bin/python";
      args = [ "-s" "-c" (lib.builderCode module entry) (runtimeFor (modules ++ [ "stagespec" ])) ];
      PATH = "${toolchain}/bin";
      PYTHONHASHSEED = "0";
      PYTHONDONTWRITEBYTECODE = "1";
      spec = assert lib.assertMsg (missing == [ ])
        "${needs.what} needs ${names} from PyPI, which mlbuild.lock does not have; add ${them} to [python].requirements in mlbuild.toml, then run `mlbuild lock` and `mlbuild prefetch`";
        lib.specJSON spec;
      passAsFile = [ "spec" ];
    });
}
