"""``_nix.add_roots`` (real nix-store): a root being replaced is never missing, so an interrupt,
or a second command rooting the same name at once, cannot lose it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mlbuild import _nix


def stored(tmp_path: Path, text: str) -> str:
    f = tmp_path / f"root-test-{text}"
    f.write_text(f"{text} {os.getpid()} {tmp_path}\n")
    return subprocess.run(["nix-store", "--add", str(f)], capture_output=True, text=True, check=True).stdout.strip()


def test_a_root_is_replaced_without_a_moment_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """add_roots removed the old link, then asked Nix for the new one: a Ctrl-C between lost the
    root, and of two builds rooting one target at once the second's unlink found nothing
    (FileNotFoundError traceback)."""
    old, new = stored(tmp_path, "old"), stored(tmp_path, "new")
    roots = tmp_path / "gcroots"
    _nix.add_roots({"m.model": old}, roots)
    run_nix = _nix.run_nix

    def check_then_run(args: list[str], **kw: Any) -> Any:
        assert os.readlink(roots / "m.model") == old   # still rooted while Nix makes the new root
        return run_nix(args, **kw)

    monkeypatch.setattr(_nix, "run_nix", check_then_run)
    _nix.add_roots({"m.model": new}, roots)
    assert os.readlink(roots / "m.model") == new
    # (not UTF-8 where a root's path is not: Nix warns of the roots of other tests, in a folder named in Latin-1)
    assert str(roots / "m.model") in roots_of(new)


def test_a_link_out_of_the_store_is_replaced(tmp_path: Path) -> None:
    path = stored(tmp_path, "x")
    roots = tmp_path / "gcroots"
    roots.mkdir()
    (roots / "m.model").symlink_to(tmp_path / "elsewhere")
    _nix.add_roots({"m.model": path}, roots)
    assert os.readlink(roots / "m.model") == path


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_file_or_folder_where_a_root_belongs(tmp_path: Path, kind: str) -> None:
    """A project copied with its links followed (`cp -rL`, a sync tool that keeps none) has files or
    folders in .mlbuild/gcroots: Nix reads no root from them, and the next build or prefetch stopped
    with Nix's "cannot create symlink ...; already exists", naming no fix. A file is replaced by the
    link; a folder (a copy of the store path, which may be big) is named, with the command that removes it."""
    path = stored(tmp_path, kind)
    roots = tmp_path / "gcroots"
    roots.mkdir()
    if kind == "file":
        (roots / "m.model").write_text("copied\n")
        _nix.add_roots({"m.model": path}, roots)
        assert os.readlink(roots / "m.model") == path and str(roots / "m.model") in roots_of(path)
        return
    (roots / "m.model").mkdir()
    with pytest.raises(_nix.NixError) as e:
        _nix.add_roots({"m.model": path}, roots)
    assert str(e.value).startswith(f"{roots / 'm.model'} is a folder, not the link that roots {path}")
    assert f"rm -rf {roots / 'm.model'}" in str(e.value)


def test_every_folder_where_a_root_belongs_is_named_at_once(tmp_path: Path) -> None:
    """`cp -rL` of a project makes a folder of every root that is one (each model's, each dataset's,
    the interpreter snapshot's): the error named one, and the user removed it and ran the command again,
    once per folder, each run after a whole build. All of them are named, with one command."""
    path = stored(tmp_path, "folder")
    roots = tmp_path / "gcroots"
    roots.mkdir()
    for name in ("m.model", "dataset-raw", "interpreter-snapshot"):
        (roots / name).mkdir()
    (roots / "wheel-x.whl").symlink_to(path)
    with pytest.raises(_nix.NixError) as e:
        _nix.add_roots({"m.model": path}, roots)
    assert str(e.value).startswith(f"{roots / 'm.model'} is a folder, not the link that roots {path} (a copy of the "
                                   "project that followed its links: `cp -rL`, a sync tool); so are dataset-raw, "
                                   "interpreter-snapshot there; remove them (`chmod -R u+w ")
    names = " ".join(str(roots / n) for n in ("dataset-raw", "interpreter-snapshot", "m.model"))
    assert str(e.value).endswith(f" && rm -rf {names}`) and run the command again")
    subprocess.run(f"chmod -R u+w {names} && rm -rf {names}", shell=True, check=True)
    _nix.add_roots({"m.model": path}, roots)
    assert os.readlink(roots / "m.model") == path


@pytest.mark.parametrize("kind", ["file", "dangling link"])
def test_a_roots_folder_that_is_no_folder_is_named(tmp_path: Path, kind: str) -> None:
    """.mlbuild/gcroots a file, or a link to a folder that is gone: every build, prefetch and data
    add ended in a FileExistsError traceback, after the build. It is named, with the fix."""
    path = stored(tmp_path, kind.replace(" ", "-"))
    roots = tmp_path / "gcroots"
    if kind == "file":
        roots.write_text("x\n")
    else:
        roots.symlink_to(tmp_path / "gone")
    with pytest.raises(_nix.NixError) as e:
        _nix.add_roots({"m.model": path}, roots)
    assert str(e.value).startswith(f"{roots} is {'not a folder' if kind == 'file' else f'a link to {tmp_path}/gone'}")
    assert str(e.value).endswith(f"remove it (`rm {roots}`) and run the command again (it roots them anew)")
    roots.unlink()
    _nix.add_roots({"m.model": path}, roots)
    assert os.readlink(roots / "m.model") == path


def test_roots_in_a_folder_whose_path_is_not_utf8(tmp_path: Path) -> None:
    """nix-store prints the root's path: under a project named in Latin-1 (b'caf\\xe9') decoding it
    failed after the build had succeeded, so the build was not recorded (a traceback)."""
    path = stored(tmp_path, "y")
    roots = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9")) / "gcroots"
    _nix.add_roots({"m.model": path}, roots)
    assert os.readlink(roots / "m.model") == path


def package_drv(stamp: str, deps: str) -> tuple[str, list[str]]:
    """A derivation "m-package" built from ``deps`` (Nix expressions; ``mk NAME DEPS`` makes a small
    derivation), instantiated, not built: its .drv and the store paths it references."""
    expr = (f'let mk = name: deps: derivation {{ inherit name; system = "x86_64-linux"; builder = "/bin/sh"; '
            f'args = ["-c" "echo {stamp} ${{toString deps}} > $out"]; }}; '
            f'in mk "m-package" [{deps}]')
    drv = subprocess.run(["nix-instantiate", "--expr", expr], capture_output=True, text=True, check=True).stdout.strip()
    inputs = subprocess.run(["nix-store", "-q", "--references", drv], capture_output=True, text=True,
                            check=True).stdout.split()
    return drv, inputs


def test_a_builds_derived_datasets_are_rooted_with_one_nix_store_call(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `mlbuild build MODEL`, a model already built included, asked Nix for the derived
    datasets to root with three nix-store calls (~0.3 s of a ~0.6 s no-op build): the closure, every
    derivation's outputs and their validity, though only the valid ones get a root. One call lists
    those. The split built here is rooted; one that is not in the store is not."""
    from mlbuild import build
    from mlbuild.config import Project, PythonConfig

    drv, inputs = package_drv(f"{os.getpid()}-{tmp_path.name}", '(mk "split" []) (mk "other" []) (mk "raw" [])')
    split_drv = next(d for d in inputs if d.endswith("-split.drv"))
    split = subprocess.run(["nix-store", "--realise", split_drv], capture_output=True, text=True,
                           check=True).stdout.strip()
    raw = {"datasets": {"split": {"prepare": "p.py", "inputs": ["raw"]}, "other": {"prepare": "p.py"},
                        "raw": {"path": "data"}}}
    project = Project(tmp_path, "m", PythonConfig("python3"), raw)
    calls: list[list[str]] = []
    run_nix = _nix.run_nix

    def counted(args: list[str], **kw: Any) -> Any:
        calls.append(list(args))
        return run_nix(args, **kw)

    monkeypatch.setattr(_nix, "run_nix", counted)
    assert build._derived_dataset_roots(project, "m", drv) == {"dataset-split": split}
    assert len(calls) == 1


def test_a_path_named_like_a_dataset_gets_no_dataset_root(tmp_path: Path) -> None:
    """The datasets a build roots were the closure's paths named like one: a dataset named "code"
    (or "suite") is named like the code a stage reads (mkCode's `builtins.path`), and since raw
    datasets are rooted by builds too, that code took over the `dataset-code` root `data add` made:
    the data was left to the next garbage collection. Only a dataset derivation's output is rooted."""
    from mlbuild import build
    from mlbuild.config import Project, PythonConfig

    stamp = f"{os.getpid()}-{tmp_path.name}-named"
    drv, inputs = package_drv(stamp, f'(mk "split" []) (mk "raw" []) (builtins.toFile "code" "{stamp} model.py")')
    built = {d.rsplit("-", 1)[-1][:-4]: subprocess.run(["nix-store", "--realise", d], capture_output=True, text=True,
                                                        check=True).stdout.strip()
             for d in inputs if d.endswith(("-split.drv", "-raw.drv"))}
    raw = {"datasets": {"split": {"prepare": "p.py", "inputs": ["raw"]}, "raw": {"path": "data"},
                        "code": {"path": "code-data"}}}   # its data is not in this store
    project = Project(tmp_path, "m", PythonConfig("python3"), raw)
    assert build._derived_dataset_roots(project, "m", drv) == {"dataset-split": built["split"],
                                                               "dataset-raw": built["raw"]}


def roots_of(path: str) -> str:
    return subprocess.run(["nix-store", "-q", "--roots", path], capture_output=True, text=True,
                          errors="surrogateescape", check=True).stdout


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_a_project_moved_or_copied_is_rooted_again(tmp_path: Path, how: str) -> None:
    """`mv proj proj2` (or `cp -a`) keeps .mlbuild/gcroots' links, and add_roots skipped a link
    that already pointed at the path; Nix's own entry (gcroots/auto) named the old folder, so after
    the move nothing held the outputs and the next garbage collection took them, build as one might."""
    path = stored(tmp_path, how)
    old = tmp_path / "proj" / ".mlbuild" / "gcroots"
    _nix.add_roots({"m.model": path}, old)
    new_project = tmp_path / "proj2"
    if how == "moved":
        (tmp_path / "proj").rename(new_project)
    else:
        subprocess.run(["cp", "-a", str(tmp_path / "proj"), str(new_project)], check=True)
    new = new_project / ".mlbuild" / "gcroots"
    assert str(new / "m.model") not in roots_of(path)
    _nix.add_roots({"m.model": path}, new)
    assert str(new / "m.model") in roots_of(path)


def test_a_root_nix_holds_costs_no_nix_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = stored(tmp_path, "held")
    roots = tmp_path / "gcroots"
    _nix.add_roots({"m.model": path}, roots)

    def no_nix(args: list[str], **kw: Any) -> Any:
        raise AssertionError(f"nix called again: {args}")

    monkeypatch.setattr(_nix, "run_nix", no_nix)
    _nix.add_roots({"m.model": path}, roots)


def test_a_root_in_a_runner_s_own_store_is_recorded_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build on a runner's own store (NIX_CONFIG="store = /tmp/machine-b") of a project built on
    the host's store before took the host's record of its root (/nix/var/nix/gcroots/auto) for that
    store's, and rooted nothing there: its next garbage collection took the outputs."""
    import hashlib

    chroot = tmp_path / "machine-b"
    monkeypatch.delenv("NIX_REMOTE", raising=False)
    monkeypatch.setenv("NIX_CONFIG", f"store = {chroot}")
    (tmp_path / "x.txt").write_text(f"{os.getpid()} {tmp_path}\n")
    path = subprocess.run(["nix-store", "--add", str(tmp_path / "x.txt")], capture_output=True, text=True,
                          check=True).stdout.strip()
    roots = tmp_path / "proj" / ".mlbuild" / "gcroots"
    roots.mkdir(parents=True)
    os.symlink(path, roots / "m.model")   # the host's build made the link, and Nix recorded it there
    host = tmp_path / "host-state" / "gcroots" / "auto"
    host.mkdir(parents=True)
    os.symlink(roots / "m.model", host / _nix.nix_base32(hashlib.sha1(os.fsencode(str(roots / "m.model"))).digest()))
    monkeypatch.setenv("NIX_STATE_DIR", str(tmp_path / "host-state"))
    _nix.add_roots({"m.model": path}, roots)
    assert str(roots / "m.model") in roots_of(path)   # nix-store -q --roots, in that store
