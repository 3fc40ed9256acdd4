"""The only words a notification may say. Fixed per kind and channel: no subject, sender, thread, patient
or urgency detail ever reaches an inbox, a phone or a pager, whatever triggered it."""

from __future__ import annotations

from dataclasses import dataclass

from lockbox.config import Settings


@dataclass(frozen=True)
class Text:
    subject: str
    body: str
    short: str  # SMS and pager


def render(kind: str, settings: Settings) -> Text:
    clinic = settings.clinic_name
    # The plain sign-in address: an opaque deep link would still have to send the reader through sign-in.
    link = settings.public_url.rstrip("/") + "/"
    if kind == "page":
        return Text(
            subject=f"Page from {clinic}",
            body=f"You are being paged by {clinic}.\n\nSign in to the secure message center now: {link}\n",
            short=f"{clinic}: you are being paged. Sign in now: {link}",
        )
    if kind == "escalation":
        return Text(
            subject=f"A secure message at {clinic} is waiting for you",
            body=f"A secure message at {clinic} is waiting for a response.\n\nSign in to see it: {link}\n",
            short=f"{clinic}: a secure message is waiting for your response. Sign in: {link}",
        )
    if kind == "delivery_failed":
        return Text(
            subject=f"A secure message could not be delivered ({clinic})",
            body=("A secure message you sent could not be delivered to its external recipient.\n\n"
                  f"Sign in to see it: {link}\n"),
            short=f"{clinic}: a secure message you sent could not be delivered. Sign in to see it: {link}",
        )
    return Text(
        subject=f"New secure message from {clinic}",
        body=(f"You have a new secure message from {clinic}.\n\nSign in to read it: {link}\n\n"
              "For your privacy, this email does not contain the message. Do not reply to this email.\n"
              "If this is an emergency, call 911 or go to the nearest emergency department.\n"),
        short=f"{clinic}: you have a new secure message. Sign in to read it: {link}",
    )
