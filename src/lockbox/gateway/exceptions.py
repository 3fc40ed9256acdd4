"""Gateway errors: why a mail is refused (an SMTP reply and an audit reason), and the external recipient's
refusals on the secure pages."""

from __future__ import annotations

from lockbox.errors import Conflict, LockboxError


class Bounce(Exception):
    """Raised before anything is stored; the sender's mail client shows ``reply`` as the bounce.
    The text names rules, never content or addresses."""

    def __init__(self, reply: str, reason: str) -> None:
        super().__init__(reply, reason)  # both, so it comes back from the writer process as raised
        self.reply = reply
        self.reason = reason  # an identifier, for the audit row


MALFORMED = "550 5.6.0 The message is not well-formed MIME; nothing was stored. Send it again from your mail client."


class LinkExpired(LockboxError):
    code = "expired"
    status = 410
    detail = "This secure link has expired. Ask the sender to send the message again."


class CodeRefused(LockboxError):
    code = "invalid_code"
    status = 401
    detail = "That code is not right, or it has expired. Check the latest email from us, or ask for a new code."


class NotVerified(LockboxError):
    code = "not_verified"
    status = 401
    detail = "Verify with a one-time code first."


class DeliveryExpired(Conflict):
    code = "link_expired"
    detail = ("This secure link has expired, so it cannot be sent again. Send the message again as a new "
              "secure email.")


class TooManyResends(LockboxError):
    code = "too_many_resends"
    status = 429
    detail = ("The link was sent again as many times as allowed. Check the recipient's address with them, then "
              "send the message again as a new secure email.")
