"""Creating a store and its key pair, and release tags (``mlbuild store init`` / ``tag``).

``init_store`` makes the folders and ``nix-cache-info`` (so readers on a read-only mount never
need to create anything), and with ``generate_key`` a key pair in Nix's format where the config
says the signing key lives (default /etc/mlbuild/store.sec, public half beside it as ``.pub``).
The public key is also copied to ``<store>/mlbuild/public-key`` (by the first machine that signs
it: never replaced) so people can see which key signs the store, and pushes must sign with a key
it names (``push.check_store_key``); readers' trust is never taken from that copy: machines trust
the keys their own config names.
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .. import _nix
from ..errors import StoreConfigError, StoreTargetError
from .config import DEFAULT_SECRET_KEY, StoreConfig
from .keys import check_key_name, generate_key_pair, load_secret_key
from .layout import Layout, publish_bytes, store_command, writing
from .push import published_keys, resolve_targets
from .roots import check_name, read_root_file, remove_tag, roots_lock, write_tag
from .verify import check_entry

__all__ = ["init_store", "InitResult", "tag", "TagResult", "untag", "tags", "nix_conf"]


@dataclass
class InitResult:
    root: Path
    secret_key_file: Path | None
    public_key: str | None
    generated: bool
    nix_conf: str = ""
    untrusted_here: bool = False   # mlbuild's trusted keys here do not include the signing key
    published: str | None = None   # the key <store>/mlbuild/public-key names, when not this one


def default_key_name() -> str:
    """``<host>-mlbuild-<random>``: two keys made on one machine (its own, a team store's) must
    not share a name, as Nix keeps one trusted key per name and refuses the other's signatures."""
    return f"{socket.gethostname().split('.')[0] or 'mlbuild'}-mlbuild-{secrets.token_hex(4)}"


def init_store(cfg: StoreConfig, *, generate_key: bool = False, key_name: str | None = None) -> InitResult:
    """Create the store at ``cfg.root`` (idempotent) and, if asked, a key pair when none exists.
    ``key_name`` (the new key's) is checked before anything is written."""
    secret = cfg.secret_key_file or (DEFAULT_SECRET_KEY if generate_key else None)
    if key_name is not None:
        check_key_name(key_name)
        if not generate_key:   # it named nothing: no key is made without --generate-key
            raise StoreConfigError(f"--key-name {key_name} names the key --generate-key makes; add --generate-key "
                                   f"(or leave --key-name out)")
        existing = _key_name(secret, cfg) if secret is not None and secret.exists() else None
        if existing is not None and existing != key_name:
            raise StoreConfigError(f"the signing key {secret} exists already, named {existing!r}, so no key named "
                                   f"{key_name!r} is made; leave --key-name out to keep it, or point "
                                   f"MLBUILD_STORE_SECRET_KEY at a new file for a new key")
    layout = Layout(cfg.root)
    layout.require_writable("initialise")
    full = "what it made stays; free space there (or raise the quota), then run init again"
    with writing(cfg.root, "initialise the store", fix=full):
        layout.init()
    generated = False
    public: str | None = None
    shown = layout.root / "mlbuild" / "public-key"
    store_keys = [str(k) for k in published_keys(layout)]   # one, or two while the key changes
    published = " ".join(store_keys) or None
    if secret is not None and secret.exists():
        public = str(load_secret_key(secret, store_command(cfg.root, 'init --generate-key')).public)
    elif secret is not None and generate_key:
        if published is not None:   # a second key would sign what no reader of this store trusts
            raise StoreConfigError(f"the store {cfg.root} is already signed by {published} ({shown}), and {secret} "
                                   f"does not exist: to push, copy the store's secret key there (or point "
                                   f"MLBUILD_STORE_SECRET_KEY at it); to give the store a new key, remove {shown} "
                                   f"first, then re-sign (`mlbuild store push` of what readers need)")
        name = key_name or default_key_name()
        try:
            same_name = [str(k) for k in cfg.trusted_keys() if k.name == name]
        except StoreConfigError:
            same_name = []
        same_name += [k for k in _nix.configured_public_keys() if k.partition(":")[0] == name]
        if same_name:
            raise StoreConfigError(f"a trusted key is already named {name!r} ({same_name[0]}); Nix keeps one key "
                                   f"per name and would refuse the new key's signatures: pass another --key-name")
        public = str(generate_key_pair(name, secret, secret.with_suffix(".pub")).public)
        generated = True
    untrusted = False
    if public:
        if published is None:
            with writing(cfg.root, "publish the store's public key", fix=full):
                publish_bytes(shown, (public + "\n").encode())
        elif public in store_keys:
            published = None
        try:   # mlbuild here trusts /etc/mlbuild/store.pub when it exists, not a key made for another store
            untrusted = public not in {str(k) for k in cfg.trusted_keys()}
        except StoreConfigError:
            untrusted = True
    # Readers trust the store's keys: the published ones, whichever key signs here
    trust = tuple(store_keys) or ((public,) if public else ())
    conf = nix_conf(StoreConfig(cfg.root, public_keys=trust)) if trust else ""
    return InitResult(cfg.root, secret, public, generated, conf, untrusted, published)


def _key_name(secret: Path, cfg: StoreConfig) -> str:
    return load_secret_key(secret, store_command(cfg.root, "init --generate-key")).name


def nix_conf(cfg: StoreConfig) -> str:
    """The nix.conf lines that make every Nix call on a machine substitute from this store."""
    keys = " ".join(str(k) for k in cfg.trusted_keys())
    return (f"extra-substituters = {cfg.url}\nextra-trusted-public-keys = {keys}\nrequire-sigs = true\n"
            f"narinfo-cache-negative-ttl = 0\n")


@dataclass
class TagResult:
    """A tag written: its file, the paths it names, and those it named before (None: a new tag)."""

    file: Path
    paths: list[str]
    previous: list[str] | None = None

    @property
    def dropped(self) -> list[str]:
        """What the tag named before and no longer keeps."""
        return sorted(set(self.previous or ()) - set(self.paths))

    @property
    def added(self) -> list[str]:
        return sorted(set(self.paths) - set(self.previous or ())) if self.previous is not None else []


def tag(cfg: StoreConfig, name: str, targets: Sequence[str], *, force: bool = False) -> TagResult:
    """Tag store paths as release NAME: gc keeps them and their closures. Each must have an entry a
    reader would take (its narinfo describes it, signed by a key the store names, or one trusted
    here where it names none; its NAR is there, of its size). A tag may gain paths; one it names
    is dropped only with ``force`` (it then loses the tag's gc protection)."""
    check_name(name, "tag")   # before the paths: a path not pushed yet said "push it first", and then this
    layout = Layout(cfg.root)
    layout.require()
    layout.require_writable(f"tag {name}")
    paths = resolve_targets(targets)
    # Under the roots lock, the tag read here is the one written over: two tags of one name at once
    # each wrote back the tag as it had read it, and both said "tagged" with one's paths untagged.
    with writing(cfg.root, f"tag {name}", fix="the tag was left as it was; free space there, then tag again"), \
            roots_lock(layout):
        wanted = published_keys(layout) or cfg.trusted_keys()
        bad = [(p, why) for p in paths if (why := check_entry(layout, p, wanted)) is not None]
        if bad:
            p, why = bad[0]
            more = f" (and {len(bad) - 1} more: {', '.join(q for q, _ in bad[1:])})" if len(bad) > 1 else ""
            fix = (f"push it first (`mlbuild store push {p}`)" if why == "is not in the store" else
                   f"push it again (`mlbuild store push {p}` publishes it anew), then tag it")
            where = "" if why == "is not in the store" else " in the store"
            raise StoreTargetError(f"cannot tag {name}: {p} {why}{where} {cfg.root}{more}; {fix}")
        previous = tags(cfg).get(name)
        dropped = sorted(set(previous or ()) - set(paths))
        if dropped and not force:
            raise StoreTargetError(f"the tag {name} names {' '.join(dropped)}, which {' '.join(paths)} leave"
                                   f"{'s' if len(paths) == 1 else ''} out: the tag would no longer keep "
                                   f"{'it' if len(dropped) == 1 else 'them'} from the next gc; pass --force to move "
                                   f"the tag, name {'it' if len(dropped) == 1 else 'them'} too, or pick another name")
        return TagResult(write_tag(layout, name, paths), paths, previous)


def untag(cfg: StoreConfig, name: str) -> None:
    """Remove the release tag NAME; StoreTargetError, listing the tags there are, if there is none."""
    layout = Layout(cfg.root)
    layout.require()
    layout.require_writable(f"untag {name}")
    with roots_lock(layout):   # not between a tag's read of NAME and its write, which would bring it back
        removed = remove_tag(layout, name)
    if not removed:
        raise StoreTargetError(f"no tag {name!r} in the store {cfg.root} (tags: {', '.join(tags(cfg)) or 'none'})")


def tags(cfg: StoreConfig) -> dict[str, list[str]]:
    folder = Layout(cfg.root).roots_dir / "tags"
    if not folder.is_dir():
        return {}
    return {f.name: [line for line in read_root_file(f).split() if line]
            for f in sorted(folder.iterdir()) if not f.name.startswith(".")}
