"""A build uses the shared store when it can, and says why when a named store cannot be used."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlbuild.build import store_options, wants_push
from mlbuild.config import load_project
from mlbuild.errors import ConfigError
from mlbuild.store.keys import generate_key_pair
from mlbuild.store.layout import Layout


def project(tmp_path: Path, store: str) -> Path:
    (tmp_path / "mlbuild.toml").write_text(f'[project]\nname = "p"\n\n[store]\n{store}\n')
    return tmp_path


@pytest.fixture(autouse=True)
def _no_store_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MLBUILD_STORE", "MLBUILD_STORE_SECRET_KEY", "MLBUILD_STORE_PUBLIC_KEYS"):
        monkeypatch.delenv(var, raising=False)


def test_a_named_store_that_is_not_there_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = project(tmp_path, f'path = "{tmp_path / "nfs-not-mounted"}"')
    assert store_options(load_project(root)) == []
    err = capsys.readouterr().err
    assert f"mlbuild: warning: building without the shared store: the shared store {tmp_path / 'nfs-not-mounted'} " \
           "is not set up" in err


def test_a_store_with_unusable_keys_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Layout(tmp_path / "store").init()
    root = project(tmp_path, f'path = "{tmp_path / "store"}"\npublic-keys = ["{tmp_path / "missing.pub"}"]')
    assert store_options(load_project(root)) == []
    assert "building without the shared store: cannot read the trusted public key file" in capsys.readouterr().err


def test_a_usable_store_gives_its_options_quietly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Layout(tmp_path / "store").init()
    generate_key_pair("t-1", tmp_path / "t.sec", tmp_path / "t.pub")
    root = project(tmp_path, f'path = "{tmp_path / "store"}"\npublic-keys = ["{tmp_path / "t.pub"}"]')
    opts = store_options(load_project(root))
    assert f"file://{tmp_path / 'store'}" in opts and capsys.readouterr().err == ""


def test_push_must_be_a_boolean(tmp_path: Path) -> None:
    assert wants_push(load_project(project(tmp_path, "push = true"))) is True
    with pytest.raises(ConfigError, match=r"\[store\].push must be true or false \(no quotes\), got 'false'"):
        wants_push(load_project(project(tmp_path, 'push = "false"')))


def test_a_wrong_store_table_is_an_error_not_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It said "building without the shared store", then nix/project.nix failed the build on it."""
    from mlbuild.errors import StoreConfigError

    with pytest.raises(StoreConfigError, match='unknown key "pubic-keys"'):
        store_options(load_project(project(tmp_path, 'pubic-keys = ["x.pub"]')))
    assert "building without" not in capsys.readouterr().err



def test_data_status_reports_a_wrong_store_table(tmp_path: Path) -> None:
    """It read as no store at all: every dataset in the shared store showed as missing."""
    from mlbuild.data.remote import shared_hashes
    from mlbuild.errors import StoreConfigError

    with pytest.raises(StoreConfigError, match=r'\[store\] has unknown key "pubic-keys"'):
        shared_hashes(load_project(project(tmp_path, 'pubic-keys = ["x.pub"]')))
    assert shared_hashes(load_project(project(tmp_path, f'path = "{tmp_path / "none"}"'))) is None


def test_build_push_checks_the_signing_key_before_building(tmp_path: Path) -> None:
    """A key the store does not trust was found only after the build: a whole training wasted in
    CI before `nothing was pushed`. The check `build --push` runs first now includes the key."""
    from mlbuild.build import _check_push_target
    from mlbuild.errors import StoreKeyError

    Layout(tmp_path / "store").init()
    generate_key_pair("store-1", tmp_path / "store.sec", tmp_path / "store.pub")
    generate_key_pair("other-1", tmp_path / "other.sec", tmp_path / "other.pub")
    trusted = f'path = "{tmp_path / "store"}"\npublic-keys = ["{tmp_path / "store.pub"}"]\n'
    _check_push_target(load_project(project(tmp_path, trusted + f'secret-key = "{tmp_path / "store.sec"}"')), True)
    with pytest.raises(StoreKeyError, match="the signing key other-1 .* is not among the store's trusted keys") as e:
        _check_push_target(load_project(project(tmp_path, trusted + f'secret-key = "{tmp_path / "other.sec"}"')), True)
    assert "so nothing was built or pushed" in str(e.value) and str(e.value).endswith("(--no-push)")
    with pytest.raises(StoreKeyError, match="missing.sec"):
        _check_push_target(load_project(project(tmp_path, trusted + f'secret-key = "{tmp_path / "missing.sec"}"')), True)
    # trusted here, but not the key the store names as its own: its readers would refuse it all
    (tmp_path / "store" / "mlbuild" / "public-key").write_text((tmp_path / "other.pub").read_text())
    both = (f'path = "{tmp_path / "store"}"\npublic-keys = ["{tmp_path / "store.pub"}", "{tmp_path / "other.pub"}"]\n'
            f'secret-key = "{tmp_path / "store.sec"}"')
    with pytest.raises(StoreKeyError, match="this machine signs with store-1:.*, not the store's key other-1:"):
        _check_push_target(load_project(project(tmp_path, both)), True)


@pytest.mark.parametrize("asked", [True, False])
def test_a_store_a_build_cannot_push_to_names_no_push(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      asked: bool) -> None:
    """A pull-request CI job on a read-only mount of a project with `[store] push = true`: the
    build was refused with only "do it from a machine that mounts the store read-write", where a
    key problem said "or build without pushing (--no-push)"; a store that is not there, alike."""
    import os

    from mlbuild.build import _check_push_target
    from mlbuild.errors import StoreConfigError, StoreError

    Layout(tmp_path / "store").init()
    generate_key_pair("store-1", tmp_path / "store.sec", tmp_path / "store.pub")
    config = (f'path = "{tmp_path / "store"}"\npublic-keys = ["{tmp_path / "store.pub"}"]\n'
              f'secret-key = "{tmp_path / "store.sec"}"\npush = true')
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path).startswith(str(tmp_path / "store"))
                        else real_access(path, mode))
    with pytest.raises(StoreError) as e:
        _check_push_target(load_project(project(tmp_path, config)), asked)
    said = str(e.value)
    assert said.startswith(f"cannot push: the shared store {tmp_path / 'store'} is not writable")
    assert said.endswith("; or build without pushing (--no-push)" if asked else
                         "; or build without pushing (--no-push, as [store] push = true in mlbuild.toml asks for a push)")
    monkeypatch.setattr(os, "access", real_access)
    with pytest.raises(StoreConfigError) as e:
        _check_push_target(load_project(project(tmp_path, config.replace('"store"', '"gone"').replace(
            f'path = "{tmp_path / "store"}"', f'path = "{tmp_path / "gone"}"'))), True)
    assert "is not an mlbuild store" in str(e.value) and str(e.value).endswith("(--no-push)")


def test_a_substitute_that_failed_points_at_the_store_not_the_network(tmp_path: Path) -> None:
    """A NAR cut short in the shared store: the build ended on Nix's "usually happens due to
    networking issues; try '--fallback'", which `mlbuild build` has no option for."""
    from mlbuild.build import _store_hint
    from mlbuild.errors import BuildError
    from mlbuild.store.config import StoreConfig

    nix_says = ("error: Failed to open archive (Truncated zstd input)\n"
                "error: some substitutes for the outputs of derivation '/nix/store/7vahhwmr80b8d5rpvpr484la6q3vblsq-"
                "ci-package.drv' failed (usually happens due to networking issues); try '--fallback' to build "
                "derivation from source ")
    failed = BuildError("nix build of ci failed", nix_says)
    hinted = _store_hint(failed, StoreConfig(tmp_path / "store"))
    assert str(hinted).startswith(f"nix build of ci failed\n{nix_says}\n")
    assert hinted.log_tail.endswith(
        f"mlbuild: fetching from the shared store {tmp_path / 'store'} failed: an entry there is damaged (not the "
        f"network): `mlbuild store --store {tmp_path / 'store'} verify` names it; `verify --repair` removes it, then "
        f"push it again from a machine that has it (`mlbuild build --push TARGET`)")
    assert _store_hint(failed, None) is failed   # no shared store: Nix's words are all there is
    other = BuildError("nix build of ci failed", "error: builder for 'x.drv' failed with exit code 1")
    assert _store_hint(other, StoreConfig(tmp_path / "store")) is other


def test_a_build_that_built_something_says_when_nothing_trusted_here_signs_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A CI reader given no MLBUILD_STORE_PUBLIC_KEYS (so trusting the machine's own
    /etc/mlbuild/store.pub) retrained every model the store held, without a word."""
    from mlbuild import _nix
    from mlbuild.build import shared_store, warn_store_keys
    from mlbuild.store.admin import init_store
    from mlbuild.store.config import StoreConfig

    monkeypatch.setattr(_nix, "configured_public_keys", lambda: ["cache.nixos.org-1:x"])
    team = generate_key_pair("team-1", tmp_path / "team.sec", tmp_path / "team.pub")
    init_store(StoreConfig(tmp_path / "store", secret_key_file=tmp_path / "team.sec"))
    generate_key_pair("machine-1", tmp_path / "m.sec", tmp_path / "m.pub")
    root = project(tmp_path, f'path = "{tmp_path / "store"}"\npublic-keys = ["{tmp_path / "m.pub"}"]')
    store = shared_store(load_project(root))
    assert store is not None and capsys.readouterr().err == ""   # said once a build built something
    warn_store_keys(store[0])
    err = capsys.readouterr().err
    assert f"the shared store {tmp_path / 'store'} is signed by {team.public}" in err
    assert "which this machine does not trust (trusted here: machine-1)" in err
    assert f"MLBUILD_STORE_PUBLIC_KEYS='{team.public}'" in err
    # trusted by mlbuild's setting, or by Nix's own configuration: quiet
    (tmp_path / "mlbuild.toml").write_text(f'[project]\nname = "p"\n\n[store]\npath = "{tmp_path / "store"}"\n'
                                           f'public-keys = ["{tmp_path / "team.pub"}"]\n')
    store = shared_store(load_project(root))
    assert store is not None
    warn_store_keys(store[0])
    monkeypatch.setattr(_nix, "configured_public_keys", lambda: [str(team.public)])
    store = shared_store(load_project(project(tmp_path, f'path = "{tmp_path / "store"}"\n'
                                                        f'public-keys = ["{tmp_path / "m.pub"}"]')))
    assert store is not None
    warn_store_keys(store[0])
    assert capsys.readouterr().err == ""
