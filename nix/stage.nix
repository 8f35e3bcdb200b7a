# pythonStage: the one shape of every mlbuild build step after the toolchain. The toolchain's
# Python runs `mlbuild.runtime.<module>.<entry>()` over only the runtime modules the step needs
# (`runtimeFor modules`), with its inputs as JSON in a file ($specPath), a fixed hash seed and no
# bytecode written. Every other attribute (OMP_NUM_THREADS, exportReferencesGraph,
# requiredSystemFeatures...) goes to the derivation as it is.
#
#   pythonStage { name; toolchain; module; modules; spec; entry ? "main"; ... } -> <derivation>
{ system, lib, runtimeFor }:
{
  pythonStage = { name, toolchain, module, modules, spec, entry ? "main", ... }@attrs:
    derivation (removeAttrs attrs [ "toolchain" "module" "modules" "entry" ] // {
      inherit name system;
      builder = "${toolchain}/bin/python";
      args = [ "-s" "-c" (lib.builderCode module entry) (runtimeFor modules) ];
      PATH = "${toolchain}/bin";
      PYTHONHASHSEED = "0";
      PYTHONDONTWRITEBYTECODE = "1";
      spec = builtins.toJSON spec;
      passAsFile = [ "spec" ];
    });
}
