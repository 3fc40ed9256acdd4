"""Filing from the staff inbox's thread page ("File to chart"), and a filing whose job gives up becoming
``failed``, against the real FHIR server."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from tests.clinic import Clinic
from tests.fhir.conftest import FhirServer, link_everyone, seed_chart
from tests.fhir.test_filing import _conversation, run_jobs
from tests.web.helpers import csrf_of, use_session, visible_text

from lockbox.app import create_app
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.fhir.service import FILE_JOB
from lockbox.jobs import service as jobs
from lockbox.jobs.models import Job
from lockbox.web.common import NOT_FOUND_TEXT


@pytest.fixture
def app(settings: Settings, clock: FrozenClock) -> FastAPI:
    return create_app(settings, clock=clock, migrate=False, workers=0)  # jobs run when a test says so


def _status(html: str) -> str:
    match = re.search(r'id="filing-status" data-status="([a-z_]+)"', html)
    assert match, "no filing status on the page"
    return match.group(1)


def _has_button(html: str, thread_id: str) -> bool:
    return f'action="/t/{thread_id}/file"' in html


def _file_jobs(db: Database) -> int:
    return int(db.read_sync(lambda s: s.scalar(select(func.count()).select_from(Job).where(Job.kind == FILE_JOB))))


def test_a_clinician_files_from_the_thread_page_and_sees_the_status(fhir: FhirServer, db: Database,
                                                                     clinic: Clinic, client: TestClient,
                                                                     settings: Settings) -> None:
    seed_chart(fhir, db, clinic)
    link_everyone(db, clinic)
    tid = _conversation(client, clinic)
    use_session(client, clinic.doctor)
    page = client.get(f"/t/{tid}")
    assert page.status_code == 200 and _status(page.text) == "not_filed" and _has_button(page.text, tid)
    assert "File to chart" in visible_text(page.text)

    # Without the page's token: refused, nothing queued.
    assert client.post(f"/t/{tid}/file", data={}).status_code == 403
    assert _file_jobs(db) == 0

    r = client.post(f"/t/{tid}/file", data={"csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/t/{tid}"
    page = client.get(f"/t/{tid}")
    assert _status(page.text) == "queued" and not _has_button(page.text, tid)
    run_jobs(db)
    page = client.get(f"/t/{tid}")
    assert _status(page.text) == "filed" and not _has_button(page.text, tid)  # nothing new to file
    assert "Filed in the EHR chart" in visible_text(page.text) and "3 messages" in visible_text(page.text)
    assert clinic.api(client, clinic.doctor).get(f"/threads/{tid}/file").json()["status"] == "filed"

    # A new message since: the button files what came after.
    assert clinic.api(client, clinic.patient).post(f"/threads/{tid}/messages", json={"body": "Thanks."}) \
        .status_code == 201
    page = client.get(f"/t/{tid}")
    assert _has_button(page.text, tid) and "File new messages to chart" in page.text

    # Filing off: no card at all, and a form posted from an older page says why on the thread page.
    settings.fhir_filing = "off"
    page = client.get(f"/t/{tid}")
    assert 'id="filing-card"' not in page.text
    r = client.post(f"/t/{tid}/file", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 409 and 'id="filing-error"' in r.text and "integration is off" in r.text


def test_the_page_files_only_for_clinicians_who_may_see_the_thread(fhir: FhirServer, db: Database,
                                                                    clinic: Clinic, client: TestClient) -> None:
    tid = _conversation(client, clinic)
    # The patient's own page has no card; their post is an outsider's.
    use_session(client, clinic.patient)
    page = client.get(f"/t/{tid}")
    assert page.status_code == 200 and 'id="filing-card"' not in page.text
    assert client.post(f"/t/{tid}/file", data={"csrf_token": csrf_of(page.text)}).status_code == 404
    for who, home in ((clinic.other_team_doctor, "/inbox"), (clinic.biller, "/inbox"),
                      (clinic.compliance, "/compliance")):
        use_session(client, who)
        token = csrf_of(client.get(home).text)
        r = client.post(f"/t/{tid}/file", data={"csrf_token": token})
        assert r.status_code == 404 and NOT_FOUND_TEXT in r.text, who.username
        assert "Sugar readings" not in r.text
    assert _file_jobs(db) == 0


def test_a_filing_whose_job_gives_up_is_failed_and_can_be_filed_again(fhir: FhirServer, db: Database,
                                                                      clinic: Clinic, client: TestClient,
                                                                      clock: FrozenClock, settings: Settings,
                                                                      backend: str) -> None:
    settings.fhir_retries = 0  # the job outbox retries, not the client
    settings.fhir_breaker_threshold = 20  # every try reaches the (failing) EHR
    seed_chart(fhir, db, clinic)
    link_everyone(db, clinic)
    tid = _conversation(client, clinic)
    doc = clinic.api(client, clinic.doctor)
    fhir.fail(status=503, count=100)  # the EHR is down for longer than the outbox tries
    assert doc.post(f"/threads/{tid}/file").status_code == 202
    # Two tries instead of ten keep the test short: giving up is the same at any count.
    db.write_sync(lambda s: s.execute(update(Job).where(Job.kind == FILE_JOB).values(max_attempts=2)))
    run_jobs(db)
    assert doc.get(f"/threads/{tid}/file").json()["status"] == "queued"  # a retry is still to come
    clock.advance(60)
    run_jobs(db)
    [dead] = db.read_sync(jobs.dead_letters)
    assert (dead.kind, dead.attempts, dead.last_error) == (FILE_JOB, 2, "FhirUnavailable")
    status = doc.get(f"/threads/{tid}/file").json()
    assert (status["status"], status["reason"]) == ("failed", "gave_up_FhirUnavailable")

    # The page says so and offers to file again; with the EHR back, that files the thread.
    use_session(client, clinic.doctor)
    page = client.get(f"/t/{tid}")
    assert _status(page.text) == "failed" and _has_button(page.text, tid)
    assert "Filing failed" in visible_text(page.text)
    fhir.fail(count=0)
    r = client.post(f"/t/{tid}/file", data={"csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303
    run_jobs(db)
    status = doc.get(f"/threads/{tid}/file").json()
    assert (status["status"], status["filed_messages"]) == ("filed", 3)
    assert len(fhir.search("Communication")) == 3
