"""The shared binary store: a signed Nix binary cache (``file://`` layout) on a shared folder.

Every machine and CI runner substitutes from it and pushes to it. Public API::

    cfg = load_store_config()                      # env, mlbuild.toml [store], defaults
    push(cfg, ["/nix/store/...-digits"], build_deps=True)   # sign + upload closures
    pull(cfg, ["/nix/store/...-digits"])           # signatures and NAR hashes checked; uncompressed
                                                   # NARs restored in the kernel, the rest by nix copy
    verify(cfg, repair=False); gc(cfg, locks=[...]); stats(cfg)
    _nix.build(targets, extra=cfg.nix_options())   # substitute from the store in a build

See store-config/README.md for the set-up of a shared (NFS) store and CI.
"""

from .admin import InitResult, TagResult, init_store, nix_conf, tag, tags, untag
from .config import StoreConfig, load_store_config
from .gc import GcReport, gc
from .pull import PullResult, pull
from .push import PushResult, push, resolve_targets
from .stats import StoreStats, stats
from .verify import VerifyReport, verify

__all__ = [
    "StoreConfig", "load_store_config", "init_store", "InitResult", "nix_conf", "tag", "TagResult", "untag", "tags",
    "push", "PushResult", "resolve_targets", "pull", "PullResult", "verify", "VerifyReport",
    "gc", "GcReport", "stats", "StoreStats",
]
