"""When the link email to an external recipient fails for good the sender is told (a pushed event and a
PHI-free notification), staff see each delivery's state, and a new link replaces the old one; over real
sockets (the gateway, an SMTP sink, a closed port) on both backends."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select, update
from tests.clinic import Clinic
from tests.conftest import Events
from tests.factories import Api
from tests.gateway.conftest import Sink, drain, link_of, mail, text_of
from tests.gateway.test_gateway import FRIEND, SECRETS, mailer
from tests.notify.conftest import free_port, set_contact
from tests.web.helpers import csrf_of, use_session, visible_text

from lockbox.audit.models import AuditRow
from lockbox.clock import FrozenClock
from lockbox.db import Database
from lockbox.gateway.models import SecureDelivery, SecureNotice
from lockbox.gateway.service import MAX_RESENDS
from lockbox.jobs.worker import Worker
from lockbox.notify.models import Notification

SUBJECT = "[secure] Scan results ZEBRA-SUBJECT-5120"
BODY = "Pat Jones (MRN 100234): ZEBRA-BODY-8830 the melanoma scan is clear."
HOUSE_EMAIL = "house@riverside.example"


def send_external(client: TestClient, clinic: Clinic, gateway_port: int) -> str:
    mailer(client, clinic, gateway_port).send(mail(SUBJECT, BODY), to=[FRIEND])
    [t] = Api(client, clinic.doctor).get("/threads").json()
    assert t["kind"] == "external"
    return str(t["id"])


def fail_for_good(db: Database, worker: Worker, clock: FrozenClock) -> None:
    """Every attempt the job has, against a port nobody listens on (the notify tests' way)."""
    for _ in range(db.runtime.settings.notify_max_attempts):
        drain(worker)
        clock.advance(30)


def deliveries(client: TestClient, clinic: Clinic, thread_id: str) -> list[dict[str, Any]]:
    r = Api(client, clinic.doctor).get(f"/threads/{thread_id}/external")
    assert r.status_code == 200, r.text
    return list(r.json())


def test_failed_link_tells_the_sender_and_a_new_link_replaces_the_old(
        client: TestClient, clinic: Clinic, db: Database, worker: Worker, sink: Sink, gateway_port: int,
        clock: FrozenClock, events: Events) -> None:
    set_contact(db, clinic.doctor, email=HOUSE_EMAIL)
    thread_id = send_external(client, clinic, gateway_port)
    [d] = deliveries(client, clinic, thread_id)
    assert (d["recipient"], d["link_status"], d["verified_at"], d["resends"]) == (
        "fr***@partner.example", "queued", None, 0)

    outbound = db.runtime.settings.smtp_port
    db.runtime.settings.smtp_port = free_port()  # the clinic's mail server is gone
    fail_for_good(db, worker, clock)
    [notice] = db.read_sync(lambda s: list(s.scalars(select(SecureNotice))))
    assert (notice.status, notice.attempts) == ("failed", 3)

    # The sender hears of it: an event for their open page, and a notification that says nothing else.
    [(users, event)] = [e for e in events if e[1]["type"] == "delivery_failed"]
    assert users == [clinic.doctor.id]
    assert event == {"type": "delivery_failed", "thread_id": thread_id, "delivery_id": d["id"]}
    [n] = db.read_sync(lambda s: list(s.scalars(select(Notification))))
    assert (n.user_id, n.kind, n.channel, n.status) == (clinic.doctor.id, "delivery_failed", "email", "queued")
    db.runtime.settings.smtp_port = outbound
    drain(worker)
    [(rcpt, told)] = sink.mails
    assert rcpt == [HOUSE_EMAIL]
    words = told.as_string() + text_of(told)
    assert "could not be delivered to its external recipient" in text_of(told)
    for secret in (*SECRETS, FRIEND, "partner.example", "Scan", "ZEBRA"):
        assert secret not in words, secret
    fail = db.read_sync(lambda s: s.scalar(select(AuditRow).where(AuditRow.action == "gateway.notice.fail")))
    assert fail is not None and "partner" not in str(fail.__dict__)

    [d] = deliveries(client, clinic, thread_id)
    assert (d["link_status"], d["link_failure"], d["can_resend"]) == ("failed", "ConnectionRefusedError", True)

    # A new link: the old one stops working, the new one leads to the code step.
    old_hash = db.read_sync(lambda s: s.scalar(select(SecureDelivery.link_hash)))
    r = Api(client, clinic.doctor).post(f"/threads/{thread_id}/external/{d['id']}/resend")
    assert r.status_code == 202, r.text
    assert (r.json()["link_status"], r.json()["resends"]) == ("queued", 1)
    assert db.read_sync(lambda s: s.scalar(select(SecureDelivery.link_hash))) != old_hash
    drain(worker)
    (rcpt, link_mail) = sink.mails[1]
    assert rcpt == [FRIEND]
    token = link_of(link_mail)
    page = client.get(f"/secure/{token}")
    assert page.status_code == 200
    assert client.post(f"/secure/{token}/code", data={"csrf_token": csrf_of(page.text)}).status_code == 200
    [d] = deliveries(client, clinic, thread_id)
    assert (d["link_status"], d["link_failure"], d["codes_sent"]) == ("sent", None, 1)
    resend = db.read_sync(lambda s: s.scalar(select(AuditRow).where(AuditRow.action == "gateway.delivery.resend")))
    assert resend is not None and resend.actor_id == clinic.doctor.id and resend.subject_id == d["id"]


def test_the_old_link_stops_working(client: TestClient, clinic: Clinic, db: Database, worker: Worker, sink: Sink,
                                    gateway_port: int) -> None:
    thread_id = send_external(client, clinic, gateway_port)
    drain(worker)
    old = link_of(sink.mails[0][1])
    page = client.get(f"/secure/{old}")
    assert page.status_code == 200
    assert client.post(f"/secure/{old}/code", data={"csrf_token": csrf_of(page.text)}).status_code == 200
    [d] = deliveries(client, clinic, thread_id)
    assert (d["link_status"], d["codes_sent"]) == ("sent", 1)
    assert Api(client, clinic.doctor).post(f"/threads/{thread_id}/external/{d['id']}/resend").status_code == 202
    drain(worker)
    [_, (_, link_mail)] = sink.mails  # the old link's code, still queued, is not sent: it would not work
    new = link_of(link_mail)
    assert client.get(f"/secure/{old}").status_code == 404
    assert client.post(f"/secure/{old}/code", data={"csrf_token": csrf_of(page.text)}).status_code == 404
    assert client.get(f"/secure/{new}").status_code == 200


def test_a_queued_link_is_superseded_not_sent(client: TestClient, clinic: Clinic, db: Database, worker: Worker,
                                              sink: Sink, gateway_port: int) -> None:
    thread_id = send_external(client, clinic, gateway_port)
    [d] = deliveries(client, clinic, thread_id)
    assert Api(client, clinic.doctor).post(f"/threads/{thread_id}/external/{d['id']}/resend").status_code == 202
    drain(worker)
    [(_, only)] = sink.mails  # one email, with the link that works
    assert client.get(f"/secure/{link_of(only)}").status_code == 200
    statuses = db.read_sync(lambda s: sorted(s.scalars(select(SecureNotice.status))))
    assert statuses == ["sent", "superseded"]


def test_resends_are_limited(client: TestClient, clinic: Clinic, db: Database, worker: Worker,
                             gateway_port: int) -> None:
    thread_id = send_external(client, clinic, gateway_port)
    [d] = deliveries(client, clinic, thread_id)
    doctor = Api(client, clinic.doctor)
    for _ in range(MAX_RESENDS):
        assert doctor.post(f"/threads/{thread_id}/external/{d['id']}/resend").status_code == 202
    hash_before = db.read_sync(lambda s: s.scalar(select(SecureDelivery.link_hash)))
    r = doctor.post(f"/threads/{thread_id}/external/{d['id']}/resend")
    assert r.status_code == 429 and r.json()["error"] == "too_many_resends" and r.json()["detail"]
    assert db.read_sync(lambda s: s.scalar(select(SecureDelivery.link_hash))) == hash_before
    [d] = deliveries(client, clinic, thread_id)
    assert (d["resends"], d["can_resend"]) == (MAX_RESENDS, False)


def test_an_expired_delivery_is_not_sent_again(client: TestClient, clinic: Clinic, db: Database,
                                               gateway_port: int, clock: FrozenClock) -> None:
    thread_id = send_external(client, clinic, gateway_port)
    db.write_sync(lambda s: s.execute(update(SecureDelivery).values(expires_at=clock.now() - timedelta(seconds=1))))
    [d] = deliveries(client, clinic, thread_id)
    assert (d["expired"], d["can_resend"]) == (True, False)
    r = Api(client, clinic.doctor).post(f"/threads/{thread_id}/external/{d['id']}/resend")
    assert r.status_code == 409 and r.json()["error"] == "link_expired"
    assert db.read_sync(lambda s: s.scalar(select(AuditRow).where(AuditRow.action == "gateway.delivery.resend"))) \
        is None


def test_only_those_who_may_read_the_thread_see_or_resend(client: TestClient, clinic: Clinic, db: Database,
                                                          gateway_port: int) -> None:
    thread_id = send_external(client, clinic, gateway_port)
    [d] = deliveries(client, clinic, thread_id)
    for who in (clinic.nurse, clinic.other_team_doctor, clinic.patient, clinic.compliance, clinic.admin):
        api = Api(client, who)
        for r in (api.get(f"/threads/{thread_id}/external"),
                  api.post(f"/threads/{thread_id}/external/{d['id']}/resend")):
            assert r.status_code == 404, (who.username, r.text)
            assert r.json() == {"error": "not_found", "detail": "Not found."}
    doctor = Api(client, clinic.doctor)
    # A delivery of another thread, or none at all, is not found either.
    assert doctor.post(f"/threads/{thread_id}/external/{'x' * 32}/resend").status_code == 404
    assert db.read_sync(lambda s: len(list(s.scalars(select(SecureNotice))))) == 1


def test_thread_page_shows_the_state_and_resends(client: TestClient, clinic: Clinic, db: Database, worker: Worker,
                                                 sink: Sink, gateway_port: int, clock: FrozenClock) -> None:
    thread_id = send_external(client, clinic, gateway_port)
    outbound = db.runtime.settings.smtp_port
    db.runtime.settings.smtp_port = free_port()
    fail_for_good(db, worker, clock)
    db.runtime.settings.smtp_port = outbound
    use_session(client, clinic.doctor)
    page = client.get(f"/t/{thread_id}")
    assert page.status_code == 200
    text = visible_text(page.text)
    assert "Delivery failed" in text and "fr***@partner.example" in text and FRIEND not in page.text
    assert "Send the link again" in text
    [d] = db.read_sync(lambda s: list(s.scalars(select(SecureDelivery))))
    action = f"/t/{thread_id}/external/{d.id}/resend"
    assert client.post(action, data={"csrf_token": "1.forged"}).status_code in (400, 403)
    r = client.post(action, data={"csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/t/{thread_id}"
    drain(worker)
    assert link_of(sink.mails[-1][1])
    text = visible_text(client.get(f"/t/{thread_id}").text)
    assert "Link emailed" in text and "Delivery failed" not in text and "Send the link again" in text
    # Someone who may not see the thread gets the plain 404 page, and nothing is sent.
    use_session(client, clinic.nurse)
    nurse_page = client.post(action, data={"csrf_token": csrf_of(client.get("/inbox").text)})
    assert nurse_page.status_code == 404
    assert db.read_sync(lambda s: len(list(s.scalars(select(SecureNotice))))) == 2
