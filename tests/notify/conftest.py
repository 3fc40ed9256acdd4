"""A real SMTP server on a socket (aiosmtpd), settings that send through it, and an app whose jobs run
only when a test runs a worker."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import update

from lockbox.app import create_app
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.identity.models import User
from lockbox.jobs.worker import Worker
from tests.factories import Person

CLINIC = "Riverside Family Medicine"
PUBLIC_URL = "https://lockbox.riverside.example"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sink:
    """What the SMTP server received: envelope recipients and the parsed message."""

    port: int = 0
    mails: list[tuple[list[str], Message]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append((list(envelope.rcpt_tos), message_from_bytes(envelope.original_content)))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp() -> Iterator[Sink]:
    sink = Sink(port=free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    yield sink
    controller.stop()


@pytest.fixture
def settings(settings: Settings, smtp: Sink) -> Settings:
    return settings.model_copy(update={
        "smtp_host": "127.0.0.1", "smtp_port": smtp.port, "smtp_starttls": False, "smtp_timeout_s": 5,
        "clinic_name": CLINIC, "public_url": PUBLIC_URL, "notify_from": "no-reply@riverside.example",
        "notify_max_attempts": 3})


@pytest.fixture
def app(settings: Settings, clock: FrozenClock):  # type: ignore[no-untyped-def]
    return create_app(settings, clock=clock, migrate=False, workers=0)


@pytest.fixture
def worker(db: Database) -> Iterator[Worker]:
    w = Worker(db, name="test-worker")
    yield w
    w.stop()


def drain(worker: Worker) -> int:
    ran = 0
    while n := worker.run_once():
        ran += n
    return ran


def set_contact(db: Database, person: Person, *, email: str | None = None, phone: str | None = None) -> None:
    db.write_sync(lambda s: s.execute(update(User).where(User.id == person.id).values(email=email, phone=phone)))
