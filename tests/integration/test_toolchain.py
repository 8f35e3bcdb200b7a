"""The toolchain with real Nix: hermetic closure, reproducible, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mlbuild.interpreter import probe
from mlbuild.runtime.elf import read_elf
from tests.conftest import REPO, run_cli, write_tree
from tests.integration.conftest import (MAPS_CHECK, env_i_python, example_copy, instantiate,
                                        lock_matches_host, nix, small_project_tree)

pytestmark = pytest.mark.integration
HOST_PREFIX = probe("python3.11").prefix.encode()
FORBIDDEN_DIRS = ("/usr/", "/lib/", "/lib64/", "/opt/", "/root/")
SYSCONFIG_CHECK = """
import sys, sysconfig
paths = dict(sysconfig.get_paths())
keys = ("prefix", "exec_prefix", "base", "platbase", "LIBDIR", "BINDIR", "INCLUDEPY", "LIBDEST",
        "BINLIBDEST", "DESTSHARED", "LIBPL", "CONFINCLUDEPY")
paths.update({k: sysconfig.get_config_var(k) for k in keys if sysconfig.get_config_var(k)})
paths.update(executable=sys.executable, prefix=sys.prefix, base_prefix=sys.base_prefix)
for k, v in sorted(paths.items()):
    if not str(v).startswith("/nix/store/"):
        print("OUTSIDE", k, v)
for p in sys.path:
    if p and not p.startswith("/nix/store/"):
        print("OUTSIDE sys.path", p)
"""


def closure(path: str) -> list[str]:
    return subprocess.run(["nix-store", "-qR", path], capture_output=True, text=True, check=True).stdout.split()


def assert_hermetic(toolchain: str) -> None:
    paths = closure(toolchain)
    assert paths and all(p.startswith("/nix/store/") for p in paths)
    problems = []
    for top in paths:
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                f = os.path.join(dirpath, name)
                if os.path.islink(f):
                    target = os.readlink(f)
                    if target.startswith("/") and not target.startswith("/nix/store/"):
                        problems.append(f"{f} -> {target}")
                    continue
                with open(f, "rb") as fh:
                    data = fh.read()
                if HOST_PREFIX in data:
                    problems.append(f"{f} contains the host interpreter prefix {HOST_PREFIX.decode()}")
                if data.startswith(b"#!") and os.stat(f).st_mode & 0o111:
                    shebang = data.split(b"\n", 1)[0][2:].strip().split()[0].decode()
                    if not shebang.startswith("/nix/store/"):
                        problems.append(f"{f} has shebang {shebang}")
                if data.startswith(b"\x7fELF"):
                    info = read_elf(f)
                    assert info is not None
                    if info.interp and not info.interp.startswith("/nix/store/"):
                        problems.append(f"{f} has ELF interpreter {info.interp}")
                    for r in info.rpath:
                        if not r.startswith(("/nix/store/", "$ORIGIN", "${ORIGIN}")):
                            problems.append(f"{f} searches {r}")
                if name.endswith((".pth", ".cfg")):
                    text = data.decode(errors="replace")
                    problems += [f"{f} names {d}" for d in FORBIDDEN_DIRS if d in text]
    # Every install location Python reports is in the store.
    proc = env_i_python(f"{toolchain}/bin/python", SYSCONFIG_CHECK)
    assert proc.returncode == 0, proc.stderr
    problems += [line for line in proc.stdout.splitlines() if line.startswith("OUTSIDE")]
    # The loader's built-in search folders and cache are disabled: no fallback to host libraries.
    loader = next(Path(p) for p in paths if p.endswith("-python-3.11.7") or "-python-3" in p)
    ld = next((loader / "lib").glob("ld-linux*")).read_bytes()
    for d in (b"/lib/x86_64-linux-gnu/", b"/usr/lib/x86_64-linux-gnu/", b"/etc/ld.so.cache"):
        if d in ld:
            problems.append(f"the loader still searches {d.decode()}")
    assert not problems, "\n".join(problems[:30])


def test_small_toolchain_is_hermetic(small_toolchain: str) -> None:
    assert_hermetic(small_toolchain)
    proc = env_i_python(f"{small_toolchain}/bin/python",
                        "import numpy, safetensors.numpy, ssl, sqlite3, ctypes, json\n" + MAPS_CHECK)
    assert proc.returncode == 0, proc.stderr
    assert "NONSTORE []" in proc.stdout, proc.stdout
    manifest = json.loads(Path(small_toolchain, "nix-support", "toolchain.json").read_text())
    assert {w["name"] for w in manifest["wheels"]} >= {"numpy", "safetensors"}


def test_small_toolchain_is_bit_reproducible(small_project: Path, small_toolchain: str) -> None:
    for attr in ("interpreter", "toolchain"):
        drv = instantiate(small_project, attr)
        proc = subprocess.run(["nix-build", "--check", drv, "--no-out-link"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_target_named_twice_is_built_and_listed_once(small_project: Path, small_toolchain: str) -> None:
    out = run_cli("build", "toolchain", "toolchain", cwd=small_project).stdout
    assert [line for line in out.splitlines() if line.startswith("toolchain\t")] == [f"toolchain\t{small_toolchain}"]


def test_second_prefetch_is_a_noop(small_project: Path) -> None:
    out = run_cli("prefetch", cwd=small_project).stdout
    assert out.startswith("0 added")


def test_lock_says_what_changed(small_project: Path, tmp_path: Path) -> None:
    """Another interpreter or requirement can swap in other wheels (a CUDA torch: several GB) under
    a bare "locked 88 wheels"."""
    root = write_tree(tmp_path, {"mlbuild.toml": (small_project / "mlbuild.toml").read_text(),
                                 "mlbuild.lock": (small_project / "mlbuild.lock").read_text()})
    toml = root / "mlbuild.toml"
    toml.write_text(toml.read_text().replace('"safetensors"', '"safetensors", "packaging==24.0"'))
    out = run_cli("lock", cwd=root).stdout
    assert out.splitlines()[1:] == ["  + packaging 24.0"], out
    toml.write_text(toml.read_text().replace('"packaging==24.0"', '"packaging==24.1"'))
    assert run_cli("lock", cwd=root).stdout.splitlines()[1:] == ["  ~ packaging 24.0 -> 24.1"]


def test_unresolvable_requirement(tree) -> None:
    root = tree(small_project_tree(["mlbuild-no-such-package-xyz==1.0"]))
    proc = run_cli("lock", cwd=root, check=False)
    assert proc.returncode == 1
    assert "Error: pip could not resolve mlbuild-no-such-package-xyz==1.0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_wheel_hash_mismatch(small_project: Path, tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"mlbuild.toml": (small_project / "mlbuild.toml").read_text()})
    lock = json.loads((small_project / "mlbuild.lock").read_text())
    lock["wheels"] = [dict(w, sha256="0" * 64) if w["name"] == "safetensors" else w for w in lock["wheels"]]
    (root / "mlbuild.lock").write_text(json.dumps(lock))
    proc = run_cli("prefetch", cwd=root, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "Error: wheel safetensors-" in proc.stderr and "mlbuild.lock pins " + "0" * 64 in proc.stderr


def test_interpreter_differs_from_lock(small_project: Path, tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"mlbuild.toml": (small_project / "mlbuild.toml").read_text()})
    lock = json.loads((small_project / "mlbuild.lock").read_text())
    lock["interpreter"]["version"] = "3.11.0"
    lock["interpreter"]["snapshot"]["sha256"] = "1" * 64
    (root / "mlbuild.lock").write_text(json.dumps(lock))
    proc = run_cli("prefetch", cwd=root, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "differs from mlbuild.lock" in proc.stderr and "'3.11.0' -> '3.11.7'" in proc.stderr
    assert "run `mlbuild lock`" in proc.stderr


def test_stale_lock(small_project: Path, tmp_path: Path) -> None:
    root = write_tree(tmp_path, small_project_tree(["numpy"]))
    (root / "mlbuild.lock").write_text((small_project / "mlbuild.lock").read_text())
    proc = run_cli("build", cwd=root, check=False)
    assert proc.returncode == 1 and "run `mlbuild lock`" in proc.stderr


def test_missing_wheel_build_names_the_fix(small_project: Path, tmp_path: Path) -> None:
    """Nix itself, asked for a wheel that is nowhere, says which command brings it."""
    root = write_tree(tmp_path, {"mlbuild.toml": (small_project / "mlbuild.toml").read_text()})
    lock = json.loads((small_project / "mlbuild.lock").read_text())
    lock["wheels"] = [dict(w, sha256="2" * 64) if w["name"] == "safetensors" else w for w in lock["wheels"]]
    (root / "mlbuild.lock").write_text(json.dumps(lock))
    proc = run_cli("build", "toolchain", cwd=root, check=False)
    assert proc.returncode == 1
    assert "wheel safetensors-" in proc.stderr and "mlbuild prefetch" in proc.stderr


@pytest.mark.torch
def test_digits_toolchain_with_torch(tmp_path: Path) -> None:
    """The README's path: prefetch, then `nix build .#digits.toolchain` from the flake."""
    digits = REPO / "examples" / "digits"
    if lock_matches_host(digits):
        run_cli("prefetch", cwd=digits)
        out = nix("build", "--no-link", "--json", f"{REPO}#digits.toolchain", cwd=REPO).stdout
        toolchain = json.loads(out)[0]["outputs"]["out"]
        project = digits
    else:  # another host's interpreter: re-lock a copy, as the README says
        project = example_copy("digits", tmp_path)
        toolchain = run_cli("build", "toolchain", cwd=project).stdout.split("\t")[1].split("\n")[0]
    proc = env_i_python(f"{toolchain}/bin/python",
                        "import torch, numpy, safetensors.torch, sklearn, starlette, uvicorn, prometheus_client\n"
                        "print(torch.nn.Linear(3, 2)(torch.ones(1, 3)).shape)\n" + MAPS_CHECK)
    assert proc.returncode == 0, proc.stderr
    assert "torch.Size([1, 2])" in proc.stdout and "NONSTORE []" in proc.stdout
    assert_hermetic(toolchain)
    drv = instantiate(project, "toolchain")
    proc = subprocess.run(["nix-build", "--check", drv, "--no-out-link"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
