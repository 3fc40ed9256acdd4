"""Consent through the API: the patient's own choices, staff on their behalf, who may see it, the FHIR
export, and the opt-out enforced where messaging starts a thread."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy import select

from lockbox.audit.models import AuditRow
from lockbox.clock import FrozenClock
from lockbox.consent.models import ConsentRecord
from lockbox.db import Database
from tests.clinic import Clinic
from tests.factories import Api


def _state(overview: dict[str, Any], scope: str) -> dict[str, Any]:
    return next(s for s in overview["current"] if s["scope"] == scope)


def _records(db: Database, patient_id: str) -> int:
    return len(db.read_sync(lambda s: list(s.scalars(select(ConsentRecord.id).where(
        ConsentRecord.patient_id == patient_id)))))


def _audit(db: Database, action: str) -> list[AuditRow]:
    return db.read_sync(lambda s: list(s.scalars(select(AuditRow).where(AuditRow.action == action)
                                                 .order_by(AuditRow.seq))))


def staff_thread(client: TestClient, clinic: Clinic) -> Any:
    return Api(client, clinic.doctor).post("/threads", json={
        "subject": "Your results", "body": "Please call us", "patient": "pat.jones", "confirm_recipients": True})


def test_patient_sees_current_consent_per_scope_and_history(client: TestClient, clinic: Clinic) -> None:
    r = Api(client, clinic.patient).get("/me/consent")
    assert r.status_code == 200
    body = r.json()
    assert body["patient"] == "pat.jones"
    assert _state(body, "messaging")["status"] == "granted" and _state(body, "messaging")["effective"]
    # Channels without a record of their own follow the messaging consent.
    assert _state(body, "email") == {"scope": "email", "status": "none", "effective": True, "record": None}
    assert [h["method"] for h in body["history"]] == ["directory"]


def test_withdraw_and_regrant_a_channel_keeps_history_and_audits(client: TestClient, clinic: Clinic,
                                                                  db: Database, clock: FrozenClock) -> None:
    me = Api(client, clinic.patient)
    r = me.post("/me/consent", json={"scope": "email", "status": "withdrawn", "terms_version": "2026-01"})
    assert r.status_code == 201, r.text
    assert not _state(r.json(), "email")["effective"]
    assert _state(r.json(), "messaging")["effective"]
    clock.advance(60)
    r = me.post("/me/consent", json={"scope": "email", "status": "granted", "terms_version": "2026-02"})
    assert _state(r.json(), "email")["effective"]
    assert _state(r.json(), "email")["record"]["terms_version"] == "2026-02"
    history = me.get("/me/consent").json()["history"]
    assert [(h["scope"], h["status"], h["method"]) for h in history] == [
        ("email", "granted", "portal"), ("email", "withdrawn", "portal"), ("messaging", "granted", "directory")]
    assert history[0]["recorded_by"] == "pat.jones"
    rows = _audit(db, "consent.record.change")
    assert [(a.actor_id, a.details["status"], a.details["scope"]) for a in rows] == [
        (clinic.patient.id, "withdrawn", "email"), (clinic.patient.id, "granted", "email")]
    assert rows[0].session_id is not None


def test_withdrawn_messaging_consent_blocks_staff_threads_until_regranted(client: TestClient, clinic: Clinic) -> None:
    me = Api(client, clinic.patient)
    assert me.post("/me/consent", json={"status": "withdrawn", "terms_version": "2026-01"}).status_code == 201
    r = staff_thread(client, clinic)
    assert r.status_code == 422 and r.json()["error"] == "consent_required"
    overview = me.get("/me/consent").json()
    # Without messaging consent no notification channel is used either.
    assert not any(s["effective"] for s in overview["current"])
    assert me.post("/me/consent", json={"status": "granted", "terms_version": "2026-03"}).status_code == 201
    assert staff_thread(client, clinic).status_code == 201


def test_withdrawing_what_is_not_in_force_is_refused_and_changes_nothing(client: TestClient, clinic: Clinic,
                                                                          db: Database) -> None:
    api = Api(client, clinic.declined_patient)
    before = _records(db, clinic.declined_patient.id)
    r = api.post("/me/consent", json={"scope": "sms", "status": "withdrawn", "terms_version": "2026-01"})
    assert r.status_code == 409 and r.json()["error"] == "nothing_to_withdraw"
    assert _records(db, clinic.declined_patient.id) == before


@pytest.mark.parametrize("payload", [
    {"scope": "fax", "status": "granted", "terms_version": "1"},
    {"status": "maybe", "terms_version": "1"},
    {"status": "granted", "terms_version": "version one with spaces"},
    {"status": "granted", "terms_version": ""},
    {"status": "granted"},
    {"status": "granted", "terms_version": "1", "method": "staff"},
])
def test_bad_input_is_refused_and_changes_nothing(client: TestClient, clinic: Clinic, db: Database,
                                                  payload: dict[str, Any]) -> None:
    before = _records(db, clinic.patient.id)
    r = Api(client, clinic.patient).post("/me/consent", json=payload)
    assert r.status_code == 422 and r.json()["error"] == "invalid_input"
    assert _records(db, clinic.patient.id) == before


def test_staff_record_on_the_patients_behalf(client: TestClient, clinic: Clinic, db: Database) -> None:
    r = Api(client, clinic.doctor).post("/patients/dee.clined/consent",
                                        json={"status": "granted", "terms_version": "2026-01"})
    assert r.status_code == 201, r.text
    newest = r.json()["history"][0]
    assert (newest["method"], newest["recorded_by"], newest["status"]) == ("staff", "dr.house", "granted")
    audit = _audit(db, "consent.record.change")[-1]
    assert audit.actor_id == clinic.doctor.id and audit.subject_id == clinic.declined_patient.id
    assert audit.details["method"] == "staff"
    # The front desk takes paper forms for any patient.
    r = Api(client, clinic.scheduler).post("/patients/sam.smith/consent",
                                           json={"scope": "sms", "status": "declined", "terms_version": "2026-01"})
    assert r.status_code == 201


def test_who_may_see_and_record_a_patients_consent(client: TestClient, clinic: Clinic, db: Database) -> None:
    change = {"status": "withdrawn", "terms_version": "2026-01"}
    before = _records(db, clinic.patient.id)
    for who in (clinic.other_team_doctor, clinic.biller, clinic.compliance, clinic.admin, clinic.other_patient):
        r = Api(client, who).post("/patients/pat.jones/consent", json=change)
        assert r.status_code == 404, who.username
    assert _records(db, clinic.patient.id) == before
    for who in (clinic.other_team_doctor, clinic.biller, clinic.other_patient):
        assert Api(client, who).get("/patients/pat.jones/consent").status_code == 404
    for who in (clinic.compliance, clinic.admin, clinic.doctor, clinic.nurse):
        r = Api(client, who).get("/patients/pat.jones/consent")
        assert r.status_code == 200 and r.json()["patient"] == "pat.jones"
    assert Api(client, clinic.doctor).get("/patients/nobody/consent").status_code == 404
    assert Api(client, clinic.doctor).get("/patients/dr.wilson/consent").status_code == 404  # not a patient
    assert Api(client, clinic.doctor).get("/me/consent").status_code == 404
    assert len(_audit(db, "consent.record.view")) == 4


def test_a_clinician_in_a_thread_with_the_patient_may_record(client: TestClient, clinic: Clinic) -> None:
    r = Api(client, clinic.other_team_doctor).post("/threads", json={
        "subject": "Follow-up", "body": "Checking in", "patient": "sam.smith", "confirm_recipients": True})
    assert r.status_code == 201
    r = Api(client, clinic.other_team_doctor).post("/patients/sam.smith/consent",
                                                   json={"scope": "email", "status": "withdrawn",
                                                         "terms_version": "2026-01"})
    assert r.status_code == 201


def test_fhir_export_is_a_valid_r4_bundle_of_consents(client: TestClient, clinic: Clinic, db: Database,
                                                      clock: FrozenClock) -> None:
    me = Api(client, clinic.patient)
    clock.advance(10)
    me.post("/me/consent", json={"scope": "sms", "status": "withdrawn", "terms_version": "2026-01"})
    clock.advance(10)
    Api(client, clinic.nurse).post("/patients/pat.jones/consent", json={"status": "granted", "terms_version": "v2"})
    r = Api(client, clinic.compliance).get("/patients/pat.jones/consent/fhir")
    assert r.status_code == 200, r.text
    bundle = Bundle.model_validate(r.json())
    assert bundle.type == "collection"
    consents = [e.resource for e in bundle.entry]
    assert all(c.get_resource_type() == "Consent" for c in consents)
    summary = [(c.provision.action[0].coding[0].code, c.status, c.provision.type) for c in consents]
    assert summary == [("messaging", "active", "permit"), ("sms", "inactive", "deny"),
                       ("messaging", "inactive", "permit")]
    assert consents[0].performer[0].reference == f"Practitioner/{clinic.nurse.id}"
    assert consents[1].performer[0].reference == f"Patient/{clinic.patient.id}"
    assert all(c.patient.reference == f"Patient/{clinic.patient.id}" for c in consents)
    assert consents[0].policy[0].uri.endswith("/terms/v2")
    assert "100234" not in r.text  # the MRN is not needed to identify the subject
    assert Api(client, clinic.biller).get("/patients/pat.jones/consent/fhir").status_code == 404
    assert _audit(db, "consent.record.export")[-1].details["count"] == 3
