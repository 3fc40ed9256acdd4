"""The routing engine on the pages: claim, release, transfer and call-back forms, the response countdown
and escalation state on the queue and the thread, and the SLA compliance chart."""

from __future__ import annotations

import csv
import html as html_lib
import io
import re
from datetime import UTC, datetime

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from lockbox.app import create_app
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.directory.models import Pool
from lockbox.jobs.worker import Worker
from lockbox.messaging.models import Thread
from lockbox.routing.models import CallbackTask
from lockbox.web.common import NOT_FOUND_TEXT
from tests.clinic import Clinic
from tests.factories import Api, Person, add_to_pool, make_user
from tests.web.helpers import csrf_of, inline_code, use_session, visible_text

# Clinic open (10:00 in New York on a Wednesday): balance assigns, and SLAs count from now.
WEDNESDAY_10AM_NY = datetime(2026, 1, 7, 15, 0, tzinfo=UTC)
RASH = ("Rash", "I have had a mild itchy rash on my forearm for a week. No fever. Should I make an appointment?")
BILL = ("Question about my bill", "I was charged twice for my visit last month, can someone check my invoice?")
CHEST = ("Help", "I have crushing chest pain going down my left arm and I can't breathe")


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(WEDNESDAY_10AM_NY)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The clock moves past SLAs of hours; the sign-ins must outlive that.
    settings.idle_timeout_s = 24 * 3600
    settings.session_lifetime_s = 7 * 24 * 3600
    return settings


@pytest.fixture
def app(settings: Settings, clock: FrozenClock) -> FastAPI:
    # No in-process worker: escalation timers fire when a test runs them, not when a poll happens to.
    return create_app(settings, clock=clock, migrate=False, workers=0)


@pytest.fixture
def ned(db: Database, clinic: Clinic) -> Person:
    """A second triage nurse, on the other care team."""
    person = make_user(db, "nurse", username="ned.nurse", care_teams=["team-b"])
    add_to_pool(db, "nurse-triage", person)
    return person


def _send(client: TestClient, who: Person, subject: str, body: str, **extra: object) -> str:
    r = Api(client, who).post("/threads", json={"subject": subject, "body": body, **extra})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _assignee(db: Database, tid: str) -> str | None:
    return db.read_sync(lambda s: s.scalar(select(Thread.assignee_id).where(Thread.id == tid)))


def _routing_error(html: str) -> str:
    match = re.search(r'id="routing-error">([^<]*)<', html)
    assert match, "no routing error on the page"
    return html_lib.unescape(match.group(1))


def _run_jobs(db: Database) -> None:
    worker = Worker(db, name="test-worker")
    try:
        while worker.run_once():
            pass
    finally:
        worker.stop()


def test_claim_release_and_transfer_from_the_thread_page(client: TestClient, clinic: Clinic, db: Database,
                                                         ned: Person) -> None:
    tid = _send(client, clinic.patient, *RASH)
    use_session(client, ned)
    page = client.get(f"/t/{tid}")
    assert page.status_code == 200 and not inline_code(page.text)
    token = csrf_of(page.text)
    assert 'action="/t/' + tid + '/claim"' in page.text

    claimed = client.post(f"/t/{tid}/claim", data={"csrf_token": token}, follow_redirects=False)
    assert claimed.status_code == 303 and claimed.headers["location"] == f"/t/{tid}"
    assert _assignee(db, tid) == ned.id
    assert re.search(r'id="assignee">You<', client.get(f"/t/{tid}").text)

    # Not hers to release: the routing service's own words, on the thread page.
    use_session(client, clinic.nurse)
    nina = csrf_of(client.get(f"/t/{tid}").text)
    refused = client.post(f"/t/{tid}/release", data={"csrf_token": nina})
    assert refused.status_code == 403
    assert _routing_error(refused.text) == "Only the assignee or the pool's lead can release this thread."
    assert re.search(r'id="assignee">Ned.Nurse<', refused.text)
    assert _assignee(db, tid) == ned.id

    # From the queue, a claim comes back to the queue.
    back = client.post(f"/t/{tid}/claim", data={"csrf_token": nina, "next": "inbox"}, follow_redirects=False)
    assert back.status_code == 303 and back.headers["location"] == "/inbox"
    assert _assignee(db, tid) == clinic.nurse.id
    assert "Assigned to you" in visible_text(client.get("/inbox").text)
    # Anything but the fixed value goes to the thread, never elsewhere.
    odd = client.post(f"/t/{tid}/claim", data={"csrf_token": nina, "next": "https://evil.example/"},
                      follow_redirects=False)
    assert odd.headers["location"] == f"/t/{tid}"

    for bad, words in (("pat.jones", "active staff member"), ("nobody.here", "active staff member"),
                       ("", "username")):
        r = client.post(f"/t/{tid}/transfer", data={"csrf_token": nina, "to": bad})
        assert r.status_code == 400 and words in _routing_error(r.text), bad
    moved = client.post(f"/t/{tid}/transfer", data={"csrf_token": nina, "to": "ned.nurse"}, follow_redirects=False)
    assert moved.status_code == 303 and _assignee(db, tid) == ned.id

    use_session(client, ned)
    released = client.post(f"/t/{tid}/release", data={"csrf_token": token}, follow_redirects=False)
    assert released.status_code == 303 and _assignee(db, tid) is None
    assert re.search(r'id="assignee">Unassigned<', client.get(f"/t/{tid}").text)
    triggers = [d["trigger"] for d in Api(client, ned).get(f"/threads/{tid}/routing").json()]
    # The clock stands still, so the order of same-instant decisions is not defined: count them.
    assert sorted(triggers) == ["claim", "claim", "message", "release", "transfer"]


def test_routing_forms_need_their_token(client: TestClient, clinic: Clinic, db: Database, ned: Person) -> None:
    tid = _send(client, clinic.patient, *RASH)
    before = _assignee(db, tid)
    use_session(client, ned)
    for action, extra in (("claim", {}), ("release", {}), ("transfer", {"to": "ned.nurse"}),
                          ("callback/complete", {})):
        r = client.post(f"/t/{tid}/{action}", data=extra)
        assert r.status_code == 403 and "did not come from this site" in r.text, action
        forged = client.post(f"/t/{tid}/{action}", data={**extra, "csrf_token": "1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})
        assert forged.status_code == 403, action
    assert _assignee(db, tid) == before


@pytest.mark.parametrize("action", ["claim", "release", "transfer", "callback/complete"])
def test_outsiders_get_the_not_found_page(client: TestClient, clinic: Clinic, db: Database, action: str) -> None:
    tid = _send(client, clinic.patient, *CHEST)
    before = _assignee(db, tid)
    for who in (clinic.other_patient, clinic.other_team_doctor, clinic.biller, clinic.compliance):
        use_session(client, who)
        token = csrf_of(client.get("/").text if who.username == "cody.compliance" else
                        client.get("/portal" if who.username == "sam.smith" else "/inbox").text)
        r = client.post(f"/t/{tid}/{action}", data={"csrf_token": token, "to": "nina.nurse"})
        assert r.status_code == 404, (who.username, r.status_code)
        assert NOT_FOUND_TEXT in r.text and "chest pain" not in r.text.lower()
    assert _assignee(db, tid) == before


def test_the_queue_and_the_thread_count_down_to_the_sla_then_say_overdue(
        client: TestClient, clinic: Clinic, db: Database, clock: FrozenClock) -> None:
    lead = make_user(db, "nurse", username="nora.lead")
    db.write_sync(lambda s: setattr(s.get(Pool, "nurse-triage"), "lead_id", lead.id))
    tid = _send(client, clinic.patient, *BILL, urgent=True)  # urgent: one hour, nurse triage
    use_session(client, clinic.nurse)

    def row() -> str:
        html = client.get("/inbox").text
        match = re.search(r'<li class="queue-item[^"]*" data-thread="' + tid + r'">.*?</li>', html, re.S)
        assert match, "the thread is not in a queue"
        return match.group(0)

    fresh = row()
    assert "Due in 1 h" in visible_text(fresh) and "is-overdue" not in fresh
    assert re.search(r'data-due="2026-01-07T16:00:00\+00:00"', fresh)
    clock.advance(59 * 60)
    assert "Due in 1 min" in visible_text(row())
    clock.advance(2 * 60)
    late = row()
    assert "Overdue by 1 min" in visible_text(late)
    assert 'class="queue-item is-unread is-overdue"' in late and 'class="sla is-overdue"' in late
    # The thread's panel as a background refresh draws it (nothing read).
    panel = client.get(f"/fragments/t/{tid}")
    assert "Overdue by 1 min" in visible_text(panel.text) and re.search(r'id="escalation-state">None<', panel.text)

    _run_jobs(db)  # the timer fires: the pool lead is told
    clock.advance(60)
    escalated = row()
    # The next tier's timer moved the stored due time on; the response was due all the same.
    assert "Overdue by 2 min" in visible_text(escalated) and "Escalated to the pool lead" in visible_text(escalated)
    panel = visible_text(client.get(f"/fragments/t/{tid}").text)
    assert "1 time, last to the pool lead at 2026-01-07 16:01 UTC" in panel

    # Opening the thread reads it: routing's clock stops, and so does the countdown.
    opened = client.get(f"/t/{tid}")
    assert "No patient message waiting" in visible_text(opened.text) and "data-due=" not in opened.text
    assert "data-due=" not in row()


def test_an_emergency_shows_its_call_back_until_done(client: TestClient, clinic: Clinic, db: Database) -> None:
    tid = _send(client, clinic.patient, *CHEST)
    use_session(client, clinic.nurse)
    assert "Call-back due" in visible_text(client.get("/inbox").text)
    page = client.get(f"/fragments/t/{tid}")
    assert "Call-back done" in page.text and "Due in 5 min" in visible_text(page.text)
    token = csrf_of(page.text)
    done = client.post(f"/t/{tid}/callback/complete", data={"csrf_token": token}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/t/{tid}"
    tasks = db.read_sync(lambda s: list(s.scalars(select(CallbackTask).where(CallbackTask.thread_id == tid))))
    assert tasks and all(t.completed_by == clinic.nurse.id for t in tasks)
    assert "Call-back done" not in client.get(f"/t/{tid}").text
    again = client.post(f"/t/{tid}/callback/complete", data={"csrf_token": token})
    assert again.status_code == 404 and _routing_error(again.text) == "No open call-back on this thread."


def test_the_sla_compliance_chart_and_csv(client: TestClient, clinic: Clinic, db: Database,
                                          clock: FrozenClock) -> None:
    on_time = _send(client, clinic.patient, *BILL, urgent=True)
    late = _send(client, clinic.patient, "Still itchy", "The rash on my arm is itchy, no fever.", urgent=True)
    _send(client, clinic.patient, *RASH)  # routine: two business days, not due yet
    clock.advance(30 * 60)
    Api(client, clinic.nurse).post(f"/threads/{on_time}/messages", json={"body": "Looking into it"})
    clock.advance(60 * 60)
    Api(client, clinic.nurse).post(f"/threads/{late}/messages", json={"body": "Sorry for the wait"})

    use_session(client, clinic.compliance)
    page = client.get("/analytics")
    assert page.status_code == 200 and not inline_code(page.text)
    chart = re.search(r'<svg class="chart wide" id="chart-sla".*?</svg>', page.text, re.S)
    assert chart, "no SLA chart"
    assert re.search(r'<rect class="bar s0"[^>]*><title>[^<]* · urgent: 50% \(1 of 2\)</title>', chart.group(0))
    rows = list(csv.DictReader(io.StringIO(client.get("/analytics/sla.csv").text)))
    urgent = [r for r in rows if r["priority"] == "urgent"]
    assert [(r["met"], r["missed"], r["waiting"], r["met_percent"], r["sla"]) for r in urgent] == \
        [("1", "1", "0", "50.0", "1h")]
    assert sum(int(r["waiting"]) for r in rows) == 1
    assert "Bill" not in page.text and "itchy" not in page.text
