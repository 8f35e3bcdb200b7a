"""The one error hierarchy of mlbuild. Only the CLI prints these (as ``Error: ...``)."""

from __future__ import annotations

__all__ = [
    "MlbuildError",
    "ConfigError",
    "LockError",
    "LockConflictError",
    "ResolveError",
    "HashMismatchError",
    "InterpreterError",
    "NixError",
    "NixNotFoundError",
    "BuildError",
    "DataError",
]


class MlbuildError(Exception):
    """Root of every error a user can cause; the message names the bad value and the fix."""


class ConfigError(MlbuildError):
    """mlbuild.toml is missing or wrong."""


class LockError(MlbuildError):
    """mlbuild.lock is missing, stale or malformed."""


class LockConflictError(LockError):
    """mlbuild.lock holds git conflict markers, or a key twice: a merge left it half-resolved."""


class NewerLockError(LockError):
    """mlbuild.lock was written by a newer mlbuild, in a lock version this one cannot read."""


class ResolveError(MlbuildError):
    """pip could not resolve or fetch the requirements."""


class DataError(MlbuildError):
    """A dataset is missing, changed, or declared wrongly, or its files cannot go into the store."""


class HashMismatchError(MlbuildError):
    """Bytes on disk do not have the hash the lock pins."""

    def __init__(self, what: str, expected: str, actual: str, fix: str) -> None:
        self.what, self.expected, self.actual = what, expected, actual
        super().__init__(f"{what}: sha256 is {actual}, but mlbuild.lock pins {expected}. {fix}")


class InterpreterError(MlbuildError):
    """The Python interpreter cannot be found or differs from the lock."""


class NixError(MlbuildError):
    """A Nix command failed."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        self.log_tail = log_tail
        super().__init__(message + (f"\n{log_tail}" if log_tail else ""))


class NixNotFoundError(NixError):
    """Nix is not installed."""


class BuildError(NixError):
    """A build failed; carries the tail of its log."""

    def with_hint(self, hint: str) -> BuildError:
        """The same failure (its first line, its log tail) with mlbuild's ``hint`` after the log."""
        return BuildError(str(self.args[0]).split("\n", 1)[0], self.log_tail + hint)


class StoreError(MlbuildError):
    """The shared binary store (``mlbuild store ...``) cannot do what was asked."""


class StoreConfigError(StoreError):
    """The store's location or keys are not configured, or configured wrongly."""


class StoreKeyError(StoreConfigError):
    """A signing or trusted key is missing or not in Nix's ``name:base64`` format."""


class StoreTargetError(StoreError):
    """A push or pull target is not a store path (or not valid where it is needed)."""


class StoreCorruptError(StoreError):
    """A NAR or narinfo does not match what its signature or the local store says."""


class StoreMissingError(StoreError):
    """A path asked for is not in the shared store."""
