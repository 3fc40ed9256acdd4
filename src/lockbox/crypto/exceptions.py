"""Crypto failures. Their messages name keys and versions, never data."""

from __future__ import annotations


class CryptoError(Exception):
    pass


class DecryptionFailed(CryptoError):
    """Tampered, moved or truncated ciphertext, or the wrong key: indistinguishable on purpose."""


class KeyFileError(CryptoError):
    pass


class KeyExhausted(CryptoError):
    """A key reached its seal budget under the random-nonce limit; rotate before using it again."""
