"""The gateway listening on a real socket inside the real app, an SMTP sink (aiosmtpd) as the clinic's
outbound mail server, app passwords, and a self-signed certificate made with ``cryptography``."""

from __future__ import annotations

import re
import smtplib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage, Message

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from tests.factories import Api, Person
from tests.gateway.tls import Cert, make_cert
from tests.notify.conftest import CLINIC, PUBLIC_URL, Sink, drain, free_port, smtp

from lockbox.app import create_app
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.jobs.worker import Worker
from lockbox.messaging.models import Thread

__all__ = ["CLINIC", "PUBLIC_URL", "Cert", "Sink", "drain", "smtp"]


@pytest.fixture
def sink(smtp: Sink) -> Sink:
    """The clinic's outbound mail server: the notify tests' own SMTP sink."""
    return smtp


@pytest.fixture
def gateway_port() -> int:
    return free_port()


@pytest.fixture
def settings(settings: Settings, sink: Sink, gateway_port: int) -> Settings:
    return settings.model_copy(update={
        "smtp_host": "127.0.0.1", "smtp_port": sink.port, "smtp_starttls": False, "smtp_timeout_s": 5,
        "clinic_name": CLINIC, "public_url": PUBLIC_URL, "notify_from": "no-reply@riverside.example",
        "notify_max_attempts": 3, "smtp_gateway_port": gateway_port, "smtp_gateway_max_bytes": 2 * 1024 * 1024})


@pytest.fixture
def app(settings: Settings, clock: FrozenClock):  # type: ignore[no-untyped-def]
    return create_app(settings, clock=clock, migrate=False, workers=0)


@pytest.fixture
def worker(db: Database) -> Iterator[Worker]:
    w = Worker(db, name="gateway-test-worker")
    yield w
    w.stop()


def app_password(client: TestClient, who: Person) -> str:
    r = Api(client, who).post("/me/gateway-passwords", json={"label": "Thunderbird"})
    assert r.status_code == 201, r.text
    return str(r.json()["password"])


@dataclass
class Mailer:
    """A staff member's mail client: smtplib against the gateway's real socket."""

    port: int
    username: str
    password: str
    context: ssl.SSLContext | None = None

    def send(self, msg: EmailMessage | Message, to: list[str] | None = None, *, login: bool = True) -> None:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as smtp:
            smtp.ehlo()
            if self.context is not None:
                smtp.starttls(context=self.context)
                smtp.ehlo()
            if login:
                smtp.login(self.username, self.password)
            smtp.send_message(msg, from_addr="house@riverside.example", to_addrs=to)


def mail(subject: str, body: str, to: str = "friend@partner.example", charset: str = "utf-8") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Gregory House <house@riverside.example>"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body, charset=charset)
    return msg


def thread_count(db: Database) -> int:
    return int(db.read_sync(lambda s: s.scalar(select(func.count()).select_from(Thread))))


_LINK = re.compile(r"/secure/([A-Za-z0-9_-]{30,64})")
_CODE = re.compile(r"one-time code is (\d{8})")


def link_of(m: Message) -> str:
    found = _LINK.search(text_of(m))
    assert found, "no secure link in the email"
    return found.group(1)


def code_of(m: Message) -> str:
    found = _CODE.search(text_of(m))
    assert found, "no code in the email"
    return found.group(1)


def text_of(m: Message) -> str:
    payload = m.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    return make_cert(tmp_path_factory.mktemp("tls"))
