"""mlbuild.toml and mlbuild.lock reading: every mistake is a clear error."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mlbuild.config import load_project
from mlbuild.errors import ConfigError, LockError
from mlbuild.lockfile import read_lock, write_lock

GOOD = '[project]\nname = "demo"\n[python]\ninterpreter = "python3"\nrequirements = ["numpy"]\n'


def test_load_good(tree) -> None:
    root = tree({"mlbuild.toml": GOOD})
    p = load_project(root)
    assert p.name == "demo" and p.python.requirements == ("numpy",)


def test_found_from_subfolder(tree, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tree({"mlbuild.toml": GOOD, "src": {"x.py": ""}})
    monkeypatch.chdir(root / "src")
    assert load_project().root == root.resolve()


@pytest.mark.parametrize("text,match", [
    ("[python]\n", "needs a \\[project\\] table"),
    ('[project]\nname = "9bad"\n', "must match"),
    ('[project]\nname = "ok"\n[python]\nrequirements = "numpy"\n', "list of strings"),
    ("not toml [", "not valid TOML"),
])
def test_bad_config(tree, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_project(tree({"mlbuild.toml": text}))


def test_missing_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no mlbuild.toml"):
        load_project()


def test_lock_roundtrip_and_errors(tmp_path: Path) -> None:
    lock = tmp_path / "mlbuild.lock"
    with pytest.raises(LockError, match="mlbuild lock"):
        read_lock(lock)
    data = {"requirements": [], "interpreter": {"snapshot": {"name": "s", "sha256": "0" * 64}},
            "wheels": [{"name": "a", "version": "1", "filename": "a-1-py3-none-any.whl", "sha256": "1" * 64}],
            "tools": []}
    write_lock(lock, data)
    assert read_lock(lock)["wheels"] == data["wheels"]
    lock.write_text("{")
    with pytest.raises(LockError, match="not valid JSON"):
        read_lock(lock)
    bad = dict(data, wheels=[{"name": "a", "version": "1", "filename": "a.whl", "sha256": "xyz"}])
    write_lock(lock, bad)
    with pytest.raises(LockError, match="64 lowercase hex"):
        read_lock(lock)
    # 64 characters, not hex: prefetch said the package source served other bytes than were locked
    write_lock(lock, dict(data, wheels=[dict(data["wheels"][0], sha256="z" * 64)]))
    with pytest.raises(LockError, match=re.escape(f"has sha256 {'z' * 64!r}, not 64 lowercase hex digits; restore")):
        read_lock(lock)
    for name in ("../a-1-py3-none-any.whl", "a-1.tar.gz", ".whl"):   # a KeyError traceback in prefetch
        write_lock(lock, dict(data, wheels=[dict(data["wheels"][0], filename=name)]))
        with pytest.raises(LockError, match=re.escape(f"{name!r} is not a wheel's file name; restore the lock")):
            read_lock(lock)
    lock.write_text(json.dumps({"version": 99}))
    with pytest.raises(LockError, match="lock version 99, written by a newer mlbuild"):
        read_lock(lock)
    lock.write_text(json.dumps({"version": "1"}))
    with pytest.raises(LockError, match="expected 1"):
        read_lock(lock)
    lock.write_bytes(b"\xff\xfe{")     # a UnicodeDecodeError traceback
    with pytest.raises(LockError, match=re.escape("mlbuild.lock: not UTF-8 text (invalid start byte at byte 0); restore it "
                                                  "from git (`git checkout -- mlbuild.lock`)")):
        read_lock(lock)
    # a hand edit or a merge that left JSON of other shapes: TypeError and AttributeError tracebacks
    for key, value in (("wheels", 5), ("tools", {"a": 1})):
        write_lock(lock, dict(data, **{key: value}))
        with pytest.raises(LockError, match=re.escape(f"mlbuild.lock: {key} is {json.dumps(value)}, not a list of "
                                                      f"wheels as `mlbuild lock` writes it")):
            read_lock(lock)
    for interpreter in ("snapshot", {"snapshot": "x"}, ["snapshot"]):
        write_lock(lock, dict(data, interpreter=interpreter))
        with pytest.raises(LockError, match=re.escape("mlbuild.lock: no interpreter entry (an object with its "
                                                      "snapshot, as `mlbuild lock` writes it); run `mlbuild lock`")):
            read_lock(lock)
    write_lock(lock, data)
    lock.write_bytes(b"\xef\xbb\xbf" + lock.read_bytes())   # a byte order mark, which Nix's fromJSON skips
    assert read_lock(lock)["wheels"] == data["wheels"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_the_lock_gets_the_mode_open_would_give(tmp_path: Path, umask: int) -> None:
    lock = tmp_path / "mlbuild.lock"
    old = os.umask(umask)
    try:
        write_lock(lock, {"interpreter": {"snapshot": {"name": "s", "sha256": "0" * 64}}})
    finally:
        os.umask(old)
    assert lock.stat().st_mode & 0o777 == 0o666 & ~umask    # not mkstemp's 0600
    assert list(tmp_path.iterdir()) == [lock]               # no temp file left


def test_a_rewritten_lock_keeps_its_mode(tmp_path: Path) -> None:
    """A group-writable lock in a shared checkout lost the group's write under a 022 umask when
    rewritten through a temp file: the next teammate's `mlbuild lock` was refused."""
    lock = tmp_path / "mlbuild.lock"
    data = {"interpreter": {"snapshot": {"name": "s", "sha256": "0" * 64}}}
    write_lock(lock, data)
    lock.chmod(0o664)
    old = os.umask(0o022)
    try:
        write_lock(lock, data)
    finally:
        os.umask(old)
    assert lock.stat().st_mode & 0o777 == 0o664
    assert list(tmp_path.iterdir()) == [lock]


def _locked(requirements: list[str], libraries: list[str], command: str | None) -> dict:
    interpreter: dict = {"libraries": libraries, "snapshot": {"name": "s", "sha256": "0" * 64}}
    if command is not None:
        interpreter["command"] = command
    return {"version": 1, "requirements": requirements, "interpreter": interpreter, "wheels": [], "tools": []}


@pytest.mark.parametrize(("lock", "message"), [
    (_locked(["torch"], [], "python3"),
     'was made for other [python].requirements than mlbuild.toml has (added ["numpy"]; removed ["torch"]); '
     'run `mlbuild lock`'),
    (_locked(["numpy", "pandas"], [], "python3"), '(removed ["pandas"])'),
    (_locked(["torch", "numpy"], [], "python3"), "(the same, in another order)"),
    # interpreter and libraries changes went unnoticed: the build used the old lock's snapshot
    (_locked(["numpy"], [], "python3.11"), '[python].interpreter "python3.11", but mlbuild.toml has "python3"'),
    (_locked(["numpy"], ["libfoo.so.1"], "python3"), '[python].libraries ["libfoo.so.1"], but mlbuild.toml has []'),
])
def test_a_lock_made_for_other_python_settings_is_refused(tree, lock: dict, message: str) -> None:
    from mlbuild.toolchain import check_fresh

    text = GOOD.replace('["numpy"]', '["numpy", "torch"]') if "another order" in message else GOOD
    project = load_project(tree({"mlbuild.toml": text}))
    with pytest.raises(LockError, match=re.escape(message)):
        check_fresh(project, lock)
    check_fresh(project, _locked(list(project.python.requirements), [], "python3"))
    check_fresh(project, _locked(list(project.python.requirements), [], None))   # a lock from before "command"


@pytest.mark.parametrize("text", ['{"version": 1, "wheels": [,', "\x00\x01", "\udcff{}"])
def test_lock_will_not_write_over_a_lock_it_cannot_read(tree, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """It kept the other sections of a readable lock, but started from nothing over a corrupt one:
    every dataset pin was dropped without a word."""
    from mlbuild import toolchain

    root = tree({"mlbuild.toml": GOOD})
    (root / "mlbuild.lock").write_bytes(text.encode(errors="surrogateescape"))   # "\udcff": a byte 0xff, not UTF-8
    monkeypatch.setattr(toolchain, "probe", lambda spec: pytest.fail("refused before resolving"))
    with pytest.raises(LockError, match=r"will not write over a lock it cannot read: restore it from git") as e:
        toolchain.lock_project(load_project(root))
    assert str(e.value).count("restore it from git") == 1, e.value   # the fix, said once
    assert (root / "mlbuild.lock").read_bytes() == text.encode(errors="surrogateescape")


def test_a_misspelled_project_name_key_is_named(tree) -> None:
    root = tree({"mlbuild.toml": GOOD.replace('name = "demo"', 'nme = "demo"')})
    with pytest.raises(ConfigError, match=re.escape('''needs a [project] table with name = "..." ([project] has 'nme': misspelled?)''')):
        load_project(root)


@pytest.mark.parametrize(("text", "message"), [
    # `mlbuild lock` ignored both and pinned a lock without numpy (and for python3, the default)
    (GOOD.replace("requirements =", "requirement ="), '[python] has unknown key "requirement"; it takes '
                                                      '"interpreter", "requirements", "libraries"'),
    (GOOD.replace("[python]", "[pyton]"), 'mlbuild.toml has unknown key "pyton"; it takes "project", "python", '),
    (GOOD.replace('name = "demo"', 'name = "demo"\nversion = "1"'), '[project] has unknown key "version"'),
])
def test_an_unknown_key_the_driver_reads_is_named_as_nix_names_it(tree, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_project(tree({"mlbuild.toml": text}))


def test_a_byte_order_mark_is_not_toml_and_other_encodings_are_named(tree) -> None:
    """Nix's fromTOML skips a UTF-8 byte order mark, the driver said 'Invalid statement (at line 1,
    column 1)'; a UTF-16 file was a UnicodeDecodeError traceback."""
    root = tree({"mlbuild.toml": ""})
    (root / "mlbuild.toml").write_bytes(b"\xef\xbb\xbf" + GOOD.replace("\n", "\r\n").encode())
    assert load_project(root).python.requirements == ("numpy",)
    (root / "mlbuild.toml").write_bytes(GOOD.encode("utf-16"))
    with pytest.raises(ConfigError, match=re.escape("mlbuild.toml: not UTF-8 text (byte 0 is b'\\xff'); "
                                                    "TOML is UTF-8: save it as UTF-8")):
        load_project(root)


def test_the_driver_takes_the_keys_nix_takes() -> None:
    from mlbuild.config import _KEYS

    nix = (Path(__file__).parents[2] / "nix" / "project.nix").read_text()
    for where, key in (("mlbuild.toml", "top"), ("[project]", "project"), ("[python]", "python")):
        m = re.search(rf"^ +{key} = \[([^\]]*)\];", nix, re.M)
        assert m and tuple(json.loads(f"[{m.group(1).strip().replace(' ', ', ')}]")) == _KEYS[where]


@pytest.mark.parametrize(("line", "message"), [
    # Nix's fromTOML: "Dates and times are not supported", naming no key, at the first build, after
    # lock and data add had taken the file
    ("[models.reg.params]\nwhen = 1979-05-27T07:32:00Z\n",
     '[models.reg.params].when is a TOML date or time (1979-05-27T07:32:00+00:00), which Nix\'s fromTOML cannot '
     'read; write it as a string: "1979-05-27T07:32:00+00:00"'),
    ("[models.reg.params]\ndays = [1, { at = 07:32:00 }]\n", "[models.reg.params].days[1].at is a TOML date or time"),
    ("[models.reg]\nparams = { day = 1979-05-27 }\n", "[models.reg.params].day is a TOML date or time (1979-05-27)"),
])
def test_a_toml_date_is_refused_naming_its_key(tree, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_project(tree({"mlbuild.toml": GOOD + line}))


_CONFLICTED_LOCK = """{
  "datasets": {
    "raw": {
<<<<<<< HEAD
      "sha256": "1111111111111111111111111111111111111111111111111111111111111111"
=======
      "sha256": "2222222222222222222222222222222222222222222222222222222222222222"
>>>>>>> feature
    }
  }
}
"""


def test_a_half_merged_config_names_the_conflict(tree) -> None:
    """A merge that conflicted in mlbuild.toml was reported as a bare TOML syntax error."""
    text = GOOD + '<<<<<<< HEAD\n[datasets.a]\npath = "a"\n=======\n[datasets.b]\npath = "b"\n>>>>>>> feature\n'
    with pytest.raises(ConfigError, match=r"merge left it half-resolved \(conflict marker '<<<<<<< HEAD' at line 6\)"
                                          r".*delete the marker lines, then `git add mlbuild.toml`"):
        load_project(tree({"mlbuild.toml": text}))


def test_a_config_merged_with_markers_inside_a_string_is_named_while_git_holds_it_unmerged(tree) -> None:
    """A conflict inside a multi-line string is valid TOML: mlbuild read the markers as the value
    (`build --allow-dirty` trained with them, `data add` and `lock` went on) without a word."""
    import subprocess

    root = tree({"mlbuild.toml": GOOD + '[models.m.params]\nnote = """\nbase\n"""\n'})
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True)

    config = root / "mlbuild.toml"
    git("init", "-q", "-b", "main"), git("add", "-A"), git("commit", "-qm", "base")
    git("checkout", "-qb", "other")
    config.write_text(config.read_text().replace("base\n", "theirs\n")), git("commit", "-qam", "theirs")
    git("checkout", "-q", "main")
    config.write_text(config.read_text().replace("base\n", "ours\n")), git("commit", "-qam", "ours")
    assert git("merge", "other").returncode == 1 and "=======\ntheirs" in config.read_text()
    with pytest.raises(ConfigError, match=r"merge left it half-resolved \(conflict marker '<<<<<<< HEAD' at line 8\)"):
        load_project(root)
    git("add", "mlbuild.toml")   # resolved as it is, by the user's word: the string is theirs to keep
    assert "=======" in load_project(root).raw["models"]["m"]["params"]["note"]


def test_a_half_merged_lock_names_the_conflict_and_how_to_resolve_it(tree, monkeypatch: pytest.MonkeyPatch) -> None:
    """It said `git checkout -- mlbuild.lock`, which git refuses for an unmerged file (and which
    would drop both sides' pins); `mlbuild lock` said the same."""
    from mlbuild import toolchain

    root = tree({"mlbuild.toml": GOOD, "mlbuild.lock": _CONFLICTED_LOCK})
    with pytest.raises(LockError, match=r"conflict marker '<<<<<<< HEAD' at line 4\); take one side "
                                        r"\(`git checkout --ours -- mlbuild.lock`, or `--theirs`\)") as e:
        read_lock(root / "mlbuild.lock")
    assert "git checkout -- mlbuild.lock" not in str(e.value)
    monkeypatch.setattr(toolchain, "probe", lambda spec: pytest.fail("refused before resolving"))
    with pytest.raises(LockError, match="half-resolved") as e:
        toolchain.lock_project(load_project(root))
    assert "restore it from git" not in str(e.value)
    assert (root / "mlbuild.lock").read_text() == _CONFLICTED_LOCK


def test_a_half_merged_flake_lock_names_the_conflict(tree) -> None:
    """It said "restore it from git or run `nix flake lock`": git refuses to restore an unmerged
    file, and `nix flake lock` cannot parse one with conflict markers."""
    from mlbuild.flakepin import locked_input

    flake_lock = ('{\n  "nodes": {\n    "mlbuild": {\n      "locked": {\n<<<<<<< HEAD\n        "rev": "a"\n'
                  '=======\n        "rev": "b"\n>>>>>>> feature\n      }\n    }\n  }\n}\n')
    root = tree({"flake.nix": "{ }\n", "flake.lock": flake_lock})
    with pytest.raises(ConfigError, match=r"half-resolved \(conflict marker '<<<<<<< HEAD' at line 5\); take one side "
                                          r"\(`git checkout --theirs -- flake.lock`, or `--ours`\), then `nix flake "
                                          r"lock` and `git add flake.lock`$"):
        locked_input(root)


def test_an_mlbuild_input_that_follows_another_flake_s_is_the_one_pinned(tree, capsys) -> None:
    """`inputs.mlbuild.follows = "platform/mlbuild"` (a team's platform flake brings mlbuild): the
    lock names the input by a path, and `mlbuild build` used its own Nix library without a word
    while `nix build` built with the platform's (other store paths); an input named otherwise was
    as silent."""
    from mlbuild.flakepin import locked_input

    locked = {"type": "git", "url": "file:///srv/mlbuild", "rev": "a" * 40}
    nodes = {"mlbuild": {"locked": locked}, "platform": {"inputs": {"mlbuild": "mlbuild"}, "locked": {}},
             "root": {"inputs": {"mlbuild": ["platform", "mlbuild"], "platform": "platform"}}}
    root = tree({"flake.nix": "{ }\n", "flake.lock": json.dumps({"nodes": nodes, "root": "root", "version": 7})})
    assert locked_input(root) == locked
    nodes["root"]["inputs"] = {"ml": "mlbuild", "platform": "platform"}
    (root / "flake.lock").write_text(json.dumps({"nodes": nodes, "root": "root", "version": 7}))
    assert locked_input(root) is None
    assert "flake.lock has no input named 'mlbuild' (its inputs: ml, platform), so this build uses this mlbuild's " \
           "own Nix library" in capsys.readouterr().err
    nodes["root"]["inputs"] = {"mlbuild": ["platform", "nothing"]}
    (root / "flake.lock").write_text(json.dumps({"nodes": nodes, "root": "root", "version": 7}))
    with pytest.raises(ConfigError, match=r"is not a flake lock mlbuild can read \(KeyError: \"platform/nothing"):
        locked_input(root)


@pytest.mark.skipif(not shutil.which("nix"), reason="needs nix")
def test_a_flake_lock_of_a_dirty_mlbuild_that_this_nix_cannot_read_says_what_to_do(tree) -> None:
    """Nix 2.26's `nix flake lock --allow-dirty-locks` (the fix its own refusal names) pins a checkout
    with uncommitted changes with a `dirtyRev`; Nix 2.8 (Debian 12) cannot read it: `mlbuild build`
    warned with Nix's raw "unsupported Git input attribute 'dirtyRev'" and built with its own Nix
    library, where Nix 2.26 built with the pinned one (other store paths)."""
    from mlbuild import flakepin

    locked = {"dirtyRev": "a" * 40 + "-dirty", "dirtyShortRev": "aaaaaaa-dirty", "lastModified": 1,
              "narHash": "sha256-yoNbquPAxE5l065JHIz+waZZsztKmQ72EnQJuJBRGC4=", "type": "git",
              "url": "file:///nonexistent/mlbuild"}
    nodes = {"mlbuild": {"locked": locked, "original": {"type": "git", "url": "file:///nonexistent/mlbuild"}},
             "root": {"inputs": {"mlbuild": "mlbuild"}}}
    root = tree({"flake.nix": "{ }\n", "flake.lock": json.dumps({"nodes": nodes, "root": "root", "version": 7})})
    attrs = {k: v for k, v in locked.items() if k != "narHash"}
    probe = subprocess.run(["nix", "--extra-experimental-features", "nix-command flakes", "eval", "--impure", "--expr",
                            f"builtins.fetchTree (builtins.fromJSON {json.dumps(json.dumps(attrs))})"],
                           capture_output=True, text=True)
    flakepin._pinned.cache_clear()
    if "dirtyRev" not in probe.stderr:   # a Nix that reads such a lock (2.26): only the fetch fails, a warning
        assert flakepin.pinned_entry(root) is None
        return
    with pytest.raises(ConfigError, match=r"flake.lock pins the mlbuild input from a checkout with uncommitted "
                                          r"changes \(dirtyRev a{40}-dirty: .*\), which Nix [\d.]+ here cannot read, "
                                          r"nor can `nix build`; commit those changes in file:///nonexistent/mlbuild, "
                                          r"then `nix flake lock --update-input mlbuild` and commit flake.lock$"):
        flakepin.pinned_entry(root)


@pytest.mark.skipif(not shutil.which("nix"), reason="needs nix")
def test_a_flake_lock_of_a_dirty_mlbuild_checkout_is_warned_about(tree, capsys) -> None:
    """Nix 2.8 locks a checkout with uncommitted changes by its tree's hash alone, and `mlbuild
    build` built on without a word; Nix 2.26 (CI on Debian 13) refuses that lock ("Lock file contains
    unlocked input"), and no other machine has the tree."""
    from mlbuild import flakepin

    locked = {"lastModified": 1, "narHash": "sha256-" + "A" * 43 + "=", "type": "git",
              "url": "file:///nonexistent/mlbuild2"}
    nodes = {"mlbuild": {"locked": locked, "original": {"type": "git", "url": "file:///nonexistent/mlbuild2"}},
             "root": {"inputs": {"mlbuild": "mlbuild"}}}
    root = tree({"flake.nix": "{ }\n", "flake.lock": json.dumps({"nodes": nodes, "root": "root", "version": 7})})
    assert flakepin.pinned_entry(root) is None   # not fetched here: this mlbuild's own library, warned
    assert ("mlbuild: warning: flake.lock pins the mlbuild input from a checkout with uncommitted changes "
            "(file:///nonexistent/mlbuild2), which no other machine can fetch, and a flake.lock pinning them is "
            "refused by Nix 2.26") in capsys.readouterr().err
    locked["rev"] = "a" * 40
    (root / "flake.lock").write_text(json.dumps({"nodes": nodes, "root": "root", "version": 7}))
    flakepin.pinned_entry(root)
    assert "uncommitted changes" not in capsys.readouterr().err


def test_a_lock_with_a_key_given_twice_is_refused(tree) -> None:
    """A conflict resolved by keeping both sides' lines (an editor's "accept both") gives a dataset
    two pins; json.loads and Nix's fromJSON both took the last without a word."""
    text = ('{\n  "datasets": {\n    "raw": {"sha256": "' + "1" * 64 + '"},\n    "raw": {"sha256": "' + "2" * 64
            + '"}\n  },\n  "version": 1\n}\n')
    root = tree({"mlbuild.lock": text})
    with pytest.raises(LockError, match=r"'raw' is given twice in one table .*keep the one you want"):
        read_lock(root / "mlbuild.lock")
    assert (root / "mlbuild.lock").read_text() == text


def test_mlbuild_lock_refuses_a_lock_with_a_key_given_twice(tree, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mlbuild lock` took the refusal for a lock of another version, kept its dataset pins as
    json.loads read them (the last of the two) and wrote the lock over: the first pin was gone."""
    from mlbuild import toolchain

    text = ('{\n  "datasets": {\n    "raw": {"sha256": "' + "1" * 64 + '"},\n    "raw": {"sha256": "' + "2" * 64
            + '"}\n  },\n  "version": 1\n}\n')
    root = tree({"mlbuild.toml": GOOD, "mlbuild.lock": text})
    monkeypatch.setattr(toolchain, "probe", lambda spec: pytest.fail("refused before resolving"))
    with pytest.raises(LockError, match=r"'raw' is given twice in one table"):
        toolchain.lock_project(load_project(root))
    assert (root / "mlbuild.lock").read_text() == text


def test_a_lock_from_a_newer_mlbuild_is_named_so_and_not_written_back_older(tree) -> None:
    """A teammate's newer mlbuild writes lock version 2: this one said "run `mlbuild lock`", which
    rewrote it in version 1, and the pinned Nix library read it without looking at its version."""
    from mlbuild.toolchain import _kept_sections

    root = tree({"mlbuild.toml": GOOD, "mlbuild.lock": json.dumps({"version": 2, "datasets": {}}) + "\n"})
    message = r"lock version 2, written by a newer mlbuild than this one \(it reads version 1\); use that mlbuild"
    with pytest.raises(LockError, match=message):
        read_lock(root / "mlbuild.lock")
    with pytest.raises(LockError, match=message):
        _kept_sections(load_project(root))
    (root / "mlbuild.lock").write_text(json.dumps({"version": 0, "datasets": {}}))   # older: lock again, as before
    with pytest.raises(LockError, match=r"lock version 0, expected 1; run `mlbuild lock`"):
        read_lock(root / "mlbuild.lock")
    assert _kept_sections(load_project(root)) == {"datasets": {}}


def test_the_nix_library_refuses_a_lock_from_a_newer_mlbuild(tree) -> None:
    import subprocess

    from tests.conftest import REPO

    root = tree({"mlbuild.toml": GOOD, "mlbuild.lock": json.dumps({"version": 2, "interpreter": {}}) + "\n"})
    expr = f'((import {REPO / "nix"} {{ }}).mkProject {{ src = {root}; }}).lock.version'
    out = subprocess.run(["nix", "--extra-experimental-features", "nix-command", "eval", "--impure", "--expr", expr],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "is lock version 2, written by a newer mlbuild than this Nix library" in out.stderr, \
        out.stderr
    (root / "mlbuild.lock").write_text(json.dumps({"version": 1, "interpreter": {}}))
    expr_ok = subprocess.run(["nix", "--extra-experimental-features", "nix-command", "eval", "--impure", "--expr", expr],
                             capture_output=True, text=True)
    assert expr_ok.stdout.strip() == "1", expr_ok.stderr


def test_the_nix_library_names_a_half_merged_lock(tree) -> None:
    """`nix build` of a project whose lock a merge left with conflict markers failed with fromJSON's
    bare `[json.exception.parse_error.101] parse error at line 4, column 1`, where every mlbuild
    command names the conflict and how to resolve it."""
    import subprocess

    from tests.conftest import REPO

    root = tree({"mlbuild.toml": GOOD, "mlbuild.lock": _CONFLICTED_LOCK})
    expr = f'((import {REPO / "nix"} {{ }}).mkProject {{ src = {root}; }}).lock.version'
    out = subprocess.run(["nix", "--extra-experimental-features", "nix-command", "eval", "--impure", "--expr", expr],
                         capture_output=True, text=True)
    assert out.returncode != 0, out.stdout
    assert "mlbuild.lock: a git merge left it half-resolved (conflict marker '<<<<<<< HEAD' at line 4); take one " \
           "side (`git checkout --ours -- mlbuild.lock`, or `--theirs`)" in out.stderr, out.stderr
    assert "parse error" not in out.stderr


@pytest.mark.parametrize(("datasets", "said"), [
    ({"raw": "ab" * 32}, f"dataset 'raw' is pinned as \"{'ab' * 32}\""),
    (["raw"], 'its datasets are ["raw"]'),
])
def test_a_dataset_pin_that_is_no_object_is_named(tmp_path: Path, datasets: object, said: str) -> None:
    """A hand-edited or merged pin (`"raw": "<hash>"`): status, data add and every build ended in an
    AttributeError traceback ('str' object has no attribute 'get')."""
    path = tmp_path / "mlbuild.lock"
    path.write_text(json.dumps({"version": 1, "interpreter": {"snapshot": {}}, "datasets": datasets}))
    with pytest.raises(LockError, match=re.escape(f"{path}: {said}, not {{\"sha256\": ...}} as `mlbuild data add` "
                                                  "writes it (a hand edit or a merge); restore it from git")):
        read_lock(path)


@pytest.mark.skipif(not shutil.which("nix"), reason="needs nix")
def test_the_pinned_mlbuild_is_fetched_once_while_its_store_path_is_there(tree, monkeypatch: pytest.MonkeyPatch,
                                                                          capsys) -> None:
    """Every build, serve, metrics and image command evaluated `builtins.fetchTree` of the mlbuild
    input flake.lock pins (~0.05-0.12 s) to find its store path. An input pinned by its content
    hash is looked up in a record of earlier fetches now, while that store path is there."""
    from mlbuild import _nix, flakepin

    monkeypatch.delenv("MLBUILD_NIX", raising=False)
    state = tree({"state": {}}) / "state"
    monkeypatch.setenv("MLBUILD_STATE", str(state))
    pin = tree({"pin": {"nix": {"entry.nix": f"# {os.getpid()} {state}\n{{ src, overrides ? {{}} }}: {{ }}\n"},
                        "mlbuild": {"__init__.py": "", "runtime": {"__init__.py": ""}}}}) / "pin"
    nar_hash = subprocess.run(["nix", "--extra-experimental-features", "nix-command", "hash", "path", str(pin)],
                              capture_output=True, text=True, check=True).stdout.strip()
    locked = {"narHash": nar_hash, "path": str(pin), "type": "path"}
    nodes = {"mlbuild": {"locked": locked, "original": {"path": str(pin), "type": "path"}},
             "root": {"inputs": {"mlbuild": "mlbuild"}}}
    root = tree({"p": {"flake.nix": "{ }\n", "flake.lock": json.dumps({"nodes": nodes, "root": "root", "version": 7})}}) / "p"
    calls: list[str] = []
    run_nix = _nix.run_nix
    monkeypatch.setattr(_nix, "run_nix", lambda args, **kw: calls.append(" ".join(args)) or run_nix(args, **kw))

    def entry() -> Path | None:
        flakepin._pinned.cache_clear()   # as a new command does
        return flakepin.pinned_entry(root)

    def evaluations() -> int:
        return sum("fetchTree" in c for c in calls)

    fetched = entry()
    assert fetched is not None and fetched.name == "entry.nix" and str(fetched).startswith(_nix.store_dir())
    assert "building with the mlbuild input flake.lock pins" in capsys.readouterr().err
    assert evaluations() == 1
    assert entry() == fetched and evaluations() == 1   # the record, no evaluation
    assert "building with the mlbuild input flake.lock pins" in capsys.readouterr().err   # said as before
    record = json.loads((state / "pinned-mlbuild.json").read_text())
    (state / "pinned-mlbuild.json").write_text(json.dumps(
        {k: {**v, "path": v["path"] + "-collected"} for k, v in record.items()}))
    assert entry() == fetched and evaluations() == 2   # a path no longer there: fetched again
    del locked["narHash"]   # not pinned by content: never taken from the record
    (root / "flake.lock").write_text(json.dumps({"nodes": nodes, "root": "root", "version": 7}))
    entry(), entry()
    assert evaluations() == 4


@pytest.mark.skipif(not shutil.which("nix") or os.geteuid() != 0, reason="needs nix and a store root may write")
def test_a_half_deleted_pinned_mlbuild_is_fetched_again(tree, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record of the pinned mlbuild's fetch was trusted while a folder was at its store path.
    A garbage collection or `nix-store --delete` stopped part way leaves such a folder that Nix no
    longer holds, with files missing: the build read a runtime without them (other store paths, a
    failed build), where fetchTree puts the whole tree back. Only a path Nix holds is taken now."""
    from mlbuild import _nix, flakepin

    monkeypatch.delenv("MLBUILD_NIX", raising=False)
    state = tree({"state": {}}) / "state"
    monkeypatch.setenv("MLBUILD_STATE", str(state))
    pin = tree({"pin": {"nix": {"entry.nix": f"# {os.getpid()} {state} half\n{{ src, overrides ? {{}} }}: {{ }}\n"},
                        "mlbuild": {"__init__.py": "", "runtime": {"__init__.py": ""}}}}) / "pin"
    nix = ["nix", "--extra-experimental-features", "nix-command"]
    nar_hash = subprocess.run([*nix, "hash", "path", str(pin)], capture_output=True, text=True, check=True).stdout.strip()
    locked = {"narHash": nar_hash, "path": str(pin), "type": "path"}
    nodes = {"mlbuild": {"locked": locked, "original": {"path": str(pin), "type": "path"}},
             "root": {"inputs": {"mlbuild": "mlbuild"}}}
    root = tree({"p": {"flake.nix": "{ }\n", "flake.lock": json.dumps({"nodes": nodes, "root": "root", "version": 7})}}) / "p"

    def entry() -> Path | None:
        flakepin._pinned.cache_clear()   # as a new command does
        return flakepin.pinned_entry(root)

    fetched = entry()
    assert fetched is not None
    stored = fetched.parent.parent
    subprocess.run(["nix-store", "--delete", str(stored)], capture_output=True, check=True)
    try:
        (stored / "nix").mkdir(parents=True)   # what a deletion stopped part way left: no mlbuild/ any more
        shutil.copy(pin / "nix" / "entry.nix", stored / "nix" / "entry.nix")
        assert entry() == fetched
        assert (stored / "mlbuild" / "runtime" / "__init__.py").is_file()   # fetched again, whole
    finally:
        if subprocess.run(["nix-store", "--check-validity", str(stored)], capture_output=True).returncode != 0:
            shutil.rmtree(stored)   # no half-deleted folder of this test's left in the store


@pytest.mark.skipif(not shutil.which("nix"), reason="needs nix")
def test_a_past_commit_s_pin_of_another_mlbuild_gets_no_advice_to_lock_this_one(tree, monkeypatch: pytest.MonkeyPatch,
                                                                                 capsys) -> None:
    """After an upgrade (flake.lock moved to today's mlbuild), `metrics history` and `metrics diff`
    build the commits from before it with the mlbuild they pinned, and said so with the advice for
    the worktree: 'it differs from this mlbuild ... To build with this one: `nix flake lock
    --override-input mlbuild ...`, then commit flake.lock', which the user had just done. A commit's
    pin that the worktree no longer has is named as that commit's, with nothing to change."""
    from mlbuild import flakepin

    monkeypatch.delenv("MLBUILD_NIX", raising=False)
    monkeypatch.setenv("MLBUILD_STATE", str(tree({"state": {}}) / "state"))
    pin = tree({"old": {"nix": {"entry.nix": f"# {os.getpid()} past\n{{ src, overrides ? {{}} }}: {{ }}\n"},
                        "mlbuild": {"__init__.py": "", "runtime": {"__init__.py": ""}}}}) / "old"

    def project(name: str, where: Path) -> Path:
        locked = {"path": str(where), "type": "path"}
        nodes = {"mlbuild": {"locked": locked, "original": locked}, "root": {"inputs": {"mlbuild": "mlbuild"}}}
        return tree({name: {"flake.nix": "{ }\n", "flake.lock": json.dumps({"nodes": nodes, "root": "root", "version": 7})}}) / name

    commit = project("commit", pin)          # the snapshot of a commit from before the upgrade
    upgraded = project("upgraded", tree({"new": {}}) / "new")   # the worktree, moved on
    advice = "To build with this one: `nix flake lock --override-input mlbuild"

    def said(worktree: Path | None) -> str:
        flakepin._pinned.cache_clear()   # as a new command does
        capsys.readouterr()
        if worktree is None:
            assert flakepin.pinned_entry(commit) is not None
        else:
            with flakepin.past_commit(worktree):
                assert flakepin.pinned_entry(commit) is not None
        return str(capsys.readouterr().err)

    past = said(upgraded)
    assert f"commits whose flake.lock pins another mlbuild (path {pin}) build with that one" in past
    assert "The worktree's flake.lock pins another one, so nothing needs to change" in past and advice not in past
    assert "The worktree's flake.lock pins none (it builds with this one), so nothing needs to change" in \
        said(tree({"bare": {"flake.nix": "{ }\n"}}) / "bare")   # a worktree without flake.lock
    assert advice in said(commit)    # the worktree pins that one too: the advice is the worktree's
    assert advice in said(None)      # a build of the worktree, as before


def test_a_flake_lock_locked_before_the_mlbuild_url_was_edited_is_refused(tree) -> None:
    """Upgrading by editing flake.nix's `inputs.mlbuild.url` (the team moved mlbuild, or a user
    points it at the new release) and committing it without `nix flake lock`: `nix build` locks the
    new url (writing flake.lock) and builds with it, and `mlbuild build` built with the old pin
    that flake.lock still held, other store paths, without a word."""
    from mlbuild import flakepin

    def project(url_line: str, original: dict[str, str], follows: bool = False) -> Path:
        locked = {**original, "rev": "a" * 40, "narHash": "sha256-x"}
        nodes = {"mlbuild": {"locked": locked, "original": original},
                 "root": {"inputs": {"mlbuild": ["platform", "mlbuild"] if follows else "mlbuild"}}}
        flake = "{\n  # inputs.mlbuild.url = \"git+file:///commented/out\";\n" + url_line + \
                "\n  outputs = { self, mlbuild }: mlbuild.lib.flakeOutputs { inherit self; src = ./.; };\n}\n"
        return tree({"p": {"flake.nix": flake,
                           "flake.lock": json.dumps({"nodes": nodes, "root": "root", "version": 7})}}) / "p"

    old = {"type": "git", "url": "file:///srv/mlbuild-old"}
    root = project('  inputs.mlbuild.url = "git+file:///srv/mlbuild-new";', old)
    with pytest.raises(ConfigError, match=re.escape(
            f'{root / "flake.nix"} sets inputs.mlbuild.url = "git+file:///srv/mlbuild-new", but flake.lock pins the '
            "mlbuild input from git file:///srv/mlbuild-old, locked before that url was set: `nix build` would lock "
            "the new one (writing flake.lock) and build with it, and this command would build with the old one; run "
            "`nix flake lock` to lock it, then `git add flake.lock` and commit it")):
        flakepin.pinned_entry(root)
    # a commit's snapshot (metrics history, diff) committed so is built with its pin: the advice to
    # lock and commit cannot change a commit, and its row was a gap
    other = tree({"w": {}}) / "w"
    with flakepin.past_commit(other):
        flakepin.pinned_entry(root)
    # The same reference as locked, in each form init or a team writes: nothing to say
    for line, original in [
        ('  inputs.mlbuild.url = "git+file:///srv/mlbuild-old";', old),
        ('  inputs = { mlbuild.url = "git+https://git.example/ml/mlbuild?ref=v2"; };',
         {"type": "git", "url": "https://git.example/ml/mlbuild", "ref": "v2"}),
        ('  inputs.mlbuild.url = "github:acme/mlbuild/release";', {"owner": "acme", "repo": "mlbuild", "ref": "release",
                                                                  "type": "github"}),
        ('  inputs.mlbuild.url = "path:/srv/mlbuild?dir=sub";', {"type": "path", "path": "/srv/mlbuild", "dir": "sub"}),
        ('  inputs.mlbuild.url = "/srv/mlbuild";', {"type": "path", "path": "/elsewhere"}),   # a form not checked
    ]:
        assert flakepin.stale_url(project(line, original)) is None, line
    # a new url with a trailing slash was not checked at all (the old pin, silently); the same folder
    # with or without one is the same reference
    assert flakepin.stale_url(project('  inputs.mlbuild.url = "git+file:///srv/mlbuild-new/";', old))
    assert flakepin.stale_url(project('  inputs.mlbuild.url = "git+file:///srv/mlbuild-old/";', old)) is None
    assert flakepin.stale_url(project('  inputs.mlbuild.url = "path:/srv/mlbuild-old";',
                                      {"type": "path", "path": "/srv/mlbuild-old/"})) is None
    # the url set in an attribute set of the input, on lines of its own: the same check
    assert flakepin.stale_url(project('  inputs.mlbuild = {\n    url =\n      "git+file:///srv/mlbuild-new";\n  };', old))
    assert flakepin.stale_url(project('  inputs = { mlbuild = { flake = true; url = "git+file:///srv/mlbuild-old"; }; };',
                                      old)) is None
    assert flakepin.stale_url(project('  inputs.mlbuild.url = "github:acme/mlbuild";',
                                      {"owner": "acme", "repo": "mlbuild", "ref": "release", "type": "github"}))
    # an input that follows another flake's is that flake's to lock
    assert flakepin.stale_url(project('  inputs.mlbuild.url = "git+file:///srv/mlbuild-new";', old, follows=True)) is None


def test_a_github_url_pinned_to_a_commit_is_checked_as_nix_locks_it(tree) -> None:
    """`github:owner/repo/<40 hex digits>` is a commit to Nix (`rev` in the lock's original, in lower
    case, as is a `?rev=`), not a branch: read as a `ref`, a project pinned to a release commit was
    refused at every build, and the `nix flake lock` the message named changed nothing."""
    from mlbuild import flakepin

    def project(url: str, original: dict[str, str]) -> Path:
        nodes = {"mlbuild": {"locked": {**original, "rev": "a" * 40, "narHash": "sha256-x"}, "original": original},
                 "root": {"inputs": {"mlbuild": "mlbuild"}}}
        flake = f'{{\n  inputs.mlbuild.url = "{url}";\n  outputs = {{ self, mlbuild }}: {{ }};\n}}\n'
        return tree({"p": {"flake.nix": flake,
                           "flake.lock": json.dumps({"nodes": nodes, "root": "root", "version": 7})}}) / "p"

    rev = "0123456789abcdef0123456789abcdef01234567"
    locked = {"owner": "acme", "repo": "mlbuild", "rev": rev, "type": "github"}
    assert flakepin.stale_url(project(f"github:acme/mlbuild/{rev}", locked)) is None
    assert flakepin.stale_url(project(f"github:acme/mlbuild/{rev.upper()}", locked)) is None
    assert flakepin.stale_url(project(f"github:acme/mlbuild?rev={rev.upper()}", locked)) is None
    # another commit, or a branch, is still another pin
    assert flakepin.stale_url(project(f"github:acme/mlbuild/{'b' * 40}", locked))
    assert flakepin.stale_url(project("github:acme/mlbuild/release", locked))


@pytest.mark.skipif(not shutil.which("nix"), reason="needs nix")
def test_the_reference_checked_is_spelled_as_nix_locks_it(tree) -> None:
    """stale_url compares flake.nix's url with flake.lock's `original`: where Nix wrote that
    otherwise, a project would be refused, and `nix flake lock` would not fix it."""
    from mlbuild import flakepin

    target = tree({"mlb": {"flake.nix": "{ outputs = _: { }; }\n"}}) / "mlb"
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    subprocess.run(["git", "add", "-A"], cwd=target, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], cwd=target, check=True)
    for i, url in enumerate([f"git+file://{target}", f"git+file://{target}?ref=master", f"path:{target}",
                             f"git+file://{target}/"]):
        spelled = f'inputs.mlbuild.url = "{url}";' if i != 1 else f'inputs.mlbuild = {{\n    url = "{url}";\n  }};'
        root = tree({f"p{i}": {"flake.nix": f'{{\n  {spelled}\n  outputs = {{ self, mlbuild }}: {{ }};\n}}\n'}}) / f"p{i}"
        proc = subprocess.run(["nix", "--extra-experimental-features", "nix-command flakes", "flake", "lock"], cwd=root,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert flakepin.stale_url(root) is None, (url, (root / "flake.lock").read_text())
        (root / "flake.nix").write_text((root / "flake.nix").read_text().replace(str(target), str(target) + "-moved"))
        assert flakepin.stale_url(root) is not None, url


@pytest.mark.skipif(not shutil.which("nix"), reason="needs nix")
def test_a_cli_older_than_the_pin_is_told_to_upgrade_not_to_lock_itself_into_the_project(
        tree, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A teammate still on the older mlbuild opens the upgraded project: the pinned mlbuild differs
    from theirs, and the message said 'To build with this one: `nix flake lock --override-input
    mlbuild <their checkout>`', which moves the project back (every model trained again). Where the
    pin is a later commit of this checkout, it says to upgrade this mlbuild instead."""
    from mlbuild import _nix, flakepin

    monkeypatch.delenv("MLBUILD_NIX", raising=False)
    monkeypatch.setenv("MLBUILD_STATE", str(tree({"state": {}}) / "state"))
    own = tree({"own": {"nix": {"entry.nix": f"# {os.getpid()} older\n{{ src, overrides ? {{}} }}: {{ }}\n"},
                        "mlbuild": {"__init__.py": "", "runtime": {"__init__.py": ""}}}}) / "own"

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=own, check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-qm", "older")
    older = git("rev-parse", "HEAD")
    (own / "nix" / "entry.nix").write_text(f"# {os.getpid()} newer\n{{ src, overrides ? {{}} }}: {{ }}\n")
    git("commit", "-qam", "newer")
    newer = git("rev-parse", "HEAD")
    monkeypatch.setattr(_nix, "nix_lib_dir", lambda: own / "nix")

    def said(cli_at: str, pin: str) -> str:
        git("checkout", "-q", cli_at)
        locked = {"type": "git", "url": f"file://{own}", "ref": "main", "rev": pin}
        nodes = {"mlbuild": {"locked": locked, "original": {"type": "git", "url": f"file://{own}"}},
                 "root": {"inputs": {"mlbuild": "mlbuild"}}}
        root = tree({f"p-{cli_at[:7]}": {"flake.nix": "{ }\n", "flake.lock": json.dumps(
            {"nodes": nodes, "root": "root", "version": 7})}}) / f"p-{cli_at[:7]}"
        flakepin._pinned.cache_clear()   # as a new command does
        capsys.readouterr()
        assert flakepin.pinned_entry(root) is not None
        return str(capsys.readouterr().err)

    behind = said(older, newer)   # the project moved on; this CLI did not
    assert f"it is newer than this mlbuild ({own}), which the project has moved past: upgrade this one " \
           f"(`git -C {own} pull`, then `bash .ci/setup` there), not the project's flake.lock" in behind
    assert "--override-input" not in behind
    ahead = said(newer, older)    # this CLI is the newer one: locking it into the project is the upgrade
    assert f"To build with this one: `nix flake lock --override-input mlbuild git+file://{own}`" in ahead
    assert not flakepin._newer_than({"rev": "f" * 40, "lastModified": 1}, own)   # unknown here, and older by time
    assert flakepin._newer_than({"rev": "f" * 40, "lastModified": 2 ** 40}, own)   # unknown here, later by time


def test_a_pinned_mlbuild_is_read_where_a_runner_s_own_store_keeps_it(tree, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """A project's flake pins this mlbuild; on a runner with a store of its own
    (NIX_CONFIG="store = /tmp/machine-b") `mlbuild build` compared /nix/store/...-source, which is
    not on the host, said the pinned mlbuild 'differs from this mlbuild', then Nix failed on
    "getting status of '/nix/store/...-source/nix/entry.nix'". Its files are read where that store
    keeps them, and one that differs is evaluated there (the derivations `nix build` gives)."""
    from mlbuild import _nix, flakepin

    locked = {"type": "git", "url": "file:///srv/mlbuild", "rev": "b" * 40, "narHash": "sha256-" + "B" * 43 + "="}
    nodes = {"mlbuild": {"locked": locked}, "root": {"inputs": {"mlbuild": "mlbuild"}}}
    root = tree({"p": {"flake.nix": "{ }\n", "flake.lock": json.dumps({"nodes": nodes, "root": "root", "version": 7})},
                 "state": {}}) / "p"
    monkeypatch.setenv("MLBUILD_STATE", str(root.parent / "state"))
    src = f"/nix/store/{'s' * 32}-source"
    copy = root.parent / "machine-b" / src.lstrip("/")
    own = _nix.nix_lib_dir().parent
    for rel in flakepin._COMPARED:
        if (own / rel).is_file():
            copy.joinpath(rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(own / rel, copy / rel)
        else:
            shutil.copytree(own / rel, copy / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    evaluated = json.dumps({"path": src, "args": ["dirty", "overrides", "src", "system"]})
    calls: list[list[str]] = []
    monkeypatch.setattr(_nix, "run_nix", lambda args, **kw: calls.append(args) or subprocess.CompletedProcess(
        args, 0, evaluated, ""))
    monkeypatch.setattr(_nix, "invalid_paths", lambda paths, **kw: [])   # valid in that store
    monkeypatch.delenv("MLBUILD_NIX", raising=False)
    monkeypatch.delenv("NIX_REMOTE", raising=False)
    monkeypatch.setenv("NIX_CONFIG", f"store = {root.parent / 'machine-b'}")
    flakepin._pinned.cache_clear()
    assert flakepin.pinned_entry(root) is None   # the same: this mlbuild's own library, without a word
    assert "differs" not in capsys.readouterr().err
    flakepin._pinned.cache_clear()   # the next command takes the fetch's record (it was evaluated every time)
    assert flakepin.pinned_entry(root) is None and len(calls) == 1
    with open(copy / "nix" / "entry.nix", "a") as f:
        f.write("# another mlbuild\n")
    flakepin._pinned.cache_clear()
    assert flakepin.pinned_entry(root) == copy / "nix" / "entry.nix"
    flakepin._pinned.cache_clear()
