"""Where the shared binary store is, and which keys sign and check it.

Every setting comes from, highest first: an explicit argument (``mlbuild store --store DIR``),
the environment, the ``[store]`` table of the project's mlbuild.toml, then the embedded default::

    setting        environment                  mlbuild.toml [store]  default
    location       MLBUILD_STORE (dir or file://) path = "..."        /var/lib/mlbuild/store
    signing key    MLBUILD_STORE_SECRET_KEY     secret-key = "..."    /etc/mlbuild/store.sec
    trusted keys   MLBUILD_STORE_PUBLIC_KEYS    public-keys = [...]   /etc/mlbuild/store.pub, else
                   (keys or .pub files)                               the signing key's public half
    keep-last      MLBUILD_STORE_KEEP_LAST      keep-last = 3         3 pushes per name kept by gc
    zstd level     -                            zstd-level = 3        3
    fsync NARs     MLBUILD_STORE_FSYNC_NARS     fsync-nars = true     false (like Nix's fsync-store-paths)

Relative paths in mlbuild.toml are relative to the project folder. An NFS mount is only a
different location (see store-config/README.md); the keys never live inside the store folder.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..config import CONFIG_NAME, config_text, find_project_root
from ..errors import ConfigError, StoreConfigError, StoreKeyError
from .keys import PublicKey, SecretKey, load_secret_key, parse_public_key, secret_key_name
from .layout import Layout, store_command

__all__ = ["StoreConfig", "load_store_config", "DEFAULT_ROOT", "DEFAULT_SECRET_KEY", "DEFAULT_PUBLIC_KEY"]

# The keys of mlbuild.toml and of its [store] table (nix/project.nix's keys.top and keys.store).
TOP_KEYS = ("project", "python", "datasets", "models", "notebooks", "store")
STORE_KEYS = ("path", "secret-key", "public-keys", "keep-last", "zstd-level", "fsync-nars", "push")

DEFAULT_ROOT = Path("/var/lib/mlbuild/store")
DEFAULT_SECRET_KEY = Path("/etc/mlbuild/store.sec")
DEFAULT_PUBLIC_KEY = Path("/etc/mlbuild/store.pub")


@dataclass(frozen=True)
class StoreConfig:
    """A resolved store configuration; ``public_keys`` are key strings or ``.pub`` file paths."""

    root: Path
    secret_key_file: Path | None = None
    public_keys: tuple[str, ...] = ()
    keep_last: int = 3
    zstd_level: int = 3
    # fsync each NAR before its narinfo is published. Off by default, as Nix's own
    # ``fsync-store-paths`` and its ``file://`` writer are: publishing stays atomic against a killed
    # writer either way (the page cache outlives the process), and on NFS ``close`` already
    # flushes and commits the NAR to the server before the rename. What it adds is a local-disk
    # store surviving a power cut right after a push (see store-config/README.md).
    fsync_nars: bool = False
    # where ``secret_key_file`` came from, for messages: the setting that named it, or the machine's
    # default (the machine's own store key, which another store may well not be signed by)
    secret_key_from: str = field(default="", compare=False)

    @property
    def url(self) -> str:
        """The substituter URL Nix reads the store at (``file:///...``)."""
        return f"file://{self.root}"

    def secret_key(self) -> SecretKey:
        path = self.secret_key_file
        if path is None or not path.exists():
            # A store that names its key (a CI runner whose secret was not mounted): `init
            # --generate-key` refuses it, the fix is a copy of that key's secret half.
            from .push import published_keys

            try:
                names = ", ".join(k.name for k in published_keys(Layout(self.root)))
            except StoreKeyError:
                names = ""
            if names:
                signed = f"is signed by {names} ({self.root / 'mlbuild' / 'public-key'}): to push, copy the secret " \
                         f"half of {names} (the .sec file made with it)"
                if path is None:
                    raise StoreKeyError(f"no signing key is configured for the store {self.root}, which {signed} to "
                                        f"this machine and point MLBUILD_STORE_SECRET_KEY or [store].secret-key at it")
                raise StoreKeyError(f"cannot read the store's secret key {path} ({os.strerror(errno.ENOENT)}): the "
                                    f"store {self.root} {signed} to {path}, or point MLBUILD_STORE_SECRET_KEY or "
                                    f"[store].secret-key at it")
        if path is None:
            raise StoreKeyError(f"no signing key is configured for the store {self.root}: set "
                                f"MLBUILD_STORE_SECRET_KEY or [store].secret-key, or run "
                                f"`{store_command(self.root, 'init --generate-key')}`")
        return load_secret_key(path, store_command(self.root, 'init --generate-key'))

    def trusted_keys(self) -> tuple[PublicKey, ...]:
        """The keys a narinfo must be signed by; the signing key's own half when none is named."""
        keys: list[PublicKey] = []
        for item in self.public_keys:
            if secret_key_name(item) is not None and not os.path.lexists(item):
                raise StoreKeyError("MLBUILD_STORE_PUBLIC_KEYS or [store].public-keys holds a secret key (not shown "
                                    "here), the half of the key pair that signs: give the public half (the .pub file, "
                                    "or the store's mlbuild/public-key) there, and keep the secret key out of it (one "
                                    "committed to mlbuild.toml is the repository's readers': make a new key)")
            if item.startswith("/") or item.endswith(".pub"):
                try:
                    text = Path(item).read_text()
                except OSError as e:
                    raise StoreKeyError(f"cannot read the trusted public key file {item} ({e.strerror}); fix "
                                        f"MLBUILD_STORE_PUBLIC_KEYS or [store].public-keys") from None
                except UnicodeDecodeError:
                    raise StoreKeyError(f"the trusted public key file {item} is not text (a key is one name:base64 "
                                        f"line); fix MLBUILD_STORE_PUBLIC_KEYS or [store].public-keys") from None
                text = text.removeprefix("\ufeff")
                if not text.strip():   # else the store's own key was trusted in its place, without a word
                    raise StoreKeyError(f"the trusted public key file {item} is empty; copy the store's .pub file there "
                                        f"again, or fix MLBUILD_STORE_PUBLIC_KEYS or [store].public-keys")
                keys += [parse_public_key(k, f"in {item}") for k in text.split()]
            else:
                keys.append(parse_public_key(item))
        if not keys and self.secret_key_file is not None and self.secret_key_file.is_file():
            keys.append(self.secret_key().public)
        by_name: dict[str, PublicKey] = {}
        for k in keys:
            other = by_name.setdefault(k.name, k)
            if other.raw != k.raw:   # Nix keeps one of them and refuses the other's signatures
                raise StoreKeyError(f"two trusted keys are named {k.name!r} ({other} and {k}): Nix keeps one key "
                                    f"per name and refuses the other's signatures; trust only the store's key, or "
                                    f"make a new key with another name (`mlbuild store init --generate-key "
                                    f"--key-name NAME`)")
        if not keys:
            raise StoreKeyError(f"no trusted public key for the store {self.root}: set MLBUILD_STORE_PUBLIC_KEYS "
                                f"(e.g. the contents of the store's .pub file) or [store].public-keys, or run "
                                f"store-config/setup-store")
        return tuple(keys)

    def shadowed_keys(self, nix_keys: list[str] | None = None) -> list[tuple[PublicKey, str]]:
        """The trusted keys whose name Nix's own configuration (``nix_keys``, else asked) gives to
        another key: Nix keeps one key per name, so it would refuse what the shadowed key signed
        (and rebuild it)."""
        from .. import _nix

        theirs = {k.partition(":")[0]: k for k in (_nix.configured_public_keys() if nix_keys is None else nix_keys)}
        return [(k, theirs[k.name]) for k in self.trusted_keys() if k.name in theirs and theirs[k.name] != str(k)]

    def nix_options(self) -> list[str]:
        """Options that make a Nix call substitute from this store, checking its signatures.

        Add them after ``_nix.common_options()`` (which empties ``substituters``), e.g.
        ``_nix.build(targets, extra=cfg.nix_options())``.
        """
        return [
            "--option", "extra-substituters", self.url,
            "--option", "extra-trusted-public-keys", " ".join(str(k) for k in self.trusted_keys()),
            "--option", "require-sigs", "true",
            "--option", "narinfo-cache-negative-ttl", "0",
            "--option", "narinfo-cache-positive-ttl", "0",
        ]


def _project_table(project_root: Path | None) -> tuple[dict[str, Any], Path | None]:
    try:
        root = project_root if project_root is not None else find_project_root()
    except ConfigError:
        return {}, None
    path = root / CONFIG_NAME
    if not path.is_file():
        return {}, None
    try:
        raw = tomllib.loads(config_text(path))   # a byte order mark, as load_project reads it
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    table = raw.get("store", {})
    if not isinstance(table, dict):
        raise StoreConfigError(f"{path}: [store] must be a table, got {table!r}")
    # As nix/project.nix checks them for builds: a misspelled key (`pth`, `secret_key`) or table
    # (`[stor]`) must not leave the store commands on the machine's default store and keys.
    for where, keys, known in ((CONFIG_NAME, raw, TOP_KEYS), ("[store]", table, STORE_KEYS)):
        unknown = [k for k in keys if k not in known]
        if unknown:
            raise StoreConfigError(f"{path}: {where} has unknown key{'s' if len(unknown) > 1 else ''} "
                                   f"{', '.join(map(json.dumps, unknown))}; it takes {', '.join(map(json.dumps, known))}")
    if "path" in table and not isinstance(table["path"], str):
        raise StoreConfigError(f"{path}: [store].path must be a folder (a string), got {table['path']!r}")
    for flag in ("push", "fsync-nars"):
        if flag in table and not isinstance(table[flag], bool):
            raise StoreConfigError(f"{path}: [store].{flag} must be true or false (no quotes), got {table[flag]!r}")
    return table, root


def _location(given: str, base: Path | None, where: str) -> Path:
    value = given
    if value.startswith("file://"):
        value = value[len("file://"):]
    elif "://" in value:
        raise StoreConfigError(f"{where} = {value!r}: only local folders and file:// URLs are supported "
                               f"(mount NFS and give its path, see store-config/README.md)")
    if not value.strip():   # `file://$CACHE` with CACHE unset: it was the current folder (`store init` made a store there)
        raise StoreConfigError(f"{where} = {given!r} names no folder (an unset variable?); give the folder, as a path "
                               f"or a file:// URL (file:///srv/mlstore)")
    path = Path(os.path.expanduser(value))
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    return Path(os.path.normpath(path))


def _secret_location(given: str, base: Path | None, where: str) -> Path:
    """The secret key's file. A setting that holds the key itself (a CI secret handed over as a
    variable, `MLBUILD_STORE_SECRET_KEY: ${{ secrets.STORE_KEY }}`) is refused without showing it:
    taken for a path, it was printed whole in "cannot read the store's secret key <KEY> (No such
    file or directory)", in the job's log."""
    name = None if os.path.lexists(given) else secret_key_name(given)
    if name is not None:
        fix = (f"write it to a file only this job can read (a CI system's file-type secret, or `printf '%s\\n' "
               f"\"$STORE_KEY\" > \"$RUNNER_TEMP/store.sec\"`) and set {where} to that file's path")
        if where != "MLBUILD_STORE_SECRET_KEY":   # a key written in mlbuild.toml is in git
            fix += "; the key was in mlbuild.toml, so whoever reads the repository holds it: make a new key " \
                   "(store-config/README.md, Keys)"
        raise StoreConfigError(f"{where} holds a secret key itself{f' (named {name!r})' if name else ''}, not the "
                               f"path of its file (the key is not shown here); {fix}")
    return _location(given, base, where)


def _store_root(value: str, base: Path | None, where: str) -> Path:
    """The store folder, refused where Nix could not read it: a substituter list is split at
    whitespace and a store URL ends at '?' or '#' (Nix 2.8 opens `file:///x/team store` as the
    stores `file:///x/team` and `store`, `file:///x/a?b` as `/x/a`), so builds silently rebuilt
    what the store held and `store pull` failed."""
    root = _location(value, base, where)
    if root.parent == root:   # `file://$CACHE/` or `$CACHE/` with CACHE unset: init made nar/, mlbuild/... in /
        raise StoreConfigError(f"{where} = {value!r} is the file system's root, not a store folder (an unset "
                               f"variable?); give the store's own folder, as a path or a file:// URL "
                               f"(file:///srv/mlstore)")
    bad = next((c for c in str(root) if c.isspace() or c in "?#"), None)
    if bad is not None:
        raise StoreConfigError(f"{where} = {value!r}: Nix cannot use a store whose path holds {bad!r} (substituters "
                               f"are a space-separated list of URLs, and a URL ends at '?' or '#'); move the store "
                               f"to a folder without one, or give a link to it from such a folder "
                               f"(`ln -s {shlex.quote(str(root))} /srv/mlstore`) and name the link")
    return root


def _int(value: Any, where: str, text: bool = False) -> int:
    """A whole number: from the environment (``text``), its text; from mlbuild.toml, a TOML
    integer (`keep-last = true` was 1, `zstd-level = 3.9` was 3)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise StoreConfigError(f"{where} must be a whole number, got {value!r}")
    if isinstance(value, str) and not text:
        raise StoreConfigError(f"{where} must be a whole number (no quotes), got {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise StoreConfigError(f"{where} must be a whole number, got {value!r}") from None
    if n < 0:
        raise StoreConfigError(f"{where} must not be negative, got {n}")
    return n


def _zstd_level(value: Any, where: str) -> int:
    n = _int(value, where)
    if not 1 <= n <= 22:   # zstd's levels; 23 and above were a traceback from the first push
        raise StoreConfigError(f"{where} must be a zstd level from 1 (fastest) to 22 (smallest), got {n}")
    return n


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise StoreConfigError(f"{where} must be true or false, got {value!r}")


def load_store_config(project_root: Path | None = None, *, store: str | None = None,
                      env: Mapping[str, str] | None = None) -> StoreConfig:
    """Resolve the store settings (see the module docstring for the order)."""
    env = os.environ if env is None else env
    table, base = _project_table(project_root)
    where = f"{base / CONFIG_NAME if base else CONFIG_NAME} [store]"
    if store:
        root = _store_root(store, None, "--store")
    elif env.get("MLBUILD_STORE"):
        root = _store_root(env["MLBUILD_STORE"], None, "MLBUILD_STORE")
    elif "path" in table:
        root = _store_root(str(table["path"]), base, f"{where}.path")
    else:
        root = DEFAULT_ROOT
    if env.get("MLBUILD_STORE_SECRET_KEY"):
        secret: Path | None = _secret_location(env["MLBUILD_STORE_SECRET_KEY"], None, "MLBUILD_STORE_SECRET_KEY")
        secret_from = "MLBUILD_STORE_SECRET_KEY"
    elif "secret-key" in table:
        secret = _secret_location(str(table["secret-key"]), base, f"{where}.secret-key")
        secret_from = f"{where}.secret-key"
    else:
        secret = DEFAULT_SECRET_KEY if DEFAULT_SECRET_KEY.exists() else None
        secret_from = "the machine's default: neither MLBUILD_STORE_SECRET_KEY nor [store].secret-key is set"
    if env.get("MLBUILD_STORE_PUBLIC_KEYS"):
        public = tuple(env["MLBUILD_STORE_PUBLIC_KEYS"].split())
    elif "public-keys" in table:
        keys = table["public-keys"]
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise StoreConfigError(f"{where}.public-keys must be a list of `name:base64` keys or .pub files")
        public = tuple(str(_location(k, base, where)) if k.endswith(".pub") else k for k in keys)
    else:
        public = (str(DEFAULT_PUBLIC_KEY),) if DEFAULT_PUBLIC_KEY.exists() else ()
    keep = env.get("MLBUILD_STORE_KEEP_LAST", table.get("keep-last", 3))
    keep_where = "MLBUILD_STORE_KEEP_LAST" if env.get("MLBUILD_STORE_KEEP_LAST") else f"{where}.keep-last"
    if env.get("MLBUILD_STORE_FSYNC_NARS"):
        fsync_nars = _bool(env["MLBUILD_STORE_FSYNC_NARS"], "MLBUILD_STORE_FSYNC_NARS")
    else:
        fsync_nars = _bool(table.get("fsync-nars", False), f"{where}.fsync-nars")
    return StoreConfig(root=root, secret_key_file=secret, public_keys=public,
                       keep_last=_int(keep, keep_where, text=bool(env.get("MLBUILD_STORE_KEEP_LAST"))),
                       zstd_level=_zstd_level(table.get("zstd-level", 3), f"{where}.zstd-level"),
                       fsync_nars=fsync_nars, secret_key_from=secret_from)
