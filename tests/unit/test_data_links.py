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
