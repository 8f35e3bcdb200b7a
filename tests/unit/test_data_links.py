"""Which symlinks a dataset may hold: the store keeps links as links, so one must point inside."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlbuild.data.importer import _count, check_link
from mlbuild.errors import DataError


@pytest.mark.parametrize("target", ["a.csv", "sub/b.csv", "../d/a.csv", "./x/../a.csv"])
def test_links_inside_the_dataset_are_kept(target: str) -> None:
    check_link("/data/d", "/data/d/link.csv", target)


@pytest.mark.parametrize(("link", "target", "message"), [
    ("/data/d/l", "/data/d/a.csv", "/data/d/l is a symlink to /data/d/a.csv, an absolute path: in the Nix store it "
                                   "would point at nothing; make it relative to its folder"),
    ("/data/d/l", "/mnt/a.csv", "an absolute path: in the Nix store it would point at nothing; copy the file into /data/d"),
    ("/data/d/l", "../other/a.csv", "/data/d/l is a symlink to ../other/a.csv, outside /data/d"),
    ("/data/d/sub/l", "../../d2/a.csv", "outside /data/d: in the Nix store it would point at nothing"),
    ("/data/d/l", "..", "outside /data/d"),
])
def test_links_that_would_dangle_in_the_store_are_refused(link: str, target: str, message: str) -> None:
    with pytest.raises(DataError, match=message.replace(".", r"\.")):
        check_link("/data/d", link, target)


def test_the_slow_path_checks_links_too(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.csv").write_text("1\n")
    (tmp_path / "d" / "sub" / "ok").symlink_to("../a.csv")
    assert _count(tmp_path / "d") == (1, 2)
    (tmp_path / "d" / "sub" / "dir-link").symlink_to(tmp_path)
    with pytest.raises(DataError, match="dir-link is a symlink to .*an absolute path"):
        _count(tmp_path / "d")


def test_a_pipe_is_named_by_the_nar_writer(tmp_path: Path) -> None:
    # Both import paths and `data status` turn this into their message about the file.
    import os

    from mlbuild.nar import NotStorableError, nar_sha256

    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "d" / "pipe")
    with pytest.raises(NotStorableError) as e:
        nar_sha256(str(tmp_path / "d"))
    assert e.value.path == str(tmp_path / "d" / "pipe") and isinstance(e.value, ValueError)


def test_status_names_a_link_data_add_would_refuse_not_a_change_to_pin(tmp_path: Path) -> None:
    """A link out of the folder made `data status` say "changed; `mlbuild data add` pins the new
    version", which then refused it."""
    import json

    from mlbuild.config import load_project
    from mlbuild.data.datasets import status
    from mlbuild.nar import nar_sha256

    (tmp_path / "data" / "d").mkdir(parents=True)
    (tmp_path / "data" / "d" / "a.csv").write_text("1\n")
    (tmp_path / "mlbuild.toml").write_text('[project]\nname = "p"\n[datasets.d]\npath = "data/d"\n')
    pin = {"sha256": nar_sha256(str(tmp_path / "data" / "d")), "kind": "path"}
    (tmp_path / "mlbuild.lock").write_text(json.dumps({"version": 1, "datasets": {"d": pin}, "interpreter": {"snapshot": {}}}))
    (tmp_path / "data" / "d" / "host").symlink_to("/etc/hostname")
    (row,) = status(load_project(tmp_path), shared=None)
    assert (row.state, row.detail) == ("unstorable", f"{tmp_path}/data/d/host is a symlink to /etc/hostname, an absolute "
                                       f"path: in the Nix store it would point at nothing; copy the file into "
                                       f"{tmp_path}/data/d")
    (tmp_path / "data" / "d" / "host").unlink()
    (tmp_path / "data" / "d" / "ok").symlink_to("a.csv")   # a link data add keeps: a change to pin
    (row,) = status(load_project(tmp_path), shared=None)
    assert row.state == "missing" and "holds other files than the pinned version" in row.detail, row   # no pin here
