# fetchLocked: a fixed-output derivation for bytes whose sha256 the lock pins (wheels, interpreter
# snapshots, datasets). The driver (`mlbuild prefetch`, `mlbuild data add`) puts them into the
# store by hash, or a substituter (the shared store) provides them. If neither has them, the
# "build" fails with a message naming the thing, its hash and the command that brings it.
{ system }:
{
  fetchLocked =
    { name            # store name (a wheel's real file name, a dataset's name)
    , sha256          # hex sha256: of the file (flat) or of its NAR (recursive)
    , recursive ? false
    , hint            # the command that brings it, e.g. "mlbuild prefetch"
    , what ? name     # how the error message names it
    }:
    derivation {
      inherit name system;
      builder = "/bin/sh";
      args = [ "-c" ''
        echo "mlbuild: ${what} (sha256 ${sha256}) is neither in the Nix store nor in a substituter." >&2
        echo "mlbuild: bring it with: ${hint}" >&2
        exit 1
      '' ];
      outputHashAlgo = "sha256";
      outputHashMode = if recursive then "recursive" else "flat";
      outputHash = sha256;
      preferLocalBuild = true;
    };
}
