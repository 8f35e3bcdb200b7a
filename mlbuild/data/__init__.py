"""Datasets: content-addressed data in the Nix store, pinned in mlbuild.lock."""
