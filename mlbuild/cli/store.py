"""``mlbuild store ...``: the shared binary store (init, push, pull, verify, gc, stats, tag)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import click

from .. import store as st
from ..errors import StoreCorruptError
from ..store.gc import DEFAULT_GRACE_S
from ..store.narinfo import STORE_DIR
from .main import cli

__all__ = ["store"]


def _not_empty(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An option given as "" (`--to "$DIR"` with DIR unset) is refused, not taken as its default."""
    if value is not None and not value.strip():
        raise click.BadParameter(f"{value!r} is empty (an unset variable?); give a value, or leave the option out "
                                 "for its default")
    return value


def _cfg(ctx: click.Context) -> st.StoreConfig:
    return st.load_store_config(ctx.find_root().obj, store=ctx.meta.get("mlbuild.store"))


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


@cli.group()
@click.option("--store", "store_dir", metavar="DIR", default=None,
              help="Store folder or file:// URL (default: $MLBUILD_STORE, [store].path, /var/lib/mlbuild/store).")
@click.pass_context
def store(ctx: click.Context, store_dir: str | None) -> None:
    """The shared binary store: a signed Nix binary cache every machine substitutes from."""
    if store_dir is not None and not store_dir.strip():   # `--store "$DIR"` with DIR unset: not the default store
        raise click.BadParameter("'' is empty (an unset variable?); give the store's folder or file:// URL, or leave "
                                 "--store out for the default ($MLBUILD_STORE, [store].path, /var/lib/mlbuild/store)",
                                 param_hint="--store")
    ctx.meta["mlbuild.store"] = store_dir


@store.command()
@click.option("--generate-key", is_flag=True, help="Create a signing key pair if none exists.")
@click.option("--key-name", default=None, help="Name of the key --generate-key makes: no ':' and no spaces (default: <host>-mlbuild-<random hex>).")
@click.pass_context
def init(ctx: click.Context, generate_key: bool, key_name: str | None) -> None:
    """Create the store folder (idempotent) and print the nix.conf lines for it."""
    r = st.init_store(_cfg(ctx), generate_key=generate_key, key_name=key_name)
    click.echo(f"store: {r.root}")
    if r.secret_key_file and r.public_key:
        click.echo(f"signing key: {r.secret_key_file} ({'new' if r.generated else 'existing'})")
    if r.published:
        click.echo(f"public key of the store ({r.root}/mlbuild/public-key; give it to every machine and CI): "
                   f"{r.published}")
        if r.public_key:
            click.echo(f"warning: this machine signs with {r.public_key}, not the store's key: what it pushes is "
                       f"trusted only where that key is; sign with the store's key (MLBUILD_STORE_SECRET_KEY), or "
                       f"replace {r.root}/mlbuild/public-key if the store changes keys", err=True)
    elif r.public_key:
        click.echo(f"public key (give it to every machine and CI): {r.public_key}")
    if r.nix_conf:
        click.echo(f"nix.conf lines for machines using this store:\n{r.nix_conf}", nl=False)
    if r.public_key and r.untrusted_here:
        click.echo(f"note: mlbuild here does not trust this key yet, so pushes signed with it are refused: "
                   f"set MLBUILD_STORE_PUBLIC_KEYS='{r.public_key}' (or [store].public-keys in mlbuild.toml)",
                   err=True)


@store.command()
@click.argument("targets", nargs=-1, required=True)
@click.option("--from", "from_store", metavar="STORE", default=None, callback=_not_empty,
              help="Local Nix store to read (default: the machine's).")
@click.option("--name", default=None, help="Push record name gc counts --keep-last by (default: each target's name).")
@click.option("--build-deps", is_flag=True, help="Also push what rebuilding the targets needs.")
@click.option("--fsync-nars/--no-fsync-nars", default=None,
              help="fsync each NAR before publishing it (default: $MLBUILD_STORE_FSYNC_NARS, [store].fsync-nars, "
                   "off; see store-config/README.md).")
@click.pass_context
def push(ctx: click.Context, targets: tuple[str, ...], from_store: str | None, name: str | None,
         build_deps: bool, fsync_nars: bool | None) -> None:
    """Sign and upload the closures of TARGETS (store paths or result links)."""
    cfg = _cfg(ctx)
    if fsync_nars is not None:
        cfg = replace(cfg, fsync_nars=fsync_nars)
    r = st.push(cfg, targets, local_store=from_store, name=name, build_deps=build_deps,
                progress=lambda m: click.echo(m, err=True))
    click.echo(f"pushed {len(r.pushed)} paths ({_mb(r.bytes_written)}), {len(r.present)} already there, "
               f"in {r.seconds:.1f}s"
               + (f"; {len(r.replaced)} of the pushed replaced entries a reader would refuse (e.g. "
                  f"{r.replaced[0][0]} {r.replaced[0][1]})" if r.replaced else "")
               + (f"; signed {len(r.signed)} entries the store had without a signature by its key "
                  f"(their other signatures kept)" if r.signed else ""))
    if r.underived_targets:
        click.echo(f"note: the derivation of {', '.join(r.underived_targets)} is not in this Nix store (the target "
                   f"was fetched, not evaluated here), so what rebuilding it needs is unknown here and was not "
                   f"pushed: push --build-deps from the machine that built it", err=True)
    if r.absent_build_inputs:
        n = len(r.absent_build_inputs)
        click.echo(f"note: {n} build input{'s are' if n > 1 else ' is'} neither on this machine nor in the store "
                   f"(the targets were fetched here, not built), so {'they were' if n > 1 else 'it was'} not pushed, "
                   f"e.g. {r.absent_build_inputs[0]}; a machine that rebuilds a changed model builds "
                   f"{'them' if n > 1 else 'it'}: push --build-deps from the machine that built the targets", err=True)


@store.command()
@click.argument("targets", nargs=-1, required=True)
@click.option("--to", "to_store", metavar="STORE", default=None, callback=_not_empty,
              help="Local Nix store to fill (default: the machine's).")
@click.option("--nix-copy", is_flag=True, help="Let Nix copy everything (no fast restore of uncompressed NARs).")
@click.pass_context
def pull(ctx: click.Context, targets: tuple[str, ...], to_store: str | None, nix_copy: bool) -> None:
    """Fetch the closures of TARGETS into the local Nix store (signatures and hashes checked)."""
    r = st.pull(_cfg(ctx), targets, local_store=to_store, fast=not nix_copy)
    click.echo(f"fetched {len(r.fetched)} paths, {len(r.present)} already present, in {r.seconds:.1f}s")


@store.command()
@click.option("--repair", is_flag=True,
              help="Remove bad entries (and NARs only they use), those signed only by untrusted keys too.")
@click.option("--quick", is_flag=True, help="Check signatures and sizes only, not NAR hashes.")
@click.pass_context
def verify(ctx: click.Context, repair: bool, quick: bool) -> None:
    """Check every entry's signature and NAR; list corrupt, unsigned, missing, incomplete ones."""
    cfg = _cfg(ctx)
    r = st.verify(cfg, repair=repair, contents=not quick)
    for p in r.problems:
        click.echo(f"{p.kind}\t{p.store_path or p.narinfo}\t{p.detail}")
    for f in r.removed:
        click.echo(f"removed\t{f}")
    click.echo(f"checked {r.checked} entries, {len(r.problems)} problems")
    if r.problems and not repair:
        raise StoreCorruptError(r.advice(cfg))
    removed = [p for p in r.problems if p.kind != "unreadable"]   # a repair keeps what it may not read
    if removed:   # repaired: the store is sound again, without those paths
        # an entry filed under another path's hash: the path to push again is the one of that hash
        paths = sorted({p.store_path or f"the path of hash {p.narinfo.stem} ({STORE_DIR}/{p.narinfo.stem}-…)"
                        for p in removed})
        click.echo(f"repaired: removed the {len(removed)} bad entries; push what still matters again "
                   f"(`mlbuild build --push TARGET` or `mlbuild store push PATH`)"
                   + (f", e.g. {paths[0]}" if paths else ""), err=True)
    if len(removed) < len(r.problems):
        raise StoreCorruptError(replace(r, problems=[p for p in r.problems if p not in removed]).advice(cfg))


def _not_nan(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if math.isnan(value):
        raise click.BadParameter("nan is not a number of seconds; give e.g. --grace 3600 (0: no grace)")
    return value


@store.command()
@click.option("--lock", "locks", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Keep what this mlbuild.lock pins: interpreter snapshot, wheels, local datasets (repeatable).")
@click.option("--keep-last", type=click.IntRange(min=0), default=None,
              help="Pushes kept per name (default: $MLBUILD_STORE_KEEP_LAST, [store].keep-last, 3).")
@click.option("--grace", type=click.FloatRange(min=0), default=DEFAULT_GRACE_S, callback=_not_nan,
              help="Seconds an unrooted entry or NAR is spared after its last use (default: 3600). Keep it above "
                   "the longest push: a NAR a push is publishing counts as unrooted until its narinfo is written, "
                   "so --grace 0 is for a store no one pushes to meanwhile.")
@click.option("--dry-run", is_flag=True, help="Only report what would go.")
@click.pass_context
def gc(ctx: click.Context, locks: tuple[Path, ...], keep_last: int | None, grace: float, dry_run: bool) -> None:
    """Remove what no root (tags, recent pushes, --lock) needs, safely while others read."""
    r = st.gc(_cfg(ctx), locks=locks, keep_last=keep_last, grace=grace, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for p in r.removed_paths:
        click.echo(f"{verb}\t{p}")
    for rec in r.removed_records:
        click.echo(f"{verb}\tpush record {rec.parent.name}/{rec.name} (past --keep-last)")
    click.echo(f"kept {len(r.kept)} rooted paths; {verb} {len(r.removed_paths)} entries, {len(r.removed_nars)} "
               f"NARs ({_mb(r.freed_bytes)}), {len(r.removed_temps)} temp files; "
               f"{len(r.condemned_nars)} NARs wait out the grace period"
               + (f"; {r.spared} unrooted entries are spared until {grace:g} s after their last push (--grace)"
                  if r.spared else ""))


@store.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Size per top-level item and kind, totals, and how much is shared."""
    cfg = _cfg(ctx)
    s = st.stats(cfg)
    if s.unreadable:
        click.echo(f"warning: {len(s.unreadable)} entries cannot be read and are not counted:", err=True)
        for why in s.unreadable:
            click.echo(f"  {why}", err=True)
        click.echo(f"  ({s.fix})", err=True)
    if as_json:
        click.echo(json.dumps(asdict(s), indent=2))
        return
    for i in s.items:
        click.echo(f"{i.kind:<11}{_mb(i.closure_bytes):>14} closure {_mb(i.unique_bytes):>14} own  "
                   f"{i.closure_paths:>4} paths  {i.path}")
    for kind, (n, b) in sorted(s.by_kind.items()):
        click.echo(f"kind {kind:<11}{n:>5} paths {_mb(b):>14}")
    click.echo(f"total {s.paths} paths, {_mb(s.file_bytes)} on disk ({_mb(s.nar_bytes)} uncompressed); "
               f"shared by several items: {s.shared_paths} paths, {_mb(s.shared_bytes)}"
               + (f"; {len(s.unreadable)} unreadable entries not counted" if s.unreadable else ""))


@store.command()
@click.argument("name")
@click.argument("targets", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Move the tag, dropping paths it names that TARGETS leave out.")
@click.pass_context
def tag(ctx: click.Context, name: str, targets: tuple[str, ...], force: bool) -> None:
    """Tag store paths as release NAME: gc keeps them and their closures."""
    r = st.tag(_cfg(ctx), name, targets, force=force)
    if r.dropped:
        click.echo(f"moved {name} to {' '.join(r.paths)} ({r.file}); it no longer keeps {' '.join(r.dropped)}")
    elif r.added:
        click.echo(f"tagged {name}: added {' '.join(r.added)} ({r.file})")
    else:
        click.echo(f"tagged {name}: {r.file}")


@store.command()
@click.argument("name")
@click.pass_context
def untag(ctx: click.Context, name: str) -> None:
    """Remove the release tag NAME (its paths go at the next gc unless something else roots them)."""
    st.untag(_cfg(ctx), name)
    click.echo(f"untagged {name}")
