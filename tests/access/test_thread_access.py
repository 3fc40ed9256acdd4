"""IDOR on every thread endpoint: another patient, billing, compliance and admin all get 404."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from lockbox.audit.models import Alert, AuditRow
from lockbox.db import Database
from tests.clinic import Clinic
from tests.factories import Api

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture
def thread_and_file(client: TestClient, clinic: Clinic) -> tuple[str, str]:
    patient = Api(client, clinic.patient)
    tid = patient.post("/threads", json={"subject": "Rash", "body": "Photo attached"}).json()["id"]
    att = patient.post(f"/threads/{tid}/attachments", files={"file": ("rash.png", PNG, "image/png")})
    assert att.status_code == 201, att.text
    return tid, att.json()["attachments"][0]["id"]


def _every_endpoint(api: Api, tid: str, att: str) -> list:  # type: ignore[type-arg]
    return [
        api.get(f"/threads/{tid}"),
        api.post(f"/threads/{tid}/messages", json={"body": "sneaky"}),
        api.post(f"/threads/{tid}/read"),
        api.post(f"/threads/{tid}/urgent", json={"urgent": True}),
        api.post(f"/threads/{tid}/close"),
        api.post(f"/threads/{tid}/attachments", files={"file": ("x.png", PNG, "image/png")}),
        api.get(f"/threads/{tid}/attachments/{att}"),
    ]


@pytest.mark.parametrize("intruder", ["other_patient", "biller", "compliance", "admin", "other_team_doctor",
                                      "scheduler"])
def test_outsiders_get_404_on_every_thread_endpoint(client: TestClient, clinic: Clinic, db: Database,
                                                     thread_and_file: tuple[str, str], intruder: str) -> None:
    tid, att = thread_and_file
    api = Api(client, getattr(clinic, intruder))
    for r in _every_endpoint(api, tid, att):
        assert r.status_code == 404, (intruder, r.request.url, r.status_code)
        assert "Rash" not in r.text and "Photo" not in r.text
    assert all(t["id"] != tid for t in api.get("/threads").json() or [])
    # The same answer as for a thread that does not exist.
    assert api.get(f"/threads/{tid}").json() == api.get("/threads/" + "0" * 32).json()
    # Nothing changed: still two messages, not urgent, open.
    detail = Api(client, clinic.patient).get(f"/threads/{tid}").json()
    assert detail["message_count"] == 2 and not detail["urgent"] and detail["status"] == "open"


def test_care_team_and_pool_members_may_read(client: TestClient, clinic: Clinic,
                                             thread_and_file: tuple[str, str]) -> None:
    tid, _ = thread_and_file
    assert Api(client, clinic.doctor).get(f"/threads/{tid}").status_code == 200   # patient's care team
    assert Api(client, clinic.nurse).get(f"/threads/{tid}").status_code == 200    # nurse-triage pool


def test_billing_sees_only_its_pool(client: TestClient, clinic: Clinic) -> None:
    patient = Api(client, clinic.patient)
    r = patient.post("/threads", json={"subject": "Invoice", "body": "Charged twice", "to": ["billing"],
                                       "confirm_recipients": True})
    tid = r.json()["id"]
    assert Api(client, clinic.biller).get(f"/threads/{tid}").status_code == 200
    assert Api(client, clinic.scheduler).get(f"/threads/{tid}").status_code == 404
    assert Api(client, clinic.scheduler).get("/pools/billing/threads").status_code == 404
    assert Api(client, clinic.patient).get("/pools/billing/threads").status_code == 404


def test_compliance_and_admin_cannot_send(client: TestClient, clinic: Clinic) -> None:
    for who in (clinic.compliance, clinic.admin):
        r = Api(client, who).post("/threads", json={"subject": "x", "body": "y", "to": ["dr.house"],
                                                   "confirm_recipients": True})
        assert r.status_code == 403


def test_break_glass_is_audited_and_alerted(client: TestClient, clinic: Clinic, db: Database,
                                            thread_and_file: tuple[str, str]) -> None:
    tid, _ = thread_and_file
    outsider = Api(client, clinic.other_team_doctor)
    assert outsider.get(f"/threads/{tid}").status_code == 404
    assert outsider.post(f"/threads/{tid}/break-glass", json={"reason": "short"}).status_code == 422
    assert outsider.post(f"/threads/{tid}/break-glass",
                         json={"reason": "Patient arrived unconscious in the ED"}).status_code == 204
    assert outsider.get(f"/threads/{tid}").status_code == 200
    # Non-clinical roles have no break-glass.
    assert Api(client, clinic.biller).post(f"/threads/{tid}/break-glass",
                                           json={"reason": "Patient arrived unconscious"}).status_code == 404

    def _check(session):  # type: ignore[no-untyped-def]
        alerts = session.scalars(select(Alert).where(Alert.kind == "break_glass")).all()
        rows = session.scalars(select(AuditRow).where(AuditRow.action == "access.break_glass.open")).all()
        return len(alerts), [r.actor_id for r in rows], [r.details for r in rows]

    n_alerts, actors, details = db.read_sync(_check)
    assert n_alerts == 1 and actors == [clinic.other_team_doctor.id]
    assert "unconscious" not in str(details)
