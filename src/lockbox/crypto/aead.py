"""AES-256-GCM with random 96-bit nonces, as one sealed blob: format byte, nonce, ciphertext and tag.

The associated data names where a blob belongs (thread, record, field), so a blob copied to another
row or column fails to open.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lockbox.crypto.exceptions import DecryptionFailed

FORMAT_V1 = b"\x01"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
# NIST SP 800-38D 8.3: with random nonces, at most 2^32 invocations per key. We stop far earlier.
SEAL_LIMIT = 2**31


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def _check_key(key: bytes) -> None:
    # AESGCM would accept 128- and 192-bit keys too; a short key here is a bug, never a choice.
    if len(key) != KEY_BYTES:
        raise ValueError(f"AES-256-GCM needs a {KEY_BYTES}-byte key, got {len(key)} bytes")


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    _check_key(key)
    nonce = os.urandom(NONCE_BYTES)
    return FORMAT_V1 + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    _check_key(key)
    if len(blob) < 1 + NONCE_BYTES + TAG_BYTES or blob[:1] != FORMAT_V1:
        raise DecryptionFailed("sealed blob is malformed")
    nonce = blob[1 : 1 + NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, blob[1 + NONCE_BYTES :], aad)
    except InvalidTag:
        raise DecryptionFailed("sealed blob failed authentication") from None


def aad_for(*parts: str) -> bytes:
    """Unambiguous associated data: length-prefixed parts, so ("ab","c") never equals ("a","bc")."""
    out = bytearray(b"lockbox/v1")
    for part in parts:
        raw = part.encode()
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)
