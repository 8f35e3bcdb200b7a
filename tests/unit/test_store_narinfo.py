"""Narinfo parsing, rendering and fingerprints, against a narinfo and signature Nix 2.8 wrote."""

from __future__ import annotations

import base64

import pytest

from mlbuild.errors import StoreCorruptError
from mlbuild.store.keys import check_signatures, parse_public_key, parse_secret_key
from mlbuild.store.narinfo import NarInfo, fingerprint, format_hash, hash_part, parse_hash

# Written by `nix copy --to 'file://...?compression=zstd&secret-key=sec'` (Nix 2.8.0), with the
# key pair from `nix-store --generate-binary-cache-key test-1 sec pub` below (a test-only key).
NIX_NARINFO = """\
StorePath: /nix/store/pg2mqhhv27r3z18jrkv1v2wvajjmckln-exp-b
URL: nar/0hsi3pnx2psv9ap9cg7wvjjxq0nr8339rk6x0xfiwrplcixyr333.nar.zst
Compression: zstd
FileHash: sha256:0hsi3pnx2psv9ap9cg7wvjjxq0nr8339rk6x0xfiwrplcixyr333
FileSize: 130
NarHash: sha256:1ay7ccbqx2apmsvcc3xbn6jxwwk838p1gmj4as8cl0cwdvd5scq9
NarSize: 168
References: zy46jlqybb7b25ahrl9x79531h3v5i45-exp-a
Deriver: zy47ppkqnmm6z53pqbwbpjic5lk33w6q-exp-b.drv
Sig: test-1:3vHz6HvBfOwBgTQMreCTXTAuzm8C7q+3sBxbCt1ZV+8W3WowtpznSDFbj3jkWtNbaF+GKpjHUjtMUnmJdIjaCg==
"""
NIX_SECRET = "test-1:Z+PvAed0n9wAxorkb91kNGk7xShFMtsV0eCJYTiPBlxouYWbFW5OsDhH6fMMF0GJmcx2ixODJThyWalOOzYqCA=="
NIX_PUBLIC = "test-1:aLmFmxVuTrA4R+nzDBdBiZnMdosTgyU4clmpTjs2Kgg="
# `nix path-info --json` printed this (SRI) for the same path.
SRI = "sha256-CTNd2m6cAcqQVkTWFy4aaHLepbGrD8a2rleJjhdjx6s="


def test_parse_render_round_trip() -> None:
    info = NarInfo.parse(NIX_NARINFO)
    assert info.store_path.endswith("-exp-b")
    assert info.references == ("zy46jlqybb7b25ahrl9x79531h3v5i45-exp-a",)
    assert info.deriver == "zy47ppkqnmm6z53pqbwbpjic5lk33w6q-exp-b.drv"
    assert info.nar_size == 168 and info.file_size == 130 and info.compression == "zstd"
    assert info.render() == NIX_NARINFO
    assert info.hash_part == "pg2mqhhv27r3z18jrkv1v2wvajjmckln"
    assert info.reference_paths == ["/nix/store/zy46jlqybb7b25ahrl9x79531h3v5i45-exp-a"]


def test_fingerprint_matches_nix_signature() -> None:
    info = NarInfo.parse(NIX_NARINFO)
    assert info.fingerprint() == (b"1;/nix/store/pg2mqhhv27r3z18jrkv1v2wvajjmckln-exp-b;"
                                  b"sha256:1ay7ccbqx2apmsvcc3xbn6jxwwk838p1gmj4as8cl0cwdvd5scq9;168;"
                                  b"/nix/store/zy46jlqybb7b25ahrl9x79531h3v5i45-exp-a")
    assert check_signatures(info.sigs, info.fingerprint(), (parse_public_key(NIX_PUBLIC),))
    # ed25519 is deterministic: our signature is byte-identical to Nix's.
    assert parse_secret_key(NIX_SECRET).sign(info.fingerprint()) == info.sigs[0]


def test_any_change_breaks_the_signature() -> None:
    info = NarInfo.parse(NIX_NARINFO)
    keys = (parse_public_key(NIX_PUBLIC),)
    for changed in (NIX_NARINFO.replace("NarSize: 168", "NarSize: 169"),
                    NIX_NARINFO.replace("References: zy46", "References: zy47"),
                    NIX_NARINFO.replace("1ay7ccbq", "1ay7ccbr")):
        other = NarInfo.parse(changed)
        assert not check_signatures(other.sigs, other.fingerprint(), keys)
    assert not check_signatures((), info.fingerprint(), keys)


def test_hash_forms_agree() -> None:
    digest = parse_hash(SRI)
    assert format_hash(digest) == "sha256:1ay7ccbqx2apmsvcc3xbn6jxwwk838p1gmj4as8cl0cwdvd5scq9"
    assert parse_hash("sha256:" + digest.hex()) == digest
    assert parse_hash("sha256:" + base64.b64encode(digest).decode()) == digest
    with pytest.raises(ValueError):
        parse_hash("md5:abc")


def test_fingerprint_sorts_references_and_takes_basenames() -> None:
    a, b = "b" * 32 + "-x", "a" * 32 + "-y"
    fp = fingerprint("/nix/store/" + "c" * 32 + "-z", SRI, 1, [a, "/nix/store/" + b])
    assert fp.endswith(f";1;/nix/store/{b},/nix/store/{a}".encode())


@pytest.mark.parametrize("text", ["garbage", "StorePath: /nix/store/x\n", NIX_NARINFO.replace("NarHash: sha256:1ay7", "NarHash: sha256:!!!")])
def test_bad_narinfo_names_the_fix(text: str) -> None:
    with pytest.raises(StoreCorruptError, match="verify --repair"):
        NarInfo.parse(text, "x.narinfo")


def test_hash_part() -> None:
    assert hash_part("/nix/store/" + "a" * 32 + "-n") == "a" * 32
    with pytest.raises(ValueError):
        hash_part("/nix/store/short")


def test_unknown_fields_kept_out_of_render() -> None:
    info = NarInfo.parse(NIX_NARINFO + "System: x86_64-linux\n")
    assert info.extra == (("System", "x86_64-linux"),)
    assert info == NarInfo.parse(NIX_NARINFO)


def test_blake3_fields_round_trip_and_are_signed_with_the_fingerprint() -> None:
    from dataclasses import replace

    key = parse_secret_key(NIX_SECRET)
    info = replace(NarInfo.parse(NIX_NARINFO), b3="blake3:" + "ab" * 32)
    info = replace(info, b3_sigs=(key.sign(info.b3_message()),))
    back = NarInfo.parse(info.render())
    assert back == info and back.b3 == info.b3 and back.b3_sigs == info.b3_sigs
    keys = (parse_public_key(NIX_PUBLIC),)
    assert check_signatures(back.b3_sigs, back.b3_message(), keys)
    # The B3 signature covers the path's fingerprint: moved to another NarHash, it no longer holds.
    other = replace(back, nar_hash=format_hash(bytes(32)))
    assert not check_signatures(other.b3_sigs, other.b3_message(), keys)
    assert not check_signatures(back.sigs, back.b3_message(), keys)   # and a Sig is not a B3 Sig


@pytest.mark.parametrize("value", ["sha256:" + "0" * 64, "blake3:xyz", "blake3:" + "A" * 64])
def test_bad_blake3_field_names_the_fix(value: str) -> None:
    with pytest.raises(StoreCorruptError, match="MlbuildB3.*verify --repair"):
        NarInfo.parse(NIX_NARINFO + f"MlbuildB3: {value}\n", "x.narinfo")
