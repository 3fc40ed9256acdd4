"""Password hashing (argon2id), password strength (zxcvbn) and TOTP secrets (RFC 6238 via pyotp)."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from datetime import datetime

import pyotp
import zxcvbn
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
# zxcvbn's own ceiling: its matching grows quickly with length (a 256-character string takes ~0.3 s).
# Only the first 72 characters are judged: more after a hard-to-guess start keeps it hard to guess
# (a long password with an easy start is refused, a rare and harmless false alarm).
_STRENGTH_PREFIX = 72
MIN_STRENGTH_SCORE = 3  # zxcvbn's "safely unguessable": about 10^8 guesses or more
TOTP_DRIFT_STEPS = 1
_TOTP_CODE = re.compile(r"[0-9]{6}")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def weak_password_reasons(password: str, *, user_inputs: Iterable[str] = ()) -> list[str]:
    """Why ``password`` is refused (empty when it is acceptable); never quotes the password itself.

    ``user_inputs`` are the account's own names, which zxcvbn treats as the first words to guess.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        return [f"Use at least {MIN_PASSWORD_LENGTH} characters."]
    if len(password) > MAX_PASSWORD_LENGTH:
        return [f"Use at most {MAX_PASSWORD_LENGTH} characters."]
    words: list[str] = []
    for value in user_inputs:
        words += [value, re.sub(r"[^0-9A-Za-z]", "", value), *re.split(r"[^0-9A-Za-z]+", value)]
    result = zxcvbn.zxcvbn(password[:_STRENGTH_PREFIX], user_inputs=[w for w in words if len(w) > 1])
    if result["score"] >= MIN_STRENGTH_SCORE:
        return []
    feedback = result["feedback"]
    reasons = ["This password would be easy to guess."]
    if feedback.get("warning"):
        reasons.append(feedback["warning"])
    reasons += feedback.get("suggestions", [])
    return reasons


def new_totp_secret() -> str:
    return pyotp.random_base32(32)  # 160 bits, as RFC 4226 recommends


def seal_totp_secret(keyring: Keyring, user_id: str, secret: str) -> bytes:
    return keyring.seal_secret(TOTP_PURPOSE, user_id, secret.encode())


def open_totp_secret(keyring: Keyring, user_id: str, sealed: bytes) -> str:
    return keyring.open_secret(TOTP_PURPOSE, user_id, sealed).decode()


def totp_step(secret: str, code: str, *, at: datetime) -> int | None:
    """The RFC 6238 time step ``code`` was generated for, within one step of ``at``, or None.

    Callers compare the step with the last one accepted, so each code signs in at most once.
    """
    code = code.replace(" ", "")
    if not _TOTP_CODE.fullmatch(code):
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(at)
    matched = None
    for step in range(current - TOTP_DRIFT_STEPS, current + TOTP_DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            matched = step
    return matched
