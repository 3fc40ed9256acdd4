"""SMS and pager providers (a real HTTP webhook receiver, the demo's file), SMTP AUTH, and the pages and
escalations routing queues: PHI-free, pages through quiet hours, escalations not."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from fastapi.testclient import TestClient
from sqlalchemy import select

from lockbox.clock import FrozenClock
from lockbox.db import Database
from lockbox.jobs import service as jobs
from lockbox.jobs.worker import Worker
from lockbox.notify.models import Notification, NotifyPreference
from lockbox.notify.providers import outbox_file
from tests.clinic import Clinic
from tests.factories import Api
from tests.notify.conftest import CLINIC, PUBLIC_URL, Sink, drain, free_port, set_contact
from tests.notify.test_email import assert_phi_free, doctor_writes, notifications


class Receiver(BaseHTTPRequestHandler):
    """A webhook SMS provider: records each POST and answers with the next queued status."""

    posts: list[tuple[dict[str, str], dict[str, Any]]]
    statuses: list[int]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
        status = self.statuses.pop(0) if self.statuses else 200
        payload = json.dumps({"id": f"prov-{len(self.posts)}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[type[Receiver]]:
    handler = type("R", (Receiver,), {"posts": [], "statuses": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.url = f"http://127.0.0.1:{server.server_address[1]}/sms"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler
    server.shutdown()
    server.server_close()


def test_sms_through_the_webhook_provider(client: TestClient, clinic: Clinic, db: Database, worker: Worker,
                                          webhook: Any, clock: FrozenClock) -> None:
    s = db.runtime.settings
    s.sms_provider, s.sms_webhook_url, s.notify_webhook_secret = "webhook", webhook.url, "s3cret-shared"
    set_contact(db, clinic.patient, phone="+15550142")
    webhook.statuses.append(503)  # the provider is briefly down
    thread_id = doctor_writes(client, clinic)
    drain(worker)
    [n] = notifications(db)
    assert (n.channel, n.status, n.reason) == ("sms", "queued", "failed: HTTP 503")
    clock.advance(2.5)
    drain(worker)
    assert len(webhook.posts) == 2
    headers, body = webhook.posts[-1]
    assert headers["x-lockbox-secret"] == "s3cret-shared"
    assert headers["idempotency-key"] == n.id == body["id"]  # the same key on the retry
    assert webhook.posts[0][0]["idempotency-key"] == n.id
    assert (body["channel"], body["to"]) == ("sms", "+15550142")
    assert body["text"] == f"{CLINIC}: you have a new secure message. Sign in to read it: {PUBLIC_URL}/"
    assert_phi_free(json.dumps(body), thread_id)
    [n] = notifications(db)
    assert (n.status, n.provider_message_id, n.attempts) == ("sent", "prov-2", 2)


def test_sms_opt_out_is_suppressed(client: TestClient, clinic: Clinic, db: Database, worker: Worker,
                                   webhook: Any) -> None:
    db.runtime.settings.sms_provider, db.runtime.settings.sms_webhook_url = "webhook", webhook.url
    set_contact(db, clinic.patient, phone="+15550142")
    Api(client, clinic.patient).post("/me/consent", json={"scope": "sms", "status": "withdrawn",
                                                          "terms_version": "2026-01"})
    thread_id = doctor_writes(client, clinic)
    # Routing's pages and escalations never reach a patient either: no pager, and SMS is opted out.
    for kind in ("notify.page", "notify.escalation"):
        db.write_sync(jobs.enqueue, kind=kind, payload={"user_id": clinic.patient.id, "thread_id": thread_id})
    drain(worker)
    assert webhook.posts == []
    rows = notifications(db)
    assert sorted((n.kind, n.status, n.reason) for n in rows) == [
        ("escalation", "suppressed", "suppressed: opted out"), ("new_message", "suppressed", "suppressed: opted out"),
        ("page", "suppressed", "suppressed: opted out")]
    assert _file_lines(db) == []


def _file_lines(db: Database) -> list[dict[str, Any]]:
    path = outbox_file(db.runtime.settings)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_page_goes_through_quiet_hours_escalation_waits(client: TestClient, clinic: Clinic, db: Database,
                                                        worker: Worker, clock: FrozenClock) -> None:
    clock._now = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)  # 04:00 UTC, inside the nurse's quiet hours
    set_contact(db, clinic.nurse, phone="+15550177")
    db.write_sync(_quiet, user_id=clinic.nurse.id)
    thread_id = Api(client, clinic.patient).post("/threads", json={"subject": "ZEBRA-SUBJECT",
                                                                   "body": "ZEBRA-BODY about my refill"}).json()["id"]
    db.write_sync(jobs.enqueue, kind="notify.page",
                  payload={"user_id": clinic.nurse.id, "thread_id": thread_id, "reason": "emergency"})
    db.write_sync(jobs.enqueue, kind="notify.escalation",
                  payload={"user_id": clinic.nurse.id, "thread_id": thread_id, "tier": 1})
    drain(worker)
    [line] = _file_lines(db)
    assert (line["channel"], line["to"]) == ("pager", "+15550177")
    assert line["text"] == f"{CLINIC}: you are being paged. Sign in now: {PUBLIC_URL}/"
    assert_phi_free(json.dumps(line), thread_id, "refill", "emergency")
    by_kind = {n.kind: n for n in notifications(db)}
    assert by_kind["page"].status == "sent"
    assert (by_kind["escalation"].channel, by_kind["escalation"].status) == ("sms", "queued")
    assert by_kind["escalation"].send_after == datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
    clock.advance(2 * 3600)
    drain(worker)
    assert [x["text"] for x in _file_lines(db)][1] == (
        f"{CLINIC}: a secure message is waiting for your response. Sign in: {PUBLIC_URL}/")


def _quiet(session: Any, *, user_id: str) -> None:
    session.add(NotifyPreference(user_id=user_id, quiet_from=time(22, 0), quiet_to=time(6, 0), timezone="UTC",
                                 updated_at=datetime(2026, 1, 1, tzinfo=UTC)))


def test_escalation_by_email_without_a_phone_and_nothing_for_the_unreachable(
        clinic: Clinic, db: Database, worker: Worker, smtp: Sink) -> None:
    set_contact(db, clinic.doctor, email="house@riverside.example")
    db.write_sync(jobs.enqueue, kind="notify.escalation", payload={"user_id": clinic.doctor.id, "tier": 2})
    db.write_sync(jobs.enqueue, kind="notify.page", payload={"user_id": clinic.nurse.id, "thread_id": "gone"})
    db.write_sync(jobs.enqueue, kind="notify.page", payload={"user_id": "no-such-user"})
    drain(worker)
    [(rcpt, mail)] = smtp.mails
    assert rcpt == ["house@riverside.example"]
    assert mail["Subject"] == f"A secure message at {CLINIC} is waiting for you"
    assert [n.user_id for n in notifications(db)] == [clinic.doctor.id]
    assert db.read_sync(jobs.pending_count) == 0 and db.read_sync(jobs.dead_letters) == []


def test_pager_off_falls_back_and_channel_off_is_recorded(client: TestClient, clinic: Clinic, db: Database,
                                                          worker: Worker) -> None:
    s = db.runtime.settings
    s.pager_provider, s.sms_provider = "none", "none"
    set_contact(db, clinic.patient, phone="+15550142")
    set_contact(db, clinic.nurse, phone="+15550177", email="nina@riverside.example")
    doctor_writes(client, clinic)
    db.write_sync(jobs.enqueue, kind="notify.page", payload={"user_id": clinic.nurse.id})
    drain(worker)
    rows = {n.user_id: n for n in notifications(db)}
    assert (rows[clinic.patient.id].status, rows[clinic.patient.id].reason) == ("suppressed",
                                                                                 "suppressed: channel off")
    assert (rows[clinic.nurse.id].channel, rows[clinic.nurse.id].status) == ("email", "sent")


class _Auth:
    def __init__(self) -> None:
        self.logins: list[str] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == b"mail-pass"
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_auth_when_credentials_are_set(client: TestClient, clinic: Clinic, db: Database,
                                            worker: Worker) -> None:
    sink, auth = Sink(port=free_port()), _Auth()
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port, authenticator=auth, auth_required=True,
                            auth_require_tls=False)
    controller.start()
    try:
        s = db.runtime.settings
        s.smtp_port, s.smtp_user, s.smtp_password = sink.port, "lockbox", "mail-pass"
        set_contact(db, clinic.patient, email="pat@mail.example")
        doctor_writes(client, clinic)
        drain(worker)
    finally:
        controller.stop()
    assert auth.logins == ["lockbox"] and len(sink.mails) == 1
    assert db.read_sync(lambda s: s.scalar(select(Notification.status))) == "sent"
