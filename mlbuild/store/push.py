"""``mlbuild store push``: upload the closures of store paths, skipping what the store already has.

Paths are published references-first, so at every moment each narinfo's references are already
in the store: a reader (or a writer killed half-way) never sees a narinfo whose closure is
incomplete. A narinfo already present is not rewritten (its mtime is refreshed). Before it looks,
the push records its whole closure as a gc root, under the roots lock that gc holds from reading
the roots to removing entries: an entry it finds there is kept by a concurrent gc. Several processes on
several hosts may push overlapping closures at once: every file is published by an atomic
rename of a uniquely named temp file, NAR files are named by their content hash, and a narinfo is
only written after its NAR is complete. An entry whose NAR is missing or short (a power cut on the
store's host before the write-back of a NAR that was not fsynced, see ``fsync-nars``; a NAR
removed by hand) is not "present": the push publishes it again, as it does an entry with no valid
signature by a trusted key (signed by a key the store no longer trusts, or edited after signing)
and a narinfo filed under this path's hash that describes another path. A push refuses to sign with a key
whose public half the configuration does not trust, or that is not the key the store names as its
own (``<store>/mlbuild/public-key``): every reader would refuse its entries.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from .. import _nix
from ..errors import NixError, StoreCorruptError, StoreKeyError, StoreTargetError
from .config import StoreConfig
from .keys import PublicKey, SecretKey, parse_public_keys
from .layout import Layout, publish_bytes, read_store_file, store_command, writing
from .narinfo import STORE_DIR, NarInfo
from .roots import check_name, default_name, record_push, replace_older_records, roots_lock
from .upload import PathInfo, path_infos, publish_path
from .verify import check_entry, check_nar

__all__ = ["push", "PushResult", "resolve_targets", "topological", "check_signing_key", "check_store_key",
           "published_keys"]


@dataclass
class PushResult:
    """What a push did: ``pushed`` narinfos written, ``present`` paths the store already had."""

    targets: list[str]
    pushed: list[NarInfo] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    # entries the store had that a reader would refuse (no valid signature by a trusted key,
    # filed under this path but describing another, NAR missing or short), with why: published again
    replaced: list[tuple[str, str]] = field(default_factory=list)
    # entries the store had, sound but without a signature by the key a reader needs: this key's
    # signature added, the NAR and the other signatures kept
    signed: list[str] = field(default_factory=list)
    records: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    # --build-deps: build inputs neither on this machine nor in the store (the targets were
    # substituted here, not built), so nothing pushed them
    absent_build_inputs: list[str] = field(default_factory=list)
    # --build-deps: targets whose derivation is not in this store (fetched, not instantiated)
    underived_targets: list[str] = field(default_factory=list)

    @property
    def bytes_written(self) -> int:
        return sum(n.file_size for n in self.pushed)


def resolve_targets(targets: Sequence[str], store_dir: str = STORE_DIR) -> list[str]:
    """Store paths named by ``targets``: store paths (or paths inside one), or links to them."""
    out: list[str] = []
    for t in targets:
        s = str(t)
        if not s.startswith(store_dir + "/") and (os.path.lexists(s)):
            s = os.path.realpath(s)
        if not s.startswith(store_dir + "/") or len(s) <= len(store_dir) + 34:
            raise StoreTargetError(f"{t!r} is not a store path nor a link to one; pass a path like "
                                   f"{store_dir}/<hash>-<name> or a `result` link from `nix build`")
        base = s[len(store_dir) + 1:].split("/", 1)[0]
        path = f"{store_dir}/{base}"
        if path not in out:
            out.append(path)
    return out


def topological(infos: dict[str, PathInfo]) -> list[str]:
    """Paths ordered so that each comes after every path it references (within ``infos``)."""
    order: list[str] = []
    state: dict[str, int] = {}
    for root in sorted(infos):
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            path, i = stack.pop()
            if i == 0:
                if state.get(path):
                    continue
                state[path] = 1
            refs = [r for r in infos[path].references if r in infos and r != path]
            while i < len(refs) and state.get(refs[i]):
                i += 1
            if i < len(refs):
                stack.append((path, i + 1))
                stack.append((refs[i], 0))
            else:
                state[path] = 2
                order.append(path)
    return order


def _closure(targets: list[str], local_store: str | None,
             build_deps: bool) -> tuple[dict[str, PathInfo], list[str], list[str]]:
    """What to upload, the build-time inputs among it that no target refers to, and the build-time
    inputs not on this machine."""
    try:   # one Nix call when every target is valid (the usual case)
        infos = path_infos(targets, store=local_store, recursive=True)
    except NixError:
        invalid = _nix.invalid_paths_in(targets, store=local_store)
        if not invalid:
            raise
        where = f" {local_store}" if local_store else ""
        raise StoreTargetError(f"{', '.join(invalid)} is not valid in the local store{where}; build it "
                               f"first (`nix build ...` / `mlbuild build`), then push") from None
    if build_deps:
        derivers: dict[str, str] = {p: d for p in targets if (d := infos[p].deriver)}
        gone = set(_nix.invalid_paths_in(list(derivers.values()), store=local_store))
        drvs = [d for d in derivers.values() if d not in gone]
        valid, absent = _nix.build_closure(drvs, store=local_store)
        # a target fetched into this store without its derivation: what rebuilding it needs is unknown here
        absent += [p for p in targets if derivers.get(p) in gone]
        extra = [p for p in valid if p not in infos]
        infos.update(path_infos(extra, store=local_store, recursive=True))
        return infos, sorted(extra), sorted(absent)
    return infos, [], []


def _reaching(targets: list[str], infos: dict[str, PathInfo]) -> list[str]:
    """``targets`` and every path of ``infos`` they reference, directly or not."""
    out: set[str] = set()
    todo = list(targets)
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo += [r for r in infos[p].references if r in infos]
    return sorted(out)


def check_signing_key(key: SecretKey, trusted: tuple[PublicKey, ...]) -> None:
    """StoreKeyError unless the signing key's public half is among the trusted keys: every reader
    configured like this machine would refuse what it signs."""
    if key.public not in trusted:
        raise StoreKeyError(
            f"the signing key {key.name} (public half {key.public}) is not among the store's trusted keys "
            f"({', '.join(str(k) for k in trusted)}): Nix and `mlbuild store pull` would refuse everything it "
            f"signs, so nothing was pushed. Sign with the store's key (MLBUILD_STORE_SECRET_KEY or "
            f"[store].secret-key), or, if this key should sign the store, add its public half to "
            f"MLBUILD_STORE_PUBLIC_KEYS or [store].public-keys here and to trusted-public-keys on every machine "
            f"that reads the store")


def published_keys(layout: Layout) -> tuple[PublicKey, ...]:
    """The keys the store names as its own (``<store>/mlbuild/public-key``, one or more: during a
    key rotation, the old and the new); () when it names none. StoreKeyError when that file
    cannot be read or holds no key."""
    shown = layout.root / "mlbuild" / "public-key"
    try:
        # Only as a file of the store: any writer of the store could link it to a file only root may
        # read, whose first word the error below would then show to whoever runs this (or a FIFO).
        text = read_store_file(shown).removeprefix("\ufeff").strip()
    except (FileNotFoundError, NotADirectoryError):
        return ()
    except StoreCorruptError:
        what = (f"is a symbolic link (to {os.readlink(shown)}), not the store's public key file; remove it and"
                if shown.is_symlink() else "is not a file, so it holds no public key;")
        raise StoreKeyError(f"{shown} {what} write the public half of the key that signs the store there "
                            f"(`name:base64`, its .pub file)") from None
    except OSError as e:
        raise StoreKeyError(f"cannot read {shown} ({e.strerror}), the store's public key, to check that this "
                            f"machine signs with it; make it readable to the store's group") from None
    except UnicodeDecodeError:
        raise StoreKeyError(f"{shown} is not text, so it holds no public key; write the public half of the key "
                            f"that signs the store there (`name:base64`, its .pub file)") from None
    if not text:
        return ()
    try:
        return tuple(parse_public_keys(text))
    except StoreKeyError as e:
        raise StoreKeyError(f"{shown} does not hold the store's public key ({e}); write the public half of the "
                            f"key that signs the store there (`name:base64`, its .pub file)") from None


def check_store_key(layout: Layout, key: SecretKey, key_file: Path | None = None, key_from: str = "") -> None:
    """StoreKeyError when the store names its key (``<store>/mlbuild/public-key``, written by the
    machine that first signed it) and ``key`` is not that key: readers set up from the store's
    key (setup-store, the nix.conf lines `store init` prints) would refuse everything it signs.
    A push with the machine's own default key to a team's store did that without a word."""
    shown = layout.root / "mlbuild" / "public-key"
    published = published_keys(layout)
    if not published or key.public in published:
        return
    where = f" ({key_file}{f', {key_from}' if key_from else ''})" if key_file else ""
    names = ", ".join(k.name for k in published)
    raise StoreKeyError(
        f"this machine signs with {key.public}{where}, not the store's key {' '.join(map(str, published))} "
        f"({shown}): readers that trust the store's key would refuse everything it signs, so nothing was pushed. "
        f"Set MLBUILD_STORE_SECRET_KEY (or [store].secret-key) to the file holding the secret half of {names}; "
        f"if the store changes keys, write this key's public half to {shown}, trust it on every reader and push "
        f"again what they need")


def _add_signature(layout: Layout, info: PathInfo, key: SecretKey) -> bool:
    """Sign the store's entry for ``info.path`` with ``key`` too, keeping its NAR and its other
    signatures (another reader may trust those), when the entry is sound and is of this very path:
    its narinfo gives this NAR hash, size and references, and its NAR file is there at its size.
    False (nothing written) otherwise: the entry is then published again from this machine."""
    f = layout.narinfo(info.path)
    try:
        existing = NarInfo.parse(read_store_file(f), str(f))
        refs = tuple(sorted(r.rsplit("/", 1)[-1] for r in info.references))
        if (existing.store_path != info.path or existing.nar_hash != info.nar_hash
                or existing.nar_size != info.nar_size or tuple(sorted(existing.references)) != refs
                or check_nar(layout.nar(existing.url), existing, contents=False) is not None):
            return False
    except (OSError, UnicodeDecodeError, StoreCorruptError):
        return False
    mine = key.name + ":"   # a signature under this key's name that did not verify is replaced
    signed = existing.with_sigs(tuple(x for x in existing.sigs if not x.startswith(mine))
                                + (key.sign(existing.fingerprint()),))
    if signed.b3:
        signed = replace(signed, b3_sigs=tuple(x for x in existing.b3_sigs if not x.startswith(mine))
                         + (key.sign(signed.b3_message()),))
    publish_bytes(f, signed.render().encode())
    return True


def _upload(cfg: StoreConfig, layout: Layout, infos: dict[str, PathInfo], key: SecretKey,
            trusted: tuple[PublicKey, ...], local_store: str | None, result: PushResult,
            progress: Callable[[str], None] | None) -> None:
    """Publish, references first, every path of ``infos`` the store lacks a good entry for. Good:
    signed by a key the store names as its own (by one this machine trusts where it names none;
    by this key where it names several: a key change, whose pushes sign with the new key).
    A sound entry that lacks only that signature gets this key's, beside the ones it has."""
    published = published_keys(layout)
    wanted = published or trusted
    for path in topological(infos):
        existing = layout.narinfo(path)
        why = check_entry(layout, path, wanted) if existing.exists() else None
        lacks = "a key the store names" if published else "a key trusted here"
        if why is None and len(published) > 1 and existing.exists():
            # The store changes keys (it names the old and the new): an entry signed by the old one
            # alone gets this key's signature too, or readers moved to the new key would refuse it
            why = check_entry(layout, path, (key.public,))
            lacks = f"this key, {key.name} (the store names {len(published)} keys: a key change)"
        if existing.exists() and why is None:
            try:
                os.utime(existing)
            except OSError:
                pass
            result.present.append(path)
            continue
        if why is not None and why.startswith("is unsigned") and _add_signature(layout, infos[path], key):
            if progress:   # not `why`, whose advice (trust another key) is for readers: this fixes it
                progress(f"signing {path}: the store's entry lacks a signature by {lacks}; adding {key.name}'s, "
                         f"keeping its others")
            result.signed.append(path)
            continue
        if why is not None:
            result.replaced.append((path, why))
        if progress:
            progress(f"pushing {path} ({infos[path].nar_size / 1e6:.1f} MB)"
                     + (f": the store's entry {why}" if why is not None else ""))
        result.pushed.append(publish_path(layout, infos[path], key, local_store=local_store,
                                          zstd_level=cfg.zstd_level, fsync_nars=cfg.fsync_nars))


def push(cfg: StoreConfig, targets: Sequence[str], *, local_store: str | None = None,
         name: str | None = None, build_deps: bool = False,
         progress: Callable[[str], None] | None = None) -> PushResult:
    """Sign and upload the closures of ``targets`` (from ``local_store``, default: the machine's).

    ``build_deps`` also uploads what rebuilding the targets needs (the valid outputs in the
    closure of their derivations), so another machine can rebuild a changed dependent without
    building the unchanged inputs; the push record roots them for gc, as it roots the targets.
    ``name`` is the push record's name (gc keeps the newest ``cfg.keep_last`` per name);
    default: each target's name without its hash.
    """
    start = time.monotonic()
    if name is not None:   # `--name ""` (an unset variable) was each target's default name, silently
        check_name(name, "push name")
    layout = Layout(cfg.root)
    layout.require()
    layout.require_writable("push")
    key = cfg.secret_key()
    trusted = cfg.trusted_keys()
    check_signing_key(key, trusted)
    check_store_key(layout, key, cfg.secret_key_file, cfg.secret_key_from)
    paths = resolve_targets(targets)
    result = PushResult(targets=paths)
    groups: dict[str, list[str]] = {}
    for p in paths:
        groups.setdefault(name or default_name(p), []).append(p)
    infos, build_inputs, absent = _closure(paths, local_store, build_deps)
    result.absent_build_inputs = [p for p in absent if p not in paths and not layout.narinfo(p).exists()]
    result.underived_targets = [p for p in absent if p in paths]
    # The record roots the build-time inputs too (the toolchain's wheels, a derived dataset no
    # output refers to): gc keeps what rebuilding a changed dependent needs as long as the push.
    # It is written before any upload (a concurrent gc sees it at once) and removed if the push
    # fails; older records of the same paths go only once it has succeeded.
    with writing(layout.root, "push", fix=(
            f"what was pushed before stays, the path it was writing left nothing behind and the push kept no "
            f"record; free space there (`{store_command(layout.root, 'gc')}` removes what no tag, recent push or "
            f"lock keeps), then push again")):
        try:
            # The whole closure, not only the targets: gc follows references through the narinfos
            # there are, and those of what this push is about to publish are not there yet.
            with roots_lock(layout):
                for n, ps in groups.items():
                    result.records.append(record_push(layout, n, _reaching(ps + build_inputs, infos),
                                                      replace_older=False))
            _upload(cfg, layout, infos, key, trusted, local_store, result, progress)
        except BaseException:
            for rec in result.records:
                rec.unlink(missing_ok=True)
            result.records.clear()
            raise
    for rec in result.records:
        replace_older_records(rec)
    result.seconds = time.monotonic() - start
    return result
