"""Password hashing (argon2id), password strength (zxcvbn) and TOTP secrets (RFC 6238 via pyotp)."""

from __future__ import annotations

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from lockbox.crypto.keys import Keyring

# argon2-cffi's RFC 9106 "low memory" profile: argon2id, t=3, m=64 MiB, p=4.
_hasher = PasswordHasher.from_parameters(__import__("argon2").profiles.RFC_9106_LOW_MEMORY)
# Verified against when the username is unknown, so both paths cost one argon2 verification.
DUMMY_HASH = _hasher.hash("lockbox dummy password for timing")

TOTP_PURPOSE = "totp-secret"
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 256


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_totp_secret() -> str:
    return pyotp.random_base32(32)  # 160 bits, as RFC 4226 recommends


def seal_totp_secret(keyring: Keyring, user_id: str, secret: str) -> bytes:
    return keyring.seal_secret(TOTP_PURPOSE, user_id, secret.encode())


def open_totp_secret(keyring: Keyring, user_id: str, sealed: bytes) -> str:
    return keyring.open_secret(TOTP_PURPOSE, user_id, sealed).decode()
