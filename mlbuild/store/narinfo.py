"""Narinfo files of a Nix binary cache: parsing, rendering, the signed fingerprint, hash formats.

A ``<hash>.narinfo`` describes one store path: where its NAR lies (``URL``, ``Compression``,
``FileHash``, ``FileSize``), what the NAR is (``NarHash``, ``NarSize``), its ``References``
(basenames), ``Deriver`` and ``Sig`` lines. Nix signs the fingerprint
``1;<store path>;<NarHash as sha256:base32>;<NarSize>;<comma-separated full reference paths>``
(libstore ``ValidPathInfo::fingerprint``); the other fields are checked through the NAR hash.

mlbuild adds two fields Nix ignores: ``MlbuildB3`` (``blake3:<hex>``, the BLAKE3 hash of the
NAR) and ``MlbuildB3Sig`` (an ed25519 signature, by the same store key, of :meth:`NarInfo.b3_message`:
the fingerprint and that hash). A restore that finds a trusted ``MlbuildB3Sig`` checks the NAR
against the BLAKE3 hash (about 3x faster than sha256 here) instead of ``NarHash``: the signer
computed both over the same bytes at push, so either proves the bytes are the ones signed.

Nix prints hashes as ``sha256:<base32>`` in narinfos and as SRI ``sha256-<base64>`` in
``path-info --json``; :func:`parse_hash` reads every form Nix writes, :func:`format_hash` writes
the narinfo form.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field, replace

from ..errors import StoreCorruptError
from ..nar import from_nix_base32, nix_base32

__all__ = ["NarInfo", "parse_hash", "format_hash", "format_b3", "fingerprint", "hash_part", "STORE_DIR",
           "REPAIR_HINT"]

STORE_DIR = "/nix/store"
REPAIR_HINT = "; remove the entry with `mlbuild store verify --repair`"
_SHA256_LEN = 32


def parse_hash(text: str) -> bytes:
    """The sha256 digest of ``sha256:<base32|hex|base64>`` or SRI ``sha256-<base64>``."""
    if text.startswith("sha256-"):
        body, decode = text[7:], "base64"
    elif text.startswith("sha256:"):
        body = text[7:]
        decode = {52: "base32", 64: "hex"}.get(len(body), "base64")
    else:
        raise ValueError(f"not a sha256 hash: {text!r}")
    try:
        if decode == "base32":
            digest = from_nix_base32(body)
        elif decode == "hex":
            digest = bytes.fromhex(body)
        else:
            digest = base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error) as e:
        raise ValueError(f"not a sha256 hash: {text!r} ({e})") from None
    if len(digest) != _SHA256_LEN:
        raise ValueError(f"not a sha256 hash: {text!r} ({len(digest)} bytes)")
    return digest


def format_hash(digest: bytes) -> str:
    """``sha256:<nix base32>``, the form narinfos and fingerprints use."""
    return "sha256:" + nix_base32(digest)


def format_b3(digest: bytes) -> str:
    """``blake3:<hex>``, the form of the ``MlbuildB3`` field."""
    return "blake3:" + digest.hex()


def hash_part(store_path: str) -> str:
    """The 32-character hash of ``/nix/store/<hash>-<name>`` (the narinfo's file name)."""
    base = store_path.rsplit("/", 1)[-1]
    if len(base) < 34 or base[32] != "-":
        raise ValueError(f"not a store path: {store_path!r}")
    return base[:32]


def fingerprint(store_path: str, nar_hash: str, nar_size: int, references: list[str] | tuple[str, ...],
                store_dir: str = STORE_DIR) -> bytes:
    """What Nix signs: ``1;path;sha256:base32;size;full,reference,paths`` (references sorted)."""
    refs = ",".join(sorted(f"{store_dir}/{r}" if "/" not in r else r for r in references))
    return f"1;{store_path};{format_hash(parse_hash(nar_hash))};{nar_size};{refs}".encode()


@dataclass(frozen=True)
class NarInfo:
    """One narinfo; ``references`` and ``deriver`` are basenames, as in the file."""

    store_path: str
    url: str
    compression: str
    file_hash: str
    file_size: int
    nar_hash: str
    nar_size: int
    references: tuple[str, ...] = ()
    deriver: str | None = None
    sigs: tuple[str, ...] = ()
    ca: str | None = None
    b3: str | None = None          # blake3:<hex> of the NAR
    b3_sigs: tuple[str, ...] = ()
    extra: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def hash_part(self) -> str:
        return hash_part(self.store_path)

    @property
    def store_dir(self) -> str:
        return self.store_path.rsplit("/", 1)[0]

    @property
    def reference_paths(self) -> list[str]:
        return [f"{self.store_dir}/{r}" for r in self.references]

    def fingerprint(self) -> bytes:
        return fingerprint(self.store_path, self.nar_hash, self.nar_size, self.references, self.store_dir)

    def with_sigs(self, sigs: tuple[str, ...]) -> NarInfo:
        return replace(self, sigs=sigs)

    def b3_message(self) -> bytes:
        """What ``MlbuildB3Sig`` signs: the fingerprint and the BLAKE3 hash of the NAR."""
        if not self.b3:
            raise ValueError(f"{self.store_path}: no MlbuildB3 hash to sign")
        return b"mlbuild-b3;1;" + self.fingerprint() + b";" + self.b3.encode()

    def render(self) -> str:
        """The text Nix reads (same field order as Nix writes)."""
        lines = [
            f"StorePath: {self.store_path}",
            f"URL: {self.url}",
            f"Compression: {self.compression}",
            f"FileHash: {self.file_hash}",
            f"FileSize: {self.file_size}",
            f"NarHash: {self.nar_hash}",
            f"NarSize: {self.nar_size}",
            f"References: {' '.join(sorted(self.references))}",
        ]
        if self.deriver:
            lines.append(f"Deriver: {self.deriver}")
        lines += [f"Sig: {s}" for s in self.sigs]
        if self.ca:
            lines.append(f"CA: {self.ca}")
        if self.b3:
            lines.append(f"MlbuildB3: {self.b3}")
            lines += [f"MlbuildB3Sig: {s}" for s in self.b3_sigs]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str, where: str = "narinfo") -> NarInfo:
        """Parse a narinfo; raises StoreCorruptError naming ``where`` and the bad line."""
        fields: dict[str, str] = {}
        sigs: list[str] = []
        b3_sigs: list[str] = []
        extra: list[tuple[str, str]] = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            key, sep, value = line.partition(": ")
            if not sep:
                key, sep, value = line.partition(":")
            if not sep:
                raise StoreCorruptError(f"{where}: line {n} {line!r} is not `Key: value`{REPAIR_HINT}")
            if key == "Sig":
                sigs.append(value.strip())
            elif key == "MlbuildB3Sig":
                b3_sigs.append(value.strip())
            elif key in _KNOWN:
                fields[key] = value.strip()
            else:
                extra.append((key, value))
        missing = [k for k in ("StorePath", "URL", "NarHash", "NarSize") if k not in fields]
        if missing:
            raise StoreCorruptError(f"{where}: no {', '.join(missing)} field{REPAIR_HINT}")
        try:
            nar_hash = format_hash(parse_hash(fields["NarHash"]))
            file_hash = format_hash(parse_hash(fields["FileHash"])) if "FileHash" in fields else ""
            hash_part(fields["StorePath"])
            b3 = fields.get("MlbuildB3") or None
            if b3 is not None and not (b3.startswith("blake3:") and len(b3) == 71
                                       and all(c in "0123456789abcdef" for c in b3[7:])):
                raise ValueError(f"MlbuildB3 {b3!r} is not blake3:<64 hex digits>")
            return cls(
                store_path=fields["StorePath"], url=fields["URL"],
                compression=fields.get("Compression", "bzip2"),
                file_hash=file_hash, file_size=int(fields.get("FileSize", "0")),
                nar_hash=nar_hash, nar_size=int(fields["NarSize"]),
                references=tuple(fields.get("References", "").split()),
                deriver=fields.get("Deriver") or None, sigs=tuple(sigs), ca=fields.get("CA") or None,
                b3=b3, b3_sigs=tuple(b3_sigs),
                extra=tuple(extra),
            )
        except ValueError as e:
            raise StoreCorruptError(f"{where}: {e}{REPAIR_HINT}") from None


_KNOWN = frozenset({"StorePath", "URL", "Compression", "FileHash", "FileSize", "NarHash", "NarSize",
                    "References", "Deriver", "CA", "MlbuildB3"})
