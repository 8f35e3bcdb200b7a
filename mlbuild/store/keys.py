"""Ed25519 keys in Nix's format: generate, load, sign and check narinfo fingerprints.

Nix writes a secret key as ``name:base64(seed || public)`` (64 bytes, libsodium's layout) and a
public key as ``name:base64(public)`` (32 bytes); ``nix-store --generate-binary-cache-key`` makes
the same files as :func:`generate_key_pair`. A signature is ``name:base64(ed25519(fingerprint))``;
ed25519 is deterministic, so the same key and narinfo always give the same ``Sig`` line.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from .. import atomic
from ..errors import StoreKeyError

__all__ = ["SecretKey", "PublicKey", "check_key_name", "parse_secret_key", "parse_public_key", "load_secret_key",
           "generate_key_pair", "check_signatures", "parse_public_keys", "secret_key_name"]


_FORMAT = ("the format of the key files `nix-store --generate-binary-cache-key NAME SEC PUB` and `mlbuild store "
           "init --generate-key` write")


_SECRET_IN = re.compile(r"(?:([^:'\"`=]*):)?([A-Za-z0-9+/]{86}==)")   # an ed25519 secret key's base64: 64 bytes


def secret_key_name(text: str) -> str | None:
    """The name of the secret key ``text`` holds (``name:base64`` of 64 bytes: '' for the base64
    alone), else None: a setting that should hold a path or a public key but holds a secret key
    (a CI secret handed over as a variable) is refused without being shown. Held anywhere in it,
    whitespace left out: one in quotes (a YAML or .env file's `"name:..."`), wrapped by `base64`,
    or followed by its public key was taken for a path, and shown whole in the message."""
    found = _SECRET_IN.search("".join(text.split()))
    if found is None:
        return None
    try:
        return found.group(1) or "" if len(base64.b64decode(found.group(2), validate=True)) == 64 else None
    except binascii.Error:
        return None


def _split(text: str, what: str, size: int, where: str | None = None, secret: bool = False) -> tuple[str, bytes]:
    """(name, key bytes) of a ``name:base64`` key. The errors say where the key came from and what
    is wrong with it; a secret key's text is never part of them (not even a slice of it), nor is
    the text of a "public key" that is a secret key's base64 (the name left out)."""
    stripped = text.strip()
    label = f"{what} {where}" if where else what
    shown = "" if secret or secret_key_name(stripped) is not None else f" {stripped[:80]!r}"
    lines = [line for line in stripped.splitlines() if line.strip()]
    if len(lines) > 1:
        raise StoreKeyError(f"{label} holds {len(lines)} lines, but a key is one "
                            f"`name:base64` line ({_FORMAT}); remove the other lines")
    name, sep, body = stripped.partition(":")
    if not sep or not name:
        raise StoreKeyError(f"{label}{shown} is not `name:base64`, {_FORMAT}; give such a key")
    space = next((i for i, c in enumerate(stripped) if c.isspace()), None)
    if space is not None:
        raise StoreKeyError(f"{label} (key {name!r}) has a space inside it (character {space + 1} of "
                            f"{len(stripped)}); a key is `name:base64` with no spaces: remove it")
    try:
        raw = base64.b64decode(body, validate=True)
    except binascii.Error:
        bad = sorted({c for c in body if not (c.isascii() and (c.isalnum() or c in "+/="))})
        why = f"characters base64 does not use ({' '.join(map(repr, bad))})" if bad else \
            f"{len(body)} base64 characters, not a whole number of groups of 4 (cut short?)"
        raise StoreKeyError(f"{label} (key {name!r}): the part after the name is not base64: it has {why}; "
                            f"copy the key again from the file Nix wrote") from None
    if len(raw) != size:
        if secret and len(raw) == 32:
            hint = "that is the size of a public key: this is the public half (the .pub file), not the secret key"
        elif not secret and len(raw) == 64:
            hint = ("that is the size of a secret key, the other half of the key pair: give the public half (the "
                    ".pub file) here, and keep the secret key out of this setting")
        else:
            hint = "cut short, or not a key: is it the other half of the key pair?"
        raise StoreKeyError(f"{label} (key {name!r}) holds {len(raw)} bytes, not {size}; {hint}")
    return name, raw


@dataclass(frozen=True)
class PublicKey:
    """A trusted key: the name a ``Sig`` line starts with, and the ed25519 key."""

    name: str
    raw: bytes

    def __str__(self) -> str:
        return f"{self.name}:{base64.b64encode(self.raw).decode()}"

    def verify(self, signature: bytes, message: bytes) -> bool:
        # cryptography is imported where a key is used, not with the module: every build imports the
        # store's configuration (trusted keys are read from files), and the import took ~40 ms of it.
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
            return True
        except InvalidSignature:
            return False


@dataclass(frozen=True)
class SecretKey:
    """A signing key; ``sign`` gives a narinfo ``Sig`` value."""

    name: str
    seed: bytes

    @property
    def public(self) -> PublicKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        pub = Ed25519PrivateKey.from_private_bytes(self.seed).public_key()
        return PublicKey(self.name, pub.public_bytes(Encoding.Raw, PublicFormat.Raw))

    def sign(self, message: bytes) -> str:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        sig = Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)
        return f"{self.name}:{base64.b64encode(sig).decode()}"

    def __str__(self) -> str:
        return f"{self.name}:{base64.b64encode(self.seed + self.public.raw).decode()}"


def parse_public_key(text: str, where: str | None = None) -> PublicKey:
    name, raw = _split(text, "public key", 32, where)
    return PublicKey(name, raw)


def parse_public_keys(text: str) -> tuple[PublicKey, ...]:
    """Whitespace-separated keys (as in nix.conf's ``trusted-public-keys``)."""
    return tuple(parse_public_key(k) for k in text.split())


def parse_secret_key(text: str, where: str | None = None) -> SecretKey:
    """A secret key; ``where`` (its file) names it in errors, which never hold any of its text."""
    name, raw = _split(text, "secret key", 64, where, secret=True)
    key = SecretKey(name, raw[:32])
    if key.public.raw != raw[32:]:
        raise StoreKeyError(f"secret key {where + ' ' if where else ''}(key {name!r}): its public half does not "
                            f"match its seed (damaged?); copy it again from where it was made, or make a new key")
    return key


def load_secret_key(path: Path, init: str = "mlbuild store init --generate-key") -> SecretKey:
    """The secret key in ``path``; ``init`` is the command that makes one for the store in use
    (``mlbuild store --store ROOT init --generate-key``: a plain one made it for the configured store)."""
    try:
        text = path.read_text()
    except OSError as e:
        if path.is_dir():   # init --generate-key would fail on it the same way
            fix = ("it is a folder: point MLBUILD_STORE_SECRET_KEY or [store].secret-key at the key's .sec file "
                   "in it, or at a file name where `" + init + "` makes one")
        elif path.exists():
            fix = _unreadable_fix(path)
        else:
            fix = f"create it with `{init}` or set MLBUILD_STORE_SECRET_KEY"
        raise StoreKeyError(f"cannot read the store's secret key {path} ({e.strerror}); {fix}") from None
    except UnicodeDecodeError:
        raise StoreKeyError(f"the store's secret key {path} is not text (a key file is one name:base64 line); "
                            "point MLBUILD_STORE_SECRET_KEY or [store].secret-key at the key's .sec file") from None
    if not text.removeprefix("\ufeff").strip():   # where generation stopped: an mlbuild before atomic key files wrote it in place
        raise StoreKeyError(f"the store's secret key {path} is empty: a key generation stopped before writing it (a "
                            f"full disk, a kill); remove it (`rm {shlex.quote(str(path))}`) and run `{init}` again, or copy "
                            f"the key from where it was made")
    return parse_secret_key(text.removeprefix("\ufeff"), str(path))


def _unreadable_fix(path: Path) -> str:
    """What lets this user read the secret key ``path``: its group reads it (setup-store makes it
    0640, group mlbuild), so be in that group; a key only its owner may read (`store init
    --generate-key` writes 0600) needs its group's read bit first, whoever runs it."""
    import grp
    import pwd

    st = path.stat()
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = f"gid {st.st_gid}"
    if not st.st_mode & 0o040:
        try:
            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            owner = f"uid {st.st_uid}"
        return (f"its mode {st.st_mode & 0o777:04o} lets only its owner ({owner}) read it: give its group read access "
                f"(`chmod g+r {path}`, group {group}; setup-store makes it 0640, group mlbuild), and run as a member "
                f"of that group")
    return (f"this user may not read it: run as a member of its group ({group}; the mlbuild group, see "
            f"store-config/README.md) or as root")


def check_key_name(name: str) -> str:
    """``name`` if it can name a key: Nix reads a key as ``name:base64`` in a list separated by
    whitespace (``trusted-public-keys``), so a name with a ':' or a space made a key no reader parses
    (and init had already published it as the store's). StoreKeyError naming it otherwise."""
    if ":" in name or not name or any(c.isspace() for c in name):
        raise StoreKeyError(f"key name {name!r} must be non-empty, with no ':' and no spaces (e.g. store.example.org-1)")
    return name


def generate_key_pair(name: str, secret_path: Path, public_path: Path) -> SecretKey:
    """Write a new key pair (secret file mode 0600, created exclusively: never overwrites)."""
    check_key_name(name)
    seed = os.urandom(32)
    key = SecretKey(name, seed)
    secret_path.parent.mkdir(parents=True, exist_ok=True)
    # Whole or not at all: a full disk left an empty secret key, which the next init took as the
    # user's own key ("is not `name:base64` ... give such a key").
    atomic.create_bytes(secret_path, str(key).encode(), 0o600)
    atomic.write_text(public_path, str(key.public))
    return key


def check_signatures(sigs: tuple[str, ...] | list[str], message: bytes, keys: tuple[PublicKey, ...]) -> bool:
    """True when one of ``sigs`` is a valid signature of ``message`` by one of ``keys``."""
    by_name: dict[str, list[PublicKey]] = {}
    for k in keys:
        by_name.setdefault(k.name, []).append(k)
    for sig in sigs:
        name, sep, body = sig.partition(":")
        if not sep or name not in by_name:
            continue
        try:
            raw = base64.b64decode(body, validate=True)
        except binascii.Error:
            continue
        if len(raw) == 64 and any(k.verify(raw, message) for k in by_name[name]):
            return True
    return False
