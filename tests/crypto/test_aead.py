"""AES-256-GCM as the project seals it: Wycheproof vectors through open_sealed, tampering, associated data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from lockbox.crypto import aead
from lockbox.crypto.exceptions import DecryptionFailed

WYCHEPROOF = Path(__file__).parent.parent / "data" / "wycheproof" / "aes_gcm_test.json"


def _vectors() -> list[Any]:
    doc = json.loads(WYCHEPROOF.read_text())
    out = []
    for group in doc["testGroups"]:
        for t in group["tests"]:
            case = {**t, "keySize": group["keySize"], "ivSize": group["ivSize"], "tagSize": group["tagSize"]}
            out.append(pytest.param(case, id=f"tc{t['tcId']}-k{group['keySize']}-iv{group['ivSize']}"))
    return out


VECTORS = _vectors()


def _blob(v: dict[str, Any]) -> bytes:
    return aead.FORMAT_V1 + bytes.fromhex(v["iv"]) + bytes.fromhex(v["ct"]) + bytes.fromhex(v["tag"])


def test_the_vector_file_is_complete() -> None:
    assert len(VECTORS) == json.loads(WYCHEPROOF.read_text())["numberOfTests"] == 316


@pytest.mark.parametrize("v", VECTORS)
def test_wycheproof_through_open_sealed(v: dict[str, Any]) -> None:
    key, aad, msg = bytes.fromhex(v["key"]), bytes.fromhex(v["aad"]), bytes.fromhex(v["msg"])
    if v["keySize"] != 256:
        # Lockbox is AES-256 only: a shorter key is refused before any decryption is tried.
        with pytest.raises(ValueError, match="32-byte key"):
            aead.open_sealed(key, _blob(v), aad)
        return
    if v["ivSize"] != 96 or v["tagSize"] != 128:
        # The sealed format has no room for other nonce or tag sizes: such a blob never opens.
        with pytest.raises(DecryptionFailed):
            aead.open_sealed(key, _blob(v), aad)
        return
    if v["result"] == "valid":
        assert aead.open_sealed(key, _blob(v), aad) == msg
    else:
        with pytest.raises(DecryptionFailed):
            aead.open_sealed(key, _blob(v), aad)


@pytest.mark.parametrize("v", VECTORS)
def test_wycheproof_the_library_underneath_agrees(v: dict[str, Any]) -> None:
    # Every key size: not the project's path, but the primitive it stands on.
    cipher = AESGCM(bytes.fromhex(v["key"]))
    iv, aad = bytes.fromhex(v["iv"]), bytes.fromhex(v["aad"])
    if v["result"] == "valid" and not 8 <= len(iv) <= 128:
        pytest.skip(f"cryptography accepts 8..128-byte nonces only; this valid vector has {len(iv)} bytes")
    ct_tag = bytes.fromhex(v["ct"]) + bytes.fromhex(v["tag"])
    if v["result"] == "valid":
        assert cipher.decrypt(iv, ct_tag, aad) == bytes.fromhex(v["msg"])
    else:
        with pytest.raises((InvalidTag, ValueError)):
            cipher.decrypt(iv, ct_tag, aad)


def test_valid_256_bit_vectors_are_really_exercised() -> None:
    cases = [p.values[0] for p in VECTORS]
    usable = [v for v in cases if v["keySize"] == 256 and v["ivSize"] == 96]
    assert sum(v["result"] == "valid" for v in usable) >= 30
    assert sum(v["result"] == "invalid" for v in usable) >= 20


KEY = bytes(range(32))
AAD = aead.aad_for("message-body", "thread-1", "message-1")


def test_seal_round_trip_and_fresh_nonces() -> None:
    a, b = aead.seal(KEY, b"hello", AAD), aead.seal(KEY, b"hello", AAD)
    assert a != b and a[1:13] != b[1:13]
    assert aead.open_sealed(KEY, a, AAD) == b"hello"
    assert len(a) == 1 + aead.NONCE_BYTES + len(b"hello") + aead.TAG_BYTES


def test_every_flipped_bit_of_a_blob_is_refused() -> None:
    blob = aead.seal(KEY, b"chest pain since noon", AAD)
    for i in range(len(blob) * 8):
        bad = bytearray(blob)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(DecryptionFailed):
            aead.open_sealed(KEY, bytes(bad), AAD)


def test_every_flipped_bit_of_the_associated_data_is_refused() -> None:
    blob = aead.seal(KEY, b"x", AAD)
    for i in range(len(AAD) * 8):
        bad = bytearray(AAD)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(DecryptionFailed):
            aead.open_sealed(KEY, blob, bytes(bad))


def test_truncated_extended_or_rekeyed_blobs_are_refused() -> None:
    blob = aead.seal(KEY, b"results are in", AAD)
    for n in range(len(blob)):
        with pytest.raises(DecryptionFailed):
            aead.open_sealed(KEY, blob[:n], AAD)
    with pytest.raises(DecryptionFailed):
        aead.open_sealed(KEY, blob + b"\x00", AAD)
    with pytest.raises(DecryptionFailed):
        aead.open_sealed(bytes(32), blob, AAD)
    with pytest.raises(DecryptionFailed):
        aead.open_sealed(KEY, b"\x02" + blob[1:], AAD)


def test_short_keys_are_refused_when_sealing() -> None:
    with pytest.raises(ValueError):
        aead.seal(bytes(16), b"x", AAD)


parts = st.lists(st.text(max_size=6), max_size=4).map(tuple)


@given(parts, parts)
def test_aad_for_is_unambiguous(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    assert (aead.aad_for(*a) == aead.aad_for(*b)) == (a == b)


def test_aad_for_separates_the_classic_collisions() -> None:
    assert aead.aad_for("ab", "c") != aead.aad_for("a", "bc")
    assert aead.aad_for("a") != aead.aad_for("a", "")
    assert aead.aad_for("") != aead.aad_for()
    assert aead.aad_for("thread:1", "2") != aead.aad_for("thread:12")
