# mkCode: only the project files a stage uses, as one store path (content-addressed: editing
# any other file, the README say, leaves it, and everything built from it, unchanged).
#
#   mkCode { src; files = [ "model.py" "lib/" ]; name ? "code"; what ? "code"; script ? null }
#   script: the file the stage runs, which `files` must hold (itself or a folder above it)
{ lib }:
let
  # What tools write beside code and never is code: left out of every code path (mlbuild/git.py's
  # TOOL_CACHES, which the worktree check skips for the same reason).
  toolCaches = [ "__pycache__" ".ipynb_checkpoints" ".mypy_cache" ".pytest_cache" ".ruff_cache" ];
in
{
  mkCode = { src, files, name ? "code", what ? "code", script ? null }:
    let
      root = toString src;
      clean = map (lib.removeSuffix "/") files;
      outside = builtins.filter (f: lib.hasPrefix "/" f || builtins.elem ".." (builtins.split "/" f)) clean;
      check = map (f: lib.assertMsg (builtins.pathExists (src + "/${f}"))
        "${what} names ${f}, which does not exist in ${root}${lib.untrackedHint (src + "/${f}")}") clean;
    in
    assert lib.assertMsg (builtins.isList files && builtins.all builtins.isString files)
      "${what} is ${builtins.toJSON files}; it must be a list of file names (mlbuild.toml)";
    assert lib.assertMsg (outside == [ ])
      "${what} names ${builtins.head outside}, which is outside the project: a build sees only the project folder's files; move it into the project and name it relative to it";
    assert builtins.all (x: x) check;
    # without it the build failed in importlib, a FileNotFoundError for <code store path>/model.py
    assert lib.assertMsg (script == null || builtins.any (f: script == f || lib.hasPrefix (f + "/") script) clean)
      "${what}: code = ${builtins.toJSON files} leaves out ${script}, the script the stage runs (a build sees only the code files): add ${builtins.toJSON script} to code";
    builtins.path {
      inherit name;
      path = src;
      filter = p: t:
        let rel = lib.removePrefix (root + "/") (toString p);
        in !(builtins.elem (baseNameOf p) toolCaches) && !(lib.hasSuffix ".pyc" rel)
           && builtins.any (f: rel == f || lib.hasPrefix (f + "/") rel
                               || (t == "directory" && lib.hasPrefix (rel + "/") f)) clean;
    };
}
