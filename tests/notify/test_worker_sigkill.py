"""A real ``lockbox worker`` process SIGKILLed while a slow mail server holds one of its deliveries, then
restarted: every patient ends up with exactly one notification in their mailbox."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select, update

from lockbox.access.actor import Actor
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.identity.roles import Role
from lockbox.jobs.models import Job
from lockbox.messaging import schemas as msg_schemas
from lockbox.messaging import service as messaging
from lockbox.notify.models import Notification
from tests.factories import make_team, make_user
from tests.notify.conftest import free_port
from tests.serverproc import seeded_database

PATIENTS = 4
ACK_DELAY_S = 1.0


class SlowMailServer:
    """Takes each message at the end of DATA (as an MTA writes its queue file) and acknowledges it only a
    second later: a client killed in that second never sees the 250 for a message that will be delivered,
    the window in which a resend is unavoidable (RFC 5321 section 6.1 accepts duplicates over losses)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[tuple[list[str], Message]] = []
        self.first = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append((list(envelope.rcpt_tos), message_from_bytes(envelope.original_content)))
        self.first.set()
        await asyncio.sleep(ACK_DELAY_S)
        return "250 Message accepted for delivery"

    def mailbox(self) -> dict[str, set[str]]:
        """What each recipient sees: mail clients show one message per Message-ID."""
        seen: dict[str, set[str]] = defaultdict(set)
        for rcpts, m in self.mails:
            for r in rcpts:
                seen[r].add(str(m["Message-ID"]))
        return seen


@pytest.fixture
def mail_server() -> Iterator[SlowMailServer]:
    server = SlowMailServer()
    controller = Controller(server, hostname="127.0.0.1", port=server.port)
    controller.start()
    yield server
    controller.stop()


class WorkerProcess:
    def __init__(self, settings: Settings, smtp_port: int, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKBOX_")}
        env.update({"LOCKBOX_ENV": "test", "LOCKBOX_DATA_DIR": str(settings.data_dir),
                    "LOCKBOX_DATABASE_URL": settings.resolved_database_url, "LOCKBOX_SMTP_HOST": "127.0.0.1",
                    "LOCKBOX_SMTP_PORT": str(smtp_port), "LOCKBOX_SMTP_STARTTLS": "false",
                    "LOCKBOX_SMTP_TIMEOUT_S": "10", "LOCKBOX_SMS_PROVIDER": "none",
                    "LOCKBOX_SMTP_GATEWAY_PORT": "0", "PYTHONUNBUFFERED": "1"})
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lockbox.cli", "worker", "--poll", "0.2", "--no-warm-up"],
                cwd=settings.data_dir, env=env, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def _queue_notifications(db: Database) -> None:
    make_team(db, "team-a")
    doctor = make_user(db, "physician", username="dr.house", care_teams=["team-a"], sign_in=False)
    actor = Actor(user_id=doctor.id, username=doctor.username, role=Role.physician, display_name="Dr House")
    for i in range(PATIENTS):
        patient = make_user(db, "patient", username=f"patient{i}", care_teams=["team-a"], pcp=doctor,
                            email=f"patient{i}@mail.example", sign_in=False)
        db.write_sync(messaging.create_thread, actor=actor, data=msg_schemas.ThreadCreate(
            subject="Results", body="Your results are in.", patient=patient.username, confirm_recipients=True))


def _statuses(db: Database) -> list[str]:
    return db.read_sync(lambda s: sorted(s.scalars(select(Notification.status))))


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_worker_killed_mid_delivery_delivers_each_notification_once(settings: Settings, tmp_path: Path,
                                                                    mail_server: SlowMailServer) -> None:
    with seeded_database(settings) as db:
        _queue_notifications(db)
        assert _statuses(db) == ["queued"] * PATIENTS

    log = tmp_path / "worker.log"
    first = WorkerProcess(settings, mail_server.port, log)
    try:
        assert mail_server.first.wait(60), log.read_text(errors="replace")[-2000:]
        first.kill()  # the mail server holds the message and has not answered yet
    finally:
        first.stop()
    with seeded_database(settings) as db:
        assert "sending" in _statuses(db)  # the kill landed mid-delivery
        # The dead worker's lease would run out after jobs.LEASE_S; let it run out now instead of waiting.
        past = db.runtime.clock.now() - timedelta(seconds=1)
        db.write_sync(lambda s: s.execute(update(Job).where(Job.kind == "notify.deliver", Job.done_at.is_(None))
                                          .values(locked_until=past)))

    second = WorkerProcess(settings, mail_server.port, log)
    try:
        with seeded_database(settings) as db:
            _wait(lambda: _statuses(db) == ["sent"] * PATIENTS, 60, "every notification to be sent")
            _wait(lambda: not db.read_sync(lambda s: list(s.scalars(select(Job).where(
                Job.kind == "notify.deliver", Job.done_at.is_(None))))), 30, "every delivery job to finish")
    finally:
        second.stop()

    mailbox = mail_server.mailbox()
    assert sorted(mailbox) == [f"patient{i}@mail.example" for i in range(PATIENTS)]
    assert all(len(ids) == 1 for ids in mailbox.values()), mailbox  # one notification each, as users see it
    # On the wire at most the one message in flight at the kill went twice, under the same Message-ID.
    assert PATIENTS <= len(mail_server.mails) <= PATIENTS + 1
