"""Domain errors: every failure a user may meet, with its code and HTTP status, rendered in one place.

Details never carry PHI: they name fields and rules, not content.
"""

from __future__ import annotations

from typing import Any


class LockboxError(Exception):
    code = "error"
    status = 400
    detail = "The request could not be completed."

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        self.detail = detail or self.detail
        self.extra = extra
        super().__init__(self.detail)

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}

    def __reduce__(self) -> tuple[Any, ...]:
        # Back from the writer process (lockbox.db.writer_process) as raised, whatever a subclass's
        # __init__ takes: pickle would call it with the message alone.
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[LockboxError], args: tuple[Any, ...], state: dict[str, Any]) -> LockboxError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class InvalidInput(LockboxError):
    code = "invalid_input"
    status = 400


class Unauthenticated(LockboxError):
    code = "unauthenticated"
    status = 401
    detail = "Sign-in required."


class InvalidCredentials(LockboxError):
    code = "invalid_credentials"
    status = 401
    detail = "The username, password or authenticator code is not correct."


class Throttled(LockboxError):
    code = "throttled"
    status = 429
    detail = "Too many attempts. Try again later."

    def __init__(self, retry_after_s: int, detail: str | None = None) -> None:
        super().__init__(detail)
        self.retry_after_s = max(1, int(retry_after_s))


class NotFound(LockboxError):
    """Also what a refused access looks like, so existence does not leak."""

    code = "not_found"
    status = 404
    detail = "Not found."


class Forbidden(LockboxError):
    """Only for actions on the caller's own resources (e.g. a role may not start threads)."""

    code = "forbidden"
    status = 403
    detail = "This action is not allowed for your role."


class Conflict(LockboxError):
    code = "conflict"
    status = 409


class ConfirmRecipients(Conflict):
    code = "confirm_recipients"
    detail = "First message to these recipients: confirm them and send again with confirm_recipients."


class ConsentRequired(LockboxError):
    code = "consent_required"
    status = 422
    detail = "The patient has not consented to secure messaging."


class PayloadTooLarge(LockboxError):
    code = "payload_too_large"
    status = 413


class UnsupportedMediaType(LockboxError):
    code = "unsupported_media_type"
    status = 415


class ServiceUnavailable(LockboxError):
    code = "unavailable"
    status = 503
    detail = "The service is busy. Try again."
