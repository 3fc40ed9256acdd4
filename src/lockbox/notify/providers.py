"""Where notifications leave Lockbox: email over SMTP (stdlib smtplib: the worker is a thread, so a
blocking client is the simple fit), SMS and pager through a webhook-style HTTP provider, and a file
provider for the demo. Each send carries a stable idempotency key derived from the notification id.
"""

from __future__ import annotations

import json
import os
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Protocol

import httpx

from lockbox.config import Settings

WEBHOOK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Outbound:
    notification_id: str
    channel: str
    to: str
    subject: str
    text: str
    at: datetime

    def message_id(self, sender: str) -> str:
        # The same Message-ID on every attempt: a resend after a crash is recognisably the same mail.
        domain = sender.rpartition("@")[2] or "lockbox.invalid"
        return f"<{self.notification_id}@{domain}>"


class Provider(Protocol):
    def send(self, out: Outbound) -> str | None:
        """Hand the notification over; returns the provider's id for it. Raises on any failure."""


class SmtpProvider:
    def __init__(self, settings: Settings) -> None:
        self.s = settings

    def send(self, out: Outbound) -> str | None:
        s = self.s
        assert s.smtp_host
        msg = EmailMessage()
        msg["From"] = s.notify_from
        msg["To"] = out.to
        msg["Subject"] = out.subject
        msg["Date"] = format_datetime(out.at)
        msg["Message-ID"] = out.message_id(s.notify_from)
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(out.text)
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_s) as smtp:
            smtp.ehlo()
            if s.smtp_starttls:
                # A clinic's own mail server may have a certificate from a private CA (smtp_ca_file).
                cafile = str(s.smtp_ca_file) if s.smtp_ca_file else None
                smtp.starttls(context=ssl.create_default_context(cafile=cafile))
                smtp.ehlo()
            if s.smtp_user and s.smtp_password:
                smtp.login(s.smtp_user, s.smtp_password)
            smtp.send_message(msg)
        return str(msg["Message-ID"])


class WebhookProvider:
    """POSTs ``{id, channel, to, text}``; the provider is expected to honour ``Idempotency-Key``."""

    def __init__(self, url: str, secret: str | None) -> None:
        self.url = url
        self.secret = secret

    def send(self, out: Outbound) -> str | None:
        headers = {"Idempotency-Key": out.notification_id}
        if self.secret:
            headers["X-Lockbox-Secret"] = self.secret
        r = httpx.post(self.url, json={"id": out.notification_id, "channel": out.channel, "to": out.to,
                                       "text": out.text}, headers=headers, timeout=WEBHOOK_TIMEOUT_S)
        r.raise_for_status()
        try:
            provider_id = r.json().get("id")
        except (ValueError, AttributeError):
            provider_id = None
        return str(provider_id)[:200] if provider_id else None


class FileProvider:
    """The demo's SMS, pager and (without an SMTP host) email: one JSON line per notification."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def send(self, out: Outbound) -> str | None:
        line = json.dumps({"id": out.notification_id, "channel": out.channel, "to": out.to,
                           "subject": out.subject, "text": out.text, "at": out.at.isoformat()}) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        return f"file:{out.notification_id}"


class NotConfigured(Exception):
    """A webhook provider chosen without its URL."""


def outbox_file(settings: Settings) -> Path:
    return settings.data_dir / "notifications.jsonl"


def channel_enabled(settings: Settings, channel: str) -> bool:
    if channel == "sms":
        return settings.sms_provider != "none"
    if channel == "pager":
        return settings.pager_provider != "none"
    return channel == "email"


def provider_for(settings: Settings, channel: str) -> Provider:
    if channel == "email":
        return SmtpProvider(settings) if settings.smtp_host else FileProvider(outbox_file(settings))
    kind, url = ((settings.sms_provider, settings.sms_webhook_url) if channel == "sms"
                 else (settings.pager_provider, settings.pager_webhook_url))
    if kind == "webhook":
        if not url:
            raise NotConfigured(channel)
        return WebhookProvider(url, settings.notify_webhook_secret)
    return FileProvider(outbox_file(settings))


def describe_failure(exc: BaseException) -> str:
    """A PHI-free reason: a status code or an exception type, never a server's message (it may quote us)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"SMTP {exc.smtp_code}"
    return type(exc).__name__
