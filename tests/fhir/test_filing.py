"""Filing threads into the chart as Communication resources, through the job outbox, against the real server."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from fhir.resources.R4B import get_fhir_model_class
from tests.clinic import Clinic
from tests.fhir.conftest import Chart, FhirServer, link_everyone, seed_chart

from lockbox.app import create_app
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.fhir.filing import build_thread_filing
from lockbox.jobs.models import Job
from lockbox.jobs.worker import Worker

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


@pytest.fixture
def app(settings: Settings, clock: FrozenClock) -> FastAPI:
    return create_app(settings, clock=clock, migrate=False, workers=0)  # jobs run when a test says so


def run_jobs(db: Database) -> int:
    worker = Worker(db)
    try:
        ran = 0
        while n := worker.run_once():
            ran += n
        return ran
    finally:
        worker.stop()


def _conversation(client: TestClient, clinic: Clinic) -> str:
    pat, doc = clinic.api(client, clinic.patient), clinic.api(client, clinic.doctor)
    r = pat.post("/threads", json={"subject": "Sugar readings", "body": "My fasting sugars are around 160.",
                                   "to": ["dr.house"], "confirm_recipients": True})
    assert r.status_code == 201, r.text
    thread_id: str = r.json()["id"]
    assert doc.post(f"/threads/{thread_id}/messages", json={"body": "Let us raise the metformin dose."}).status_code \
        == 201
    files = {"file": ("log.pdf", PDF, "application/pdf")}
    assert pat.post(f"/threads/{thread_id}/attachments", files=files, data={"body": "My log."}).status_code == 201
    return thread_id


def _communications(fhir: FhirServer, chart: Chart) -> list[dict[str, Any]]:
    found = fhir.search("Communication", subject=f"Patient/{chart.pat['id']}")
    return sorted(found, key=lambda c: (c["sent"], len(c.get("inResponseTo", []))))


def test_a_clinician_files_a_thread_and_the_chart_has_it(fhir: FhirServer, db: Database, clinic: Clinic,
                                                         client: TestClient, backend: str) -> None:
    chart = seed_chart(fhir, db, clinic)
    link_everyone(db, clinic)
    thread_id = _conversation(client, clinic)
    doc = clinic.api(client, clinic.doctor)
    assert doc.get(f"/threads/{thread_id}/file").json()["status"] == "not_filed"
    r = doc.post(f"/threads/{thread_id}/file")
    assert r.status_code == 202 and r.json()["status"] == "queued"
    run_jobs(db)
    status = doc.get(f"/threads/{thread_id}/file").json()
    assert (status["status"], status["filed_messages"], status["communications"]) == ("filed", 3, 3)

    comms = _communications(fhir, chart)
    assert [c["payload"][0]["contentString"] for c in comms] == [
        "My fasting sugars are around 160.", "Let us raise the metformin dose.", "My log."]
    first, answer, log = comms
    assert first["sender"] == {"reference": f"Patient/{chart.pat['id']}"}
    assert answer["sender"] == {"reference": f"Practitioner/{chart.house['id']}"}
    assert {"reference": f"Patient/{chart.pat['id']}"} in answer["recipient"]
    assert answer["inResponseTo"] == [{"reference": f"Communication/{first['id']}"}]
    assert log["inResponseTo"] == [{"reference": f"Communication/{answer['id']}"}]
    assert first["topic"]["text"] == "Sugar readings" and first["status"] == "completed"
    assert first["priority"] in ("routine", "urgent")
    doc_ref = log["payload"][1]["contentReference"]["reference"]
    assert doc_ref.startswith("DocumentReference/")
    stored = fhir.search("DocumentReference", _id=doc_ref.split("/")[1])[0]
    assert stored["content"][0]["attachment"]["contentType"] == "application/pdf"


def test_every_resource_filed_validates_with_fhir_resources_r4b(fhir: FhirServer, db: Database, clinic: Clinic,
                                                                 client: TestClient) -> None:
    seed_chart(fhir, db, clinic)
    link_everyone(db, clinic)
    thread_id = _conversation(client, clinic)
    r = clinic.api(client, clinic.patient).post("/threads", json={"subject": "Help", "body": "I can't breathe"})
    assert r.json()["routing"]["urgency"] == "emergency"  # with a call-back task
    for tid in (thread_id, r.json()["id"]):
        bundle = db.read_sync(build_thread_filing, thread_id=tid).bundle
        get_fhir_model_class("Bundle").model_validate(bundle)
        for entry in bundle["entry"]:
            get_fhir_model_class(entry["resource"]["resourceType"]).model_validate(entry["resource"])
    emergency = db.read_sync(build_thread_filing, thread_id=r.json()["id"]).bundle
    kinds = [e["resource"]["resourceType"] for e in emergency["entry"]]
    assert "CommunicationRequest" in kinds
    comm = next(e["resource"] for e in emergency["entry"] if e["resource"]["resourceType"] == "Communication")
    assert comm["priority"] == "stat" and comm["about"][0]["reference"].startswith("urn:uuid:")


def test_a_lost_answer_and_a_retry_file_each_message_once(fhir: FhirServer, db: Database, clinic: Clinic,
                                                          client: TestClient, clock: FrozenClock,
                                                          settings: Settings) -> None:
    settings.fhir_retries = 0  # the job outbox retries, not the client
    chart = seed_chart(fhir, db, clinic)
    link_everyone(db, clinic)
    thread_id = _conversation(client, clinic)
    fhir.fail(status=503, count=1, after=True)  # the EHR files the Bundle, then the answer is lost
    assert clinic.api(client, clinic.doctor).post(f"/threads/{thread_id}/file").status_code == 202
    run_jobs(db)
    assert clinic.api(client, clinic.doctor).get(f"/threads/{thread_id}/file").json()["status"] == "queued"
    job = db.read_sync(lambda s: s.query(Job).filter(Job.kind == "fhir.file_thread").one())
    assert (job.attempts, job.last_error, job.done_at) == (1, "FhirUnavailable", None)
    clock.advance(60)  # past the back-off
    run_jobs(db)
    assert clinic.api(client, clinic.doctor).get(f"/threads/{thread_id}/file").json()["status"] == "filed"
    assert len(_communications(fhir, chart)) == 3
    assert len(fhir.search("DocumentReference")) == 1

    # A later reply filed again adds only the new message, answering the one before it.
    pat = clinic.api(client, clinic.patient)
    assert pat.post(f"/threads/{thread_id}/messages", json={"body": "Thanks, will do."}).status_code == 201
    assert clinic.api(client, clinic.doctor).post(f"/threads/{thread_id}/file").status_code == 202
    run_jobs(db)
    comms = _communications(fhir, chart)
    assert len(comms) == 4
    assert comms[-1]["inResponseTo"] == [{"reference": f"Communication/{comms[-2]['id']}"}]


def test_closing_files_automatically_when_configured(fhir: FhirServer, db: Database, clinic: Clinic,
                                                     client: TestClient, settings: Settings) -> None:
    chart = seed_chart(fhir, db, clinic)
    link_everyone(db, clinic)
    thread_id = _conversation(client, clinic)
    doc = clinic.api(client, clinic.doctor)
    assert doc.post(f"/threads/{thread_id}/close").status_code == 204
    run_jobs(db)
    assert _communications(fhir, chart) == []  # manual filing (the default): closing files nothing

    settings.fhir_filing = "auto"
    assert doc.post(f"/threads/{thread_id}/messages", json={"body": "Closing this."}).status_code == 201
    assert doc.post(f"/threads/{thread_id}/close").status_code == 204
    run_jobs(db)
    assert doc.get(f"/threads/{thread_id}/file").json()["status"] == "filed"
    assert len(_communications(fhir, chart)) == 4


def test_a_patient_the_ehr_does_not_know_blocks_filing(fhir: FhirServer, db: Database, clinic: Clinic,
                                                       client: TestClient) -> None:
    thread_id = _conversation(client, clinic)  # nothing seeded: MRN 100234 is unknown to the EHR
    doc = clinic.api(client, clinic.doctor)
    assert doc.post(f"/threads/{thread_id}/file").status_code == 202
    run_jobs(db)
    status = doc.get(f"/threads/{thread_id}/file").json()
    assert (status["status"], status["reason"]) == ("blocked", "patient_not_found")
    assert fhir.search("Communication") == []


def test_only_clinicians_who_may_see_the_thread_file_it(fhir: FhirServer, db: Database, clinic: Clinic,
                                                        client: TestClient, settings: Settings) -> None:
    thread_id = _conversation(client, clinic)
    for who in (clinic.patient, clinic.other_team_doctor, clinic.biller, clinic.compliance, clinic.admin):
        r = clinic.api(client, who).post(f"/threads/{thread_id}/file")
        assert r.status_code == 404, (who.username, r.text)
    assert clinic.api(client, clinic.patient).get(f"/threads/{thread_id}/file").status_code == 404
    assert client.post(f"/api/v1/threads/{thread_id}/file").status_code == 401
    settings.fhir_filing = "off"
    r = clinic.api(client, clinic.doctor).post(f"/threads/{thread_id}/file")
    assert (r.status_code, r.json()["error"]) == (409, "fhir_not_configured")
    assert db.read_sync(lambda s: s.query(Job).filter(Job.kind == "fhir.file_thread").count()) == 0
