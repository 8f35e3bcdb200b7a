"""mlbuild: reproducible ML builds on Nix. The driver pins hashes; Nix builds every stage."""

__all__ = ["__version__"]

__version__ = "0.1.0"
