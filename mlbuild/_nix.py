"""The only module that runs ``nix``: version adapters and offline-safe invocations.

Nix 2.8 (Debian 12) and 2.26+ (Debian 13) differ in JSON shapes and flags; the adapters here
hide that: ``path-info --json`` is a list in 2.8 and an object keyed by path later, and 2.8 has no
``--print-out-paths`` (``build --json`` works in both). Every call sets the substituters it means
and a local flake registry, so an offline machine never waits on unreachable caches.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import grp
import hashlib
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Sequence

from . import atomic
from .errors import BuildError, NixError, NixNotFoundError
from .nar import nix_base32

__all__ = [
    "nix_version", "state_home", "common_options", "add_fixed", "invalid_paths",
    "build", "path_info", "parse_path_info", "parse_build_json", "store_dir", "nix_lib_dir",
    "run_nix", "register_valid", "add_roots", "is_fixed_output", "closure_with_outputs", "drv_outputs",
]

EXPERIMENTAL = "nix-command flakes"


def _which(tool: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise NixNotFoundError(
            f"`{tool}` is not on PATH: Nix is not installed. Install it with "
            f"`apt-get install nix-bin` (or run `bash .ci/setup` in the mlbuild checkout)"
        )
    return found


@functools.lru_cache(maxsize=1)
def nix_version() -> tuple[int, ...]:
    """The version of the ``nix`` on PATH. `nix --version` (~0.05 s of every build, which records it)
    runs once per binary: the answer is kept in mlbuild's state folder by the binary's path, inode,
    size and modification time (a new Nix is another file, or another version of one)."""
    nix = _which("nix")
    try:
        st = os.stat(nix)
        key = f"{os.path.realpath(nix)} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"
        record = state_home() / "nix-version.json"
    except (OSError, RuntimeError):
        key, record = "", None
    if record is not None:
        try:
            known = json.loads(record.read_text())
            if known.get("binary") == key and isinstance(known.get("version"), list) and known["version"] and \
                    all(isinstance(v, int) for v in known["version"]):
                return tuple(known["version"])
        except (OSError, ValueError, AttributeError):
            pass
    out = subprocess.run([nix, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    if not m:
        raise NixError(f"cannot read the Nix version from {out!r}")
    version = tuple(int(g or 0) for g in m.groups())
    if record is not None:
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(record, json.dumps({"binary": key, "version": list(version)}) + "\n")
        except OSError:   # not kept: asked again next time
            pass
    return version


def store_dir() -> str:
    return os.environ.get("NIX_STORE_DIR", "/nix/store")


def nix_lib_dir() -> Path:
    """mlbuild's Nix library (the repository's nix/ folder, or $MLBUILD_NIX)."""
    env = os.environ.get("MLBUILD_NIX")
    path = Path(env) if env else Path(__file__).resolve().parent.parent / "nix"
    if not (path / "default.nix").is_file():
        raise NixError(f"mlbuild's Nix library is not at {path}; set MLBUILD_NIX to the nix/ folder")
    return path


def state_home() -> Path:
    """mlbuild's own per-user state (the empty flake registry, caches): $MLBUILD_STATE, else
    ~/.cache/mlbuild. An empty MLBUILD_STATE (an unset variable in a script) is no setting: as a
    path it was the working folder, the project's, where the registry and caches left it dirty."""
    env = os.environ.get("MLBUILD_STATE")
    return Path(env) if env else Path.home() / ".cache" / "mlbuild"


def _parses(registry: Path) -> bool:
    """Whether Nix reads ``registry`` as a flake registry: a JSON object of version 2 whose flakes
    (where given) are a list; else it warns at every lookup ('has unsupported version 0' for `{}`)."""
    try:
        data = json.loads(registry.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("version") == 2 and isinstance(data.get("flakes", []), list)


def common_options(substituters: Sequence[str] = ()) -> list[str]:
    """Options every project Nix call gets: flakes on, only the given substituters, no registry."""
    try:
        registry = state_home() / "registry.json"
    except RuntimeError:   # HOME unset and no home in the user database (a container's arbitrary uid): not a traceback
        raise NixError(f"cannot find the home folder for ~/.cache/mlbuild, where mlbuild keeps the empty flake registry "
                       f"it gives Nix (HOME is unset, and user {os.getuid()} has no home in the user database); set "
                       f"MLBUILD_STATE (or HOME) to a folder you can write, e.g. MLBUILD_STATE=/tmp/mlbuild-$(id -u)") from None
    # An empty one is what a full disk left before this was written whole, and one cut short or
    # garbled (a crash, a disk error) is no better: Nix warned that it cannot parse it at every
    # registry lookup. Such a file is written again (one read of a few bytes).
    if not registry.exists() or (registry.is_file() and not _parses(registry)):
        try:
            registry.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(registry, '{"flakes": [], "version": 2}\n')   # names itself on a full disk
        except OSError as e:   # a read-only or missing HOME (a CI container's HOME=/): not a traceback
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise   # the CLI says to free space
            raise NixError(f"cannot write {registry}, the empty flake registry mlbuild gives Nix ({e.strerror}); "
                           f"set MLBUILD_STATE (or HOME) to a folder you can write, e.g. "
                           f"MLBUILD_STATE=/tmp/mlbuild-$(id -u)") from None
    return [
        "--extra-experimental-features", EXPERIMENTAL,
        "--option", "substituters", " ".join(substituters),
        "--option", "flake-registry", str(registry),
    ]


def run_nix(args: Sequence[str], *, tool: str = "nix", check: bool = True,
            capture: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [_which(tool), *args]
    # Nix prints paths (a root in a project folder named in Latin-1): not UTF-8, kept as os.fsdecode does
    proc = subprocess.run(cmd, capture_output=capture, text=True, errors="surrogateescape", input=input)
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-25:])
        raise NixError(f"`{' '.join(cmd[:3])} ...` failed (exit {proc.returncode}){daemon_denied_hint(tail)}", tail)
    return proc


def daemon_denied_hint(said: str) -> str:
    """``: <what to ask for>`` where Nix could not reach its daemon because this user may not open
    its socket (Debian's nix-bin: only the group ``nix-users``); else empty."""
    said = re.sub(r"\x1b\[[0-9;]*m", "", said)   # a build's log: Nix colours the path
    if f"{DAEMON_SOCKET}: Permission denied" not in said and f"{DAEMON_SOCKET}': Permission denied" not in said:
        return ""
    try:
        group = grp.getgrgid(os.stat(os.path.dirname(DAEMON_SOCKET)).st_gid).gr_name
    except (OSError, KeyError):
        group = "nix-users"
    try:
        me = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        me = str(os.getuid())
    return (f": this user may not use the Nix daemon (its socket {DAEMON_SOCKET}: permission denied); ask the "
            f"machine's admin to add it to the daemon's group (`usermod -aG {group} {me}`), then log in again")


def add_fixed(path: Path, recursive: bool) -> str:
    """Stream ``path`` into the store as a sha256 fixed-output path (constant memory)."""
    args = ["--add-fixed", *(["--recursive"] if recursive else []), "sha256", str(path)]
    return run_nix(args, tool="nix-store").stdout.strip()


def invalid_paths(paths: Sequence[str]) -> list[str]:
    """Those of ``paths`` that are not valid in the local store (one nix-store call)."""
    return invalid_paths_in(paths)


def register_valid(path: str, nar_sha256_hex: str, nar_size: int) -> None:
    """Register a path the caller wrote into a local store (no references, no deriver)."""
    info = f"{path}\nsha256:{nar_sha256_hex}\n{nar_size}\n\n0\n"
    run_nix(["--register-validity", "--hash-given"], tool="nix-store", input=info)


def delete_paths(paths: Sequence[str]) -> None:
    """``nix-store --delete`` of paths no root holds (an invalid leftover, such as the second build
    of a check), best effort: how a user who may not write the store (a daemon's) removes them."""
    if paths:
        run_nix(["--delete", *paths], tool="nix-store", check=False)


def add_roots(paths: dict[str, str], root_dir: Path) -> None:
    """Protect ``{name: store path}`` from garbage collection with indirect roots in ``root_dir``
    (pinned inputs such as wheels and datasets are otherwise collectable)."""
    try:
        root_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:   # a file, or a link to nothing: a FileExistsError traceback after the build
        what = f"a link to {os.readlink(root_dir)}, which is no folder" if os.path.islink(root_dir) else "not a folder"
        raise NixError(f"{root_dir} is {what}, so mlbuild cannot keep what it built or pinned from Nix's garbage "
                       f"collection there; remove it (`rm {shlex.quote(str(root_dir))}`) and run the command again "
                       f"(it roots them anew)") from None
    for name, path in paths.items():
        link = root_dir / name
        try:
            target: str | None = os.readlink(link)
        except OSError:   # none yet, or not a link
            target = None
            # A file or folder where the link belongs (a copy of the project that followed links,
            # `cp -rL` or a sync tool that keeps none): Nix reads no root from it, and refused to
            # root the path there ("cannot create symlink ...; already exists"), naming no fix.
            if os.path.isdir(link) and not os.path.islink(link):
                # the copy made every folder root one: name them all, not one a run (a run each)
                copies = sorted(p for p in root_dir.iterdir() if p.is_dir() and not p.is_symlink())
                q = " ".join(shlex.quote(str(p)) for p in copies)
                others = [p.name for p in copies if p != link]
                also = f"; so {'are' if len(others) > 1 else 'is'} {', '.join(others)} there" if others else ""
                raise NixError(f"{link} is a folder, not the link that roots {path} (a copy of the project that "
                               f"followed its links: `cp -rL`, a sync tool){also}; remove "
                               f"{'them' if others else 'it'} (`chmod -R u+w {q} && rm -rf {q}`) and run the command "
                               f"again")
            if os.path.lexists(link):
                link.unlink()   # a file: it roots nothing; the link replaces it
        if target == path and _registered(link):
            continue
        # Nix replaces a link into the store itself, by a rename: the old root stays until the new
        # one is there. Removing it first left a moment without either (a Ctrl-C there lost it), and
        # two commands rooting one name at once (two builds) failed: the second found it gone.
        if target is not None and not target.startswith(store_dir() + "/"):
            link.unlink(missing_ok=True)
        run_nix(["--realise", path, "--add-root", str(link), "--indirect"], tool="nix-store")


def _registered(link: Path) -> bool:
    """Whether Nix holds ``link`` as an indirect root: its ``gcroots/auto`` entry (named by the
    SHA-1 of the link's absolute path, as Nix names it) points at it. A project moved or copied
    keeps its links, but Nix's entries point at the old folder: nothing held the outputs then."""
    absolute = os.path.abspath(link)
    auto = Path(state_dir()) / "gcroots" / "auto" / nix_base32(hashlib.sha1(os.fsencode(absolute)).digest())
    try:
        return os.readlink(auto) == absolute
    except OSError:   # none (or not readable here): root it again, one nix-store call
        return False


def is_fixed_output(drv: str) -> bool:
    """Whether the derivation ``drv`` (a .drv path) is fixed-output: its output's hash is known in
    advance (a dataset, a wheel), so building it again checks nothing the hash does not. Read from
    the .drv file (the same in every Nix version): a fixed output's entry names a hash algorithm."""
    entries = _drv_output_entries(drv)
    return bool(entries and entries[0][2])


def parse_build_json(text: str) -> list[dict[str, Any]]:
    """``nix build --json`` output: a list of {drvPath, outputs: {name: path}} in every version."""
    data = json.loads(text or "[]")
    if not isinstance(data, list):
        raise NixError(f"unexpected `nix build --json` output: {text[:200]!r}")
    return data


def parse_path_info(text: str) -> dict[str, dict[str, Any]]:
    """``nix path-info --json``: a list of objects with "path" (2.8) or an object keyed by path."""
    data = json.loads(text or "[]")
    if isinstance(data, list):
        return {entry["path"]: {k: v for k, v in entry.items() if k != "path"} for entry in data}
    if isinstance(data, dict):
        return {path: (info or {}) for path, info in data.items()}
    raise NixError(f"unexpected `nix path-info --json` output: {text[:200]!r}")


def path_info(paths: Sequence[str], recursive: bool = False) -> dict[str, dict[str, Any]]:
    args = ["path-info", "--json", *(["--recursive"] if recursive else []), *paths]
    return parse_path_info(run_nix([*common_options(), *args]).stdout)


def build(installables: Sequence[str], *, file: Path | None = None, args: Sequence[str] = (),
          substituters: Sequence[str] = (), extra: Sequence[str] = ()) -> list[dict[str, Any]]:
    """``nix build --json --no-link``; returns the parsed JSON. Raises BuildError with the log tail."""
    cmd = [*common_options(substituters), "build", "--json", "--no-link", *extra]
    if file is not None:
        cmd += ["--file", str(file), *args]
    cmd += list(installables)
    proc = run_nix(cmd, check=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-40:])
        raise BuildError(f"nix build of {' '.join(installables)} failed (exit {proc.returncode})", tail)
    return parse_build_json(proc.stdout)


# --- The shared binary store (mlbuild.store): queries and copies against a chosen local store. ---

def store_options(store: str | None) -> list[str]:
    """``--store STORE`` when a store other than the default one is meant (a chroot store root)."""
    return ["--store", store] if store else []


def path_info_in(paths: Sequence[str], *, store: str | None = None,
                 recursive: bool = False) -> dict[str, dict[str, Any]]:
    """``nix path-info --json`` in ``store`` (None: the default store); keyed by store path."""
    if not paths:
        return {}
    args = [*common_options(), *store_options(store), "path-info", "--json",
            *(["--recursive"] if recursive else []), *paths]
    return parse_path_info(run_nix(args).stdout)


def invalid_paths_in(paths: Sequence[str], *, store: str | None = None) -> list[str]:
    """Those of ``paths`` that are not valid in ``store`` (None: the default store)."""
    if not paths:
        return []
    proc = run_nix([*store_options(store), "--check-validity", "--print-invalid", *paths], tool="nix-store")
    return proc.stdout.split()


def closure_with_outputs(drvs: Sequence[str], *, store: str | None = None) -> list[str]:
    """The closure of ``drvs``, their ``.drv`` files with the outputs of them that are valid in
    ``store`` (one nix-store call: ``--include-outputs`` lists only those); ``build_closure``
    also names the missing."""
    if not drvs:
        return []
    return run_nix([*store_options(store), "--query", "--requisites", "--include-outputs", *drvs],
                   tool="nix-store").stdout.split()


def _drv_output_entries(drv: str) -> list[tuple[str, str, str, str]]:
    """The outputs a .drv file declares, read from it (the same in every Nix version: its first
    list, of ("out","/nix/store/...","",""), a fixed output's with its hash algorithm and hash), where
    the store Nix uses keeps it (a runner's own store: a build over a dataset added there ended in a
    FileNotFoundError traceback for /nix/store/...-digits-raw.drv as it rooted the dataset)."""
    m = re.match(r"Derive\(\[(.*?)\],\[", Path(real_path(drv)).read_text(errors="replace"))
    return re.findall(r'\("([^"]*)","([^"]*)","([^"]*)","([^"]*)"\)', m.group(1)) if m else []


def drv_outputs(drv: str) -> dict[str, str]:
    """``{output name: store path}`` of the derivation ``drv`` (a .drv path), read from the .drv file."""
    return {name: path for name, path, _, _ in _drv_output_entries(drv)}


def build_closure(drvs: Sequence[str], *, store: str | None = None) -> tuple[list[str], list[str]]:
    """The outputs in the closure of ``drvs`` (what rebuilding them needs), no ``.drv`` files:
    (valid in ``store``, not valid there)."""
    if not drvs:
        return [], []
    listed = closure_with_outputs(drvs, store=store)
    outs = [p for p in listed if not p.endswith(".drv")]
    # --include-outputs lists only the outputs that exist here: ask the derivations for all of theirs
    every = run_nix([*store_options(store), "--query", "--outputs", *[p for p in listed if p.endswith(".drv")]],
                    tool="nix-store").stdout.split()
    missing = set(invalid_paths_in(sorted(set(outs) | set(every)), store=store))
    return [p for p in outs if p not in missing], sorted(missing)


def dump_nar(path: str, *, store: str | None = None) -> subprocess.Popen[bytes]:
    """A running ``nix-store --dump PATH`` whose stdout streams the NAR (caller reads and waits)."""
    return subprocess.Popen([_which("nix-store"), *store_options(store), "--dump", path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)


def copy_from_cache(cache_url: str, paths: Sequence[str], *, store: str | None = None,
                    options: Sequence[str] = ()) -> None:
    """``nix copy --from CACHE PATHS`` into ``store``: Nix checks signatures and NAR hashes."""
    if not paths:
        return
    args = [*common_options(), *options, "copy", "--from", cache_url,
            *(["--to", store] if store else []), *paths]
    run_nix(args)


def nix_config() -> dict[str, str]:
    """Nix's own configuration (nix.conf, its includes, the ``extra-`` forms merged), as
    ``nix show-config`` prints it; empty where Nix cannot say."""
    for command in (["show-config"], ["config", "show"]):   # `config show` from Nix 2.20
        proc = run_nix(["--extra-experimental-features", EXPERIMENTAL, *command], check=False)
        if proc.returncode == 0:
            settings: dict[str, str] = {}
            for line in proc.stdout.splitlines():
                name, _, value = line.partition(" = ")
                settings[name.strip()] = value.strip()
            return settings
    return {}


def configured_public_keys() -> list[str]:
    """The ``trusted-public-keys`` Nix's own configuration holds (nix.conf, its includes, the
    ``extra-`` form): keys the driver's Nix calls trust besides those they pass."""
    return nix_config().get("trusted-public-keys", "").split()


DAEMON_SOCKET = "/nix/var/nix/daemon-socket/socket"


def store_is_local() -> bool:
    """Whether Nix's calls here may use the local store itself (``NIX_REMOTE`` unset, ``local``, or
    ``auto``, which is local where this user may write the store: callers check that), not a
    daemon or another store, which must register whatever is added to it. ``NIX_CONFIG``'s
    ``store`` setting counts too (it overrides ``NIX_REMOTE``): with ``store = /tmp/machine-b`` (a
    chroot store, how store-config/README.md tries a fresh machine) `data add` and `store pull`
    wrote into /nix/store and registered the path in the other store, which then held a valid
    path with no files (and /nix/store an unregistered one)."""
    return os.environ.get("NIX_REMOTE", "") in ("", "local", "auto") and nix_config_store() in ("", "local", "auto")


def real_path(path: str, store: str | None = None) -> str:
    """Where the files of the store path ``path`` lie on this machine: under the chroot store
    ``store`` names, by default the one Nix's calls use (NIX_CONFIG's ``store = /tmp/machine-b`` or
    ``local?root=/tmp/machine-b``, else ``NIX_REMOTE``'s: Nix keeps ``/nix/store/X`` at
    ``/tmp/machine-b/nix/store/X``), else ``path`` itself. `validate` and `image push` on such a
    runner read the host's /nix/store and ended in a FileNotFoundError traceback."""
    real, here = real_store_dir(effective_store() if store is None else store), store_dir()
    if real is None or real == here or not path.startswith(here + "/"):
        return path
    return real + path[len(here):]


def store_program(program: str, args: Sequence[str] = ()) -> list[str]:
    """The command line that runs ``program``, a file in a store path (``/nix/store/X/bin/serve``),
    with ``args``: the program itself on this machine's store; in a chroot store (NIX_CONFIG's
    ``store = /tmp/machine-b``, NIX_REMOTE's) ``nix shell /nix/store/X --command PROGRAM``, which
    runs it (its own process, as exec does) with that store at /nix/store, where its interpreter
    and libraries are: `mlbuild serve` and `monitor` on such a runner ended in a FileNotFoundError
    traceback (or ran the host's copy of the path, where it held one)."""
    if real_path(program) == program:
        return [program, *args]
    top = "/".join(program.split("/")[:len(store_dir().split("/")) + 1])
    return [_which("nix"), "--extra-experimental-features", EXPERIMENTAL, "shell", top, "--command", program, *args]


def state_dir() -> str:
    """Nix's state folder (its database, ``gcroots``) for the store Nix's calls use: a chroot store's
    own (``/tmp/machine-b/nix/var/nix``, ``local?state=DIR``), else ``NIX_STATE_DIR`` or
    /nix/var/nix. A build on a runner's own store took the host's record of a root for its own, and
    left its output unrooted there, where the same project had been built on the host's store."""
    root, opts = _chroot_store(effective_store())
    if opts.get("state", "").startswith("/"):
        return os.path.normpath(opts["state"])
    if root is not None:
        return root + "/nix/var/nix"
    return os.environ.get("NIX_STATE_DIR", "/nix/var/nix")


def _chroot_store(store: str) -> tuple[str | None, dict[str, str]]:
    """(the root folder of the chroot store a local store spec names, or None; the spec's options):
    ``/tmp/machine-b`` -> ``/tmp/machine-b``, {}; ``local?root=R&state=S`` -> R, {root, state}."""
    opts: dict[str, str] = {}
    if store.startswith("local?"):
        opts = dict(kv.split("=", 1) for kv in store[len("local?"):].split("&") if "=" in kv)
        store = opts.get("root", "")
    if not store.startswith("/") or os.path.normpath(store) == "/":
        return None, opts
    return os.path.normpath(store), opts


def real_store_dir(store: str) -> str | None:
    """The folder a local store spec keeps its store paths in where that is not the store dir
    itself (``/tmp/machine-b`` -> ``/tmp/machine-b/nix/store``; ``local?root=R``, ``local?real=D``),
    else None (the machine's own store, a daemon, a remote store)."""
    root, opts = _chroot_store(store)
    if opts.get("real", "").startswith("/"):
        return os.path.normpath(opts["real"])
    return None if root is None else root + store_dir()


def effective_store() -> str:
    """The store Nix's calls here use: NIX_CONFIG's ``store`` setting, else ``NIX_REMOTE`` (Nix's
    default for that setting: ``NIX_REMOTE=/tmp/machine-b`` is a chroot store as well), else ''."""
    return nix_config_store() or os.environ.get("NIX_REMOTE", "")


def nix_config_store() -> str:
    """The ``store`` setting in ``NIX_CONFIG`` (its last line naming it, as Nix reads it), else ''."""
    value = ""
    for line in os.environ.get("NIX_CONFIG", "").splitlines():
        key, sep, rest = line.split("#", 1)[0].partition("=")
        if sep and key.strip() == "store":
            value = rest.strip()
    return value


def untrusted_daemon_user(config: dict[str, str] | None = None) -> bool:
    """Whether this process's Nix calls go through a Nix daemon that does not trust this user (a
    multi-user install: Nix's default ``trusted-users = root``). Such a daemon ignores the
    substituters and ``trusted-public-keys`` a call passes (``--option``): only its own nix.conf
    counts, which only the machine's admin may change. ``NIX_REMOTE`` as Nix reads it: ``daemon``
    or ``unix://...``; unset or ``auto``, the daemon where this user may not write Nix's state.
    NIX_CONFIG's ``store`` counts first, as Nix takes it: a CI user's store of its own
    (``store = $HOME/nix``) on a machine with a daemon was told the daemon does not trust it, and
    `store pull` refused, naming lines to ask the admin for that would change nothing."""
    remote = effective_store()
    if remote in ("", "auto"):
        state = os.environ.get("NIX_STATE_DIR", "/nix/var/nix")
        if os.access(state, os.W_OK) or not os.path.exists(os.path.join(state, "daemon-socket", "socket")):
            return False
    elif remote != "daemon" and not remote.startswith("unix://"):
        return False
    users = (nix_config() if config is None else config).get("trusted-users", "root").split()
    try:
        me = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return True
    groups = {g.gr_name for g in grp.getgrall() if me in g.gr_mem}
    with contextlib.suppress(KeyError):
        groups.add(grp.getgrgid(os.getgid()).gr_name)
    return not any(u == "*" or u == me or (u.startswith("@") and u[1:] in groups) for u in users)


def daemon_admin_hint(lines: Sequence[str]) -> str:
    """What to ask the machine's admin for when an untrusted daemon user needs ``lines`` in
    Nix's configuration (``untrusted_daemon_user``)."""
    return (f"the Nix daemon does not trust this user (nix.conf's trusted-users), so it ignores the store settings "
            f"mlbuild passes; ask the machine's admin to add {'; '.join(f'`{x}`' for x in lines)} to /etc/nix/nix.conf "
            f"and restart nix-daemon (store-config/setup-store writes them, see store-config/README.md)")


def copy_sigs(cache_url: str, paths: Sequence[str], *, store: str | None = None) -> None:
    """``nix store copy-sigs``: record the cache's signatures of ``paths`` (same NAR hash) in the
    local store, as Nix's own substitution does; ``load_db`` registers none, and a path without
    them cannot be ``nix copy``-ed on to a store that requires signatures."""
    if paths:
        run_nix([*common_options(), *store_options(store), "store", "copy-sigs",
                 "--substituter", cache_url, *paths])


def load_db(registration: str, *, store: str | None = None) -> None:
    """Register paths already on disk (``nix-store --load-db``: path, hash, size, deriver, refs)."""
    run_nix([*store_options(store), "--load-db"], tool="nix-store", input=registration)
