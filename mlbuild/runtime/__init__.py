"""Code that runs inside Nix builds and servers, using only the toolchain (never the driver)."""
