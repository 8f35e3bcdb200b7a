"""Image layers and archives without Nix: deterministic tars, hardlinked duplicates, the
docker-archive + OCI layout indexes, labels, and the nixpkgs stream repack."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from mlbuild.image import read_archive
from mlbuild.runtime.image import build_layers, repack
from mlbuild.runtime.oci.archive import MEDIA_LAYER, ArchiveWriter
from mlbuild.runtime.oci.config import labels_for
from mlbuild.runtime.oci.layer import etc_entries, write_layer
from tests.conftest import write_tree

WEIGHTS = bytes(range(256)) * 64


def store(tmp: Path, name: str, h: str, tree: dict[str, Any]) -> str:
    path = tmp / "nix" / "store" / f"{h * 32}-{name}"
    write_tree(path, tree)
    return str(path)


def registration(graph: dict[str, tuple[str, ...]]) -> str:
    return "".join(f"{p}\n\n{len(refs)}\n" + "".join(r + "\n" for r in refs) for p, refs in graph.items())


def fake_image_inputs(tmp: Path, lr: str = "0.003", weights: bytes = WEIGHTS) -> dict[str, Any]:
    """A closure shaped like the digits package's, and the spec the Nix side would write. The
    training output, package and validation paths depend on the weights, as in Nix."""
    interp = store(tmp, "python-3.11", "a", {"bin": {"python3.11": "ELF"}, "lib": {"libpython.so": "x" * 5000}})
    tc = store(tmp, "python-3.11-toolchain", "b", {"lib": {"site.py": "import os\n"}})
    if not os.path.islink(f"{tc}/python"):
        os.symlink(f"{interp}/bin/python3.11", f"{tc}/python")
    h = hashlib.sha256(weights).hexdigest()[0]
    train = store(tmp, "digits-model", chr(ord("c") + int(h, 16) % 10),
                  {"model.safetensors": weights, "params.json": lr, "provenance.json": tc})
    pkg = store(tmp, "digits-package", "p" if h < "8" else "q", {
        "model": {"model.safetensors": weights, "params.json": lr},
        "bin": {"serve": f"#!{tc}/python\n"},
        "manifest.json": json.dumps({"name": "digits", "training": train, "hashes": {
            "model": hashlib.sha256(weights).hexdigest(), "data": "d" * 64, "code": "c" * 64, "toolchain": tc}}),
    })
    os.chmod(f"{pkg}/bin/serve", 0o555)
    val = store(tmp, "digits-validation", "v" if h < "8" else "w", {"metrics.json": json.dumps(
        {"gate": {"passed": True, "checks": [{"metric": "accuracy", "value": 0.9644444, "ok": True}]}})})
    graph = {interp: (), tc: (interp,), train: (tc,), pkg: (tc, train), val: (pkg,)}
    (tmp / f"graph-{h}").write_text(registration(graph))
    return {"version": 1, "backend": "builtin", "name": "digits", "tag": "t1", "package": pkg, "validation": val,
            "training": train, "toolchain": tc, "graphs": [str(tmp / f"graph-{h}")], "entrypoint": [f"{pkg}/bin/serve"],
            "cmd": ["--host", "0.0.0.0", "--port", "8080"], "env": ["HOME=/tmp"], "port": 8080, "uid": 1000,
            "gid": 1000, "user": "mlbuild", "max_layers": 100, "labels": {"team": "ml"}, "system": "x86_64-linux"}


def make_image(spec: dict[str, Any], out: Path) -> Path:
    labels = labels_for(spec["name"], package=spec["package"], validation=spec["validation"],
                        training=spec["training"], extra=spec["labels"])
    with open(out, "wb") as f:
        archive = ArchiveWriter(f)
        build_layers(spec, archive, labels, spec["tag"])
        archive.close()
    return out


def layer_members(archive: Path, index: int) -> list[tarfile.TarInfo]:
    info = read_archive(archive)
    with tarfile.open(archive) as outer:
        data = outer.extractfile("blobs/sha256/" + info.layers[index][0][7:]).read()  # type: ignore[union-attr]
    return tarfile.open(fileobj=io.BytesIO(data)).getmembers()


def test_layer_bytes_ignore_mtimes_and_listing_order(tmp_path: Path) -> None:
    a = store(tmp_path, "pkg", "a", {"z.txt": "z", "a": {"b.txt": "b"}, "m.bin": b"\0" * 3000})
    first = io.BytesIO()
    digest, size = write_layer(first, [a])
    os.utime(f"{a}/z.txt", (10**9, 10**9))
    os.utime(a, (2 * 10**9, 2 * 10**9))
    second = io.BytesIO()
    assert write_layer(second, [a]) == (digest, size)
    assert first.getvalue() == second.getvalue()
    assert digest == "sha256:" + hashlib.sha256(first.getvalue()).hexdigest() and size == len(first.getvalue())
    members = tarfile.open(fileobj=io.BytesIO(first.getvalue())).getmembers()
    rel = a.lstrip("/")
    assert [m.name for m in members] == ["nix", "nix/store", rel, f"{rel}/a", f"{rel}/a/b.txt", f"{rel}/m.bin",
                                         f"{rel}/z.txt"]
    assert {(m.mtime, m.uid, m.gid) for m in members} == {(1, 0, 0)}
    assert size % 512 == 0 and first.getvalue().endswith(b"\0" * 1024)


def test_dedup_writes_identical_files_once(tmp_path: Path) -> None:
    a = store(tmp_path, "model", "a", {"w.bin": WEIGHTS, "log": "a"})
    b = store(tmp_path, "package", "b", {"model": {"w.bin": WEIGHTS}, "log": "b"})
    plain, deduped = io.BytesIO(), io.BytesIO()
    write_layer(plain, [a, b])
    write_layer(deduped, [a, b], dedup=True)
    assert len(plain.getvalue()) - len(deduped.getvalue()) >= len(WEIGHTS) - 1024  # a long link name: PAX
    members = {m.name: m for m in tarfile.open(fileobj=io.BytesIO(deduped.getvalue())).getmembers()}
    link = members[f"{b.lstrip('/')}/model/w.bin"]
    assert link.islnk() and link.linkname == f"{a.lstrip('/')}/w.bin"
    out = tmp_path / "x"
    tarfile.open(fileobj=io.BytesIO(deduped.getvalue())).extractall(out)
    assert (out / b.lstrip("/") / "model" / "w.bin").read_bytes() == WEIGHTS


def test_etc_layer_has_the_user_and_a_sticky_tmp() -> None:
    buf = io.BytesIO()
    write_layer(buf, extras=etc_entries("mlbuild", 1000, 1000))
    members = {m.name: m for m in tarfile.open(fileobj=io.BytesIO(buf.getvalue())).getmembers()}
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
    passwd = tarfile.open(fileobj=io.BytesIO(buf.getvalue())).extractfile("etc/passwd").read().decode()  # type: ignore[union-attr]
    assert "mlbuild:x:1000:1000:" in passwd and passwd.startswith("root:x:0:0:")


def test_archive_indexes_agree(tmp_path: Path) -> None:
    spec = fake_image_inputs(tmp_path)
    archive = make_image(spec, tmp_path / "image.tar")
    info = read_archive(archive)
    assert info.reference == "digits:t1"
    cfg = info.config
    assert cfg["config"]["User"] == "1000:1000" and cfg["config"]["ExposedPorts"] == {"8080/tcp": {}}
    assert cfg["config"]["Entrypoint"] == [f"{spec['package']}/bin/serve"]
    assert cfg["rootfs"]["diff_ids"] == [d for d, _ in info.layers]
    labels = info.labels
    assert labels["mlbuild.model.sha256"] == hashlib.sha256(WEIGHTS).hexdigest()
    assert labels["mlbuild.data.sha256"] == "d" * 64 and labels["mlbuild.code.sha256"] == "c" * 64
    assert labels["mlbuild.validation"] == spec["validation"] and labels["mlbuild.validation.accuracy"] == "0.964444"
    assert labels["org.opencontainers.image.title"] == "digits" and labels["team"] == "ml"
    with tarfile.open(archive) as t:
        names = t.getnames()
        assert names[0] == "oci-layout" and "index.json" in names and names[-1] == "manifest.json"
        index = json.loads(t.extractfile("index.json").read())  # type: ignore[union-attr]
        digest = index["manifests"][0]["digest"]
        manifest_bytes = t.extractfile("blobs/sha256/" + digest[7:]).read()  # type: ignore[union-attr]
        assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == digest
        manifest = json.loads(manifest_bytes)
        assert manifest["annotations"] == labels
        assert [l["digest"] for l in manifest["layers"]] == cfg["rootfs"]["diff_ids"]
        for layer in manifest["layers"]:
            blob = t.extractfile("blobs/sha256/" + layer["digest"][7:]).read()  # type: ignore[union-attr]
            assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"] and len(blob) == layer["size"]
            assert layer["mediaType"] == MEDIA_LAYER
    assert layer_members(archive, 0)[2].name.endswith("-python-3.11")


def test_archive_is_bit_reproducible(tmp_path: Path) -> None:
    spec = fake_image_inputs(tmp_path)
    a = make_image(spec, tmp_path / "a.tar").read_bytes()
    os.utime(spec["package"], (12345, 12345))
    assert make_image(spec, tmp_path / "b.tar").read_bytes() == a


def test_new_weights_change_only_the_model_layer(tmp_path: Path) -> None:
    a = read_archive(make_image(fake_image_inputs(tmp_path), tmp_path / "a.tar"))
    b = read_archive(make_image(fake_image_inputs(tmp_path, lr="0.01", weights=WEIGHTS[::-1]), tmp_path / "b.tar"))
    changed = [i for i, (x, y) in enumerate(zip(a.layers, b.layers)) if x != y]
    assert len(a.layers) == len(b.layers) and changed == [len(a.layers) - 2]  # the model layer; etc on top
    assert a.config["history"][changed[0]]["comment"].startswith("mlbuild model layer")


def test_labels_refuse_a_failed_gate_and_a_manifest_without_hashes(tmp_path: Path) -> None:
    spec = fake_image_inputs(tmp_path)
    Path(spec["validation"], "metrics.json").write_text(json.dumps({"gate": {"passed": False}}))
    with pytest.raises(ValueError, match="does not record a passing gate"):
        labels_for("digits", package=spec["package"], validation=spec["validation"])
    Path(spec["package"], "manifest.json").write_text(json.dumps({"hashes": {"model": "m"}}))
    with pytest.raises(ValueError, match="no data, code hash"):
        labels_for("digits", package=spec["package"])


def nixpkgs_stream(layers: list[bytes], labels: dict[str, str], diff_ids: list[str] | None = None) -> bytes:
    """A docker-archive laid out as nixpkgs' stream_layered_image.py writes it."""
    buf = io.BytesIO()
    sums = diff_ids or [hashlib.sha256(l).hexdigest() for l in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:01+00:00",
                         "config": {"Labels": labels, "User": "1000:1000"},
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{s}" for s in sums]},
                         "history": [{"created": "1970-01-01T00:00:01+00:00", "comment": "x"} for _ in sums]}).encode()
    with tarfile.open(fileobj=buf, mode="w|") as t:
        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        for s, l in zip(sums, layers):
            add(f"{s}/layer.tar", l)
        cname = hashlib.sha256(config).hexdigest() + ".json"
        add(cname, config)
        add("manifest.json", json.dumps([{"Config": cname, "RepoTags": ["digits:mlbuild-stream"],
                                          "Layers": [f"{s}/layer.tar" for s in sums]}]).encode())
    return buf.getvalue()


def test_repack_of_a_nixpkgs_stream_adds_labels_and_tag(tmp_path: Path) -> None:
    layers = []
    for i in range(3):
        b = io.BytesIO()
        write_layer(b, [store(tmp_path, f"p{i}", "abc"[i], {"f": str(i) * (i + 1) * 1000})])
        layers.append(b.getvalue())
    stream = io.BytesIO(nixpkgs_stream(layers, {"mlbuild.package": "/nix/store/x"}))
    with open(tmp_path / "image.tar", "wb") as f:
        archive = ArchiveWriter(f)
        repack(stream, archive, name="digits", tag="abc", labels={"mlbuild.model.sha256": "m" * 64})
        archive.close()
    info = read_archive(tmp_path / "image.tar")
    assert info.reference == "digits:abc"
    assert [d for d, _ in info.layers] == ["sha256:" + hashlib.sha256(l).hexdigest() for l in layers]
    assert info.labels == {"mlbuild.package": "/nix/store/x", "mlbuild.model.sha256": "m" * 64}
    assert info.config["created"] == "1970-01-01T00:00:01Z"


def test_repack_refuses_compressed_layers(tmp_path: Path) -> None:
    # A gzip layer: its digest is not the diff_id (the digest of the uncompressed tar).
    data = nixpkgs_stream([b"\x1f\x8b compressed"], {}, diff_ids=["0" * 64])
    with open(tmp_path / "image.tar", "wb") as f, pytest.raises(ValueError, match="diff_ids"):
        repack(io.BytesIO(data), ArchiveWriter(f), name="d", tag="t", labels={})


def test_labels_for_keeps_mlbuilds_own_labels(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "manifest.json").write_text(json.dumps({"name": "d", "hashes": {"model": "m" * 64, "data": "d" * 64,
                                                                          "code": "c" * 64}}))
    assert labels_for("d", package=str(pkg), extra={"team": "ml"})["team"] == "ml"
    with pytest.raises(ValueError, match="label 'mlbuild.model.sha256' is mlbuild's own"):
        labels_for("d", package=str(pkg), extra={"mlbuild.model.sha256": "spoof"})
