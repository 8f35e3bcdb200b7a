# Container images of a model package: one archive that `podman load`, `docker load` and skopeo
# read (a docker-archive that is also an OCI image layout), running the package's bin/serve.
#
#   mkImage {
#     name;               # the image name: the model's name, lower-cased
#     package;            # the model package; ${package}/bin/serve --host 0.0.0.0 --port PORT is
#                         #   the entrypoint (Cmd is empty: `podman run IMAGE ARGS...` appends ARGS)
#     validation;         # the passing validation gate: the image depends on it and carries its
#                         #   metrics as labels (a failing gate never builds, so neither does this)
#     toolchain;          # runs the builder (its python)
#     training ? null;    # the training output: it and every path that depends on it (package,
#                         #   validation) share the last layer, the only one retraining changes
#     nixpkgs ? null;     # a nixpkgs flake or package set: dockerTools.streamLayeredImage lays out
#                         #   the layers (same conventions); null: mlbuild's built-in builder
#     tag ? null;         # null: the image's own store hash (as in dockerTools)
#     port ? 8080;        # the server listens on 0.0.0.0:port; ExposedPorts port/tcp
#     uid ? 1000; gid ? 1000; user ? "mlbuild";    # the non-root user the server runs as
#     maxLayers ? 100;    # more store paths than fit: the least popular share one layer
#     labels ? { };       # extra labels (also the OCI manifest's annotations)
#     where ? "mkImage";  # how errors name these options ("[models.digits.image]" from mkProject)
#   }
#   -> the archive (a file), with .imageName, .imageTag, .backend ("builtin" | "dockerTools") and,
#      with nixpkgs, .stream (the streamLayeredImage script)
#
# Layers (both backends), bottom first: the toolchain's closure, then the other store paths that do
# not depend on the training, one layer each, most popular first; the training output with the
# package and the validation in one layer; last, a small layer with /etc/passwd, /etc/group (root
# and `user`) and /tmp (1777). The archive's bytes are deterministic: building twice gives the
# same digest.
{ system, lib, pythonStage }:
let
  inherit (lib) toLower;
  isInt = n: builtins.isInt n;
  specVersion = 1;
  maxId = 4294967294;   # the largest Linux uid/gid; 4294967295 is (uid_t) -1
  # The OCI labels mlbuild sets from the package (mlbuild/runtime/oci/config.py); the user's may not.
  ownOci = [ "org.opencontainers.image.title" "org.opencontainers.image.version" "org.opencontainers.image.created" ];
in
{
  mkImage =
    { name, package, validation, toolchain, training ? null, nixpkgs ? null, tag ? null, port ? 8080
    , uid ? 1000, gid ? 1000, user ? "mlbuild", maxLayers ? 100, labels ? { }, where ? "mkImage" }:
    let
      imageName = toLower name;
      uidS = toString uid;
      gidS = toString gid;
      # The address and port are part of the entrypoint, not Cmd: the arguments of
      # `podman run IMAGE --max-batch-size 64` replace Cmd, and without these the server would
      # listen on 127.0.0.1 inside the container, out of reach. A user's --port or --host still
      # wins (the server's argparse takes the last value).
      entrypoint = [ "${package}/bin/serve" "--host" "0.0.0.0" "--port" (toString port) ];
      cmd = [ ];
      env = [ "HOME=/tmp" "TMPDIR=/tmp" "LANG=C.UTF-8" "PYTHONDONTWRITEBYTECODE=1" ];
      checks = [
        # Docker's grammar of a name's part: "_-", "___" or ".-" between two letters, or one at
        # either end, is refused by podman load and docker load ("invalid reference format").
        (lib.assertMsg (builtins.match "[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*" imageName != null)
          ("${where}: name ${builtins.toJSON name} is not a valid image name (lowercase letters and digits, "
           + "separated by one . or _, by __ or by dashes: podman and docker load no other)"
           + (if where == "mkImage" then "" else "; the image takes the model's name: rename the model")))
        (lib.assertMsg (tag == null || builtins.match "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}" tag != null)
          "${where}.tag is ${builtins.toJSON tag}, not a valid image tag (letters, digits, _ . -; at most 128)")
        (lib.assertMsg (isInt port && port > 0 && port < 65536)
          "${where}.port is ${builtins.toJSON port}, not a TCP port; use a whole number in 1..65535")
        (lib.assertMsg (isInt uid && isInt gid && uid >= 0 && gid >= 0)
          "${where}.uid and .gid are ${builtins.toJSON uid} and ${builtins.toJSON gid}; both must be whole numbers >= 0 (no quotes)")
        # The runtime keeps the low 32 bits: uid = 4294967296 ran the server as root (uid 0).
        (lib.assertMsg (uid <= maxId && gid <= maxId)
          "${where}.uid and .gid are ${toString uid} and ${toString gid}; both must be at most ${toString maxId} (a larger id wraps around: 4294967296 would run the server as root)")
        (lib.assertMsg (builtins.match "[a-z_][a-z0-9_-]*" user != null)
          "${where}.user is ${builtins.toJSON user}, not a valid user name; use lowercase letters, digits, _ and -, starting with a letter or _ (e.g. \"mlbuild\")")
        # /etc/passwd names root (uid 0) first: a second root line made uid 1000 look like root.
        (lib.assertMsg (user != "root" || uid == 0)
          "${where}.user is \"root\" with uid ${toString uid}; root is uid 0's name in the image's /etc/passwd: name the user otherwise (e.g. \"mlbuild\"), or set uid = 0 to run as root")
        (lib.assertMsg (isInt maxLayers && maxLayers >= 3 && maxLayers <= 125)
          "${where}.maxLayers is ${builtins.toJSON maxLayers}; use 3..125 (docker refuses more than 125 layers)")
        (lib.assertMsg (builtins.isAttrs labels && builtins.all builtins.isString (builtins.attrValues labels))
          "${where}.labels must be a table of strings, got ${builtins.toJSON labels}")
        (let reserved = builtins.filter (k: lib.hasPrefix "mlbuild." k || builtins.elem k ownOci)
               (if builtins.isAttrs labels then builtins.attrNames labels else [ ]);
         in lib.assertMsg (reserved == [ ])
          "${where}.labels: ${builtins.toJSON (builtins.head reserved)} is mlbuild's own (the mlbuild.* labels and ${builtins.concatStringsSep ", " ownOci} record the model's provenance); name yours otherwise, e.g. com.example.team")
      ];
      spec = {
        version = specVersion;
        name = imageName;
        inherit tag port uid gid user system entrypoint cmd env labels;
        package = "${package}";
        validation = "${validation}";
        training = if training == null then null else "${training}";
        toolchain = "${toolchain}";
        max_layers = maxLayers;
      };
      # The archive: the toolchain's python runs mlbuild/runtime/image.py.
      archive = extraSpec: extraAttrs: pythonStage ({
        name = "${imageName}-image.tar";
        inherit toolchain;
        module = "image";
        modules = [ "spec" "image" "oci/" ];
        spec = spec // extraSpec;
      } // extraAttrs);

      builtin = archive { backend = "builtin"; graphs = [ "graph-package" "graph-validation" ]; } {
        # The closures' reference graphs (path, deriver, references), written into the build folder.
        exportReferencesGraph = [ "graph-package" package "graph-validation" validation ];
      };

      # nixpkgs: streamLayeredImage lays out the layers; the archive step adds the labels that
      # need the trained model (its hash), and the tag, as the built-in builder does.
      pkgs = if nixpkgs == null then null else nixpkgs.legacyPackages.${system} or nixpkgs;
      dockerTools = pkgs.dockerTools or (throw
        "mlbuild: mkImage: the nixpkgs passed to mkProject has no dockerTools; pass a nixpkgs flake (or its legacyPackages.${system}), or nixpkgs = null for the built-in builder");
      hasPipeline = (builtins.functionArgs dockerTools.streamLayeredImage) ? layeringPipeline;
      etcCommands = ''
        mkdir -p etc tmp
        chmod 1777 tmp
        printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' '${user}:x:${uidS}:${gidS}:${user}:/tmp:/sbin/nologin' > etc/passwd
        printf '%s\n' 'root:x:0:' ${if gid == 0 then "" else "'${user}:x:${gidS}:'"} > etc/group
      '';
      stream = dockerTools.streamLayeredImage ({
        name = imageName;
        tag = "mlbuild-stream";
        config = {
          Entrypoint = entrypoint;
          Cmd = cmd;
          Env = env;
          User = "${uidS}:${gidS}";
          WorkingDir = "/tmp";
          ExposedPorts = { "${toString port}/tcp" = { }; };
          # Store paths here put the package and the validation gate into the image's closure.
          Labels = labels // { "mlbuild.package" = "${package}"; "mlbuild.validation" = "${validation}"; };
        };
        inherit maxLayers;
        extraCommands = etcCommands;
      } // lib.optionalAttrs (hasPipeline && training != null) {
        # The training output and its dependents in one layer, last; the rest by popularity.
        # (flatten gives [model, rest...]; reversing the rest, then everything, gives [rest..., model].)
        layeringPipeline = [
          [ "subcomponent_in" [ "${training}" ] ]
          [ "over" "rest" [ "pipe" [ [ "popularity_contest" ] [ "limit_layers" (maxLayers - 2) ] [ "reverse" ] ] ] ]
          [ "flatten" ]
          [ "reverse" ]
        ];
      });
      viaNixpkgs = archive { backend = "repack"; stream = "${stream}"; } { };

      image = if nixpkgs == null then builtin else viaNixpkgs;
    in
    assert builtins.all (x: x) checks;
    image // {
      inherit imageName;
      imageTag = if tag != null then tag else builtins.substring 0 32 (baseNameOf image.outPath);
      backend = if nixpkgs == null then "builtin" else "dockerTools";
    } // lib.optionalAttrs (nixpkgs != null) { inherit stream; };
}
