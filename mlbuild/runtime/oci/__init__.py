"""Container images from Nix store closures, standard library only (runs inside Nix builds).

- :mod:`.graph`: the closure's reference graph and the layer plan (which store paths go in
  which layer, in which order).
- :mod:`.layer`: deterministic layer tars (sorted entries, fixed mtime, uid/gid 0, hardlinked
  duplicates).
- :mod:`.archive`: the image archive: a tar that is both a docker-archive (``manifest.json``)
  and an OCI image layout (``index.json``, ``blobs/sha256/...``), sharing one copy of each blob.
- :mod:`.config`: the image configuration and its labels/annotations.

The builder that puts them together (and the nixpkgs backend's repack) is
:mod:`mlbuild.runtime.image`.
"""
