"""Identity's own domain errors (the generic ones live in lockbox.errors)."""

from __future__ import annotations

from lockbox.errors import InvalidCredentials, LockboxError


class WeakPassword(LockboxError):
    """Carries zxcvbn's feedback so the person can pick a better one; the password is never echoed."""

    code = "weak_password"
    status = 400

    def __init__(self, reasons: list[str]) -> None:
        super().__init__(" ".join(reasons))


class InvalidEnrolment(InvalidCredentials):
    """Unknown username, wrong, used or expired code: one answer, so accounts cannot be discovered."""

    detail = "The username or enrolment code is not correct, or the code has expired."
