"""Messaging errors a sender can act on."""

from __future__ import annotations

from lockbox.errors import InvalidInput


class UnknownRecipient(InvalidInput):
    code = "unknown_recipient"
    detail = "Some recipients are not users or pools you can write to."


class AttachmentRefused(InvalidInput):
    code = "attachment_refused"
