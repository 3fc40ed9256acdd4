"""POST /api/v1/phi/scan: staff check content before it leaves; patients and strangers are refused, and the
text is neither echoed, logged nor audited. Also the directory's names on file, on both backends."""

from __future__ import annotations

import json
import logging
from datetime import date

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from lockbox.audit.models import AuditRow
from lockbox.db import Database
from lockbox.identity.models import Patient, User
from lockbox.phi import service
from tests.clinic import Clinic
from tests.factories import Api, make_user

# The clinic fixture's patient is "Pat.Jones" (display name from the username) with MRN 100234.
TEXT = "Pat Jones (MRN 100234) DOB 03/14/1962 has type 2 diabetes, call 617-555-0142."
SECRETS = ["Pat Jones", "100234", "03/14/1962", "diabetes", "617-555-0142"]


@pytest.fixture(autouse=True)
def _fresh_names() -> None:
    service.forget_names()


def test_staff_get_kinds_and_offsets_only(client: TestClient, clinic: Clinic) -> None:
    r = Api(client, clinic.nurse).post("/phi/scan", json={"text": TEXT})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["risk"] == "high"
    assert body["kinds"] == ["birth_date", "diagnosis", "mrn", "name", "phone"]
    spans = {(f["kind"], TEXT[f["start"]:f["end"]]) for f in body["findings"]}
    assert spans == {("name", "Pat Jones"), ("mrn", "100234"), ("birth_date", "03/14/1962"),
                     ("diagnosis", "type 2 diabetes"), ("phone", "617-555-0142")}
    assert all(set(f) == {"kind", "start", "end"} for f in body["findings"])
    assert body["stays_secure"] is True  # the default mode is "always"
    for secret in SECRETS:
        assert secret not in r.text


def test_non_clinical_staff_may_scan_too(client: TestClient, clinic: Clinic) -> None:
    r = Api(client, clinic.scheduler).post("/phi/scan", json={"text": "See you Thursday at 3pm."})
    assert r.status_code == 200
    assert r.json() == {"risk": "none", "kinds": [], "findings": [], "stays_secure": True}


def test_adaptive_mode_lets_low_risk_pass(client: TestClient, clinic: Clinic, app) -> None:  # type: ignore[no-untyped-def]
    app.state.lockbox.settings = app.state.lockbox.settings.model_copy(update={"security_mode": "adaptive"})
    me = Api(client, clinic.doctor)
    assert me.post("/phi/scan", json={"text": "Is metformin ok with food?"}).json()["stays_secure"] is False
    assert me.post("/phi/scan", json={"text": TEXT}).json()["stays_secure"] is True


def test_patients_find_no_such_thing(client: TestClient, clinic: Clinic) -> None:
    r = Api(client, clinic.patient).post("/phi/scan", json={"text": TEXT})
    assert r.status_code == 404
    assert set(r.json()) == {"error", "detail"}


def test_compliance_and_admin_do_not_handle_content(client: TestClient, clinic: Clinic) -> None:
    for who in (clinic.compliance, clinic.admin):
        r = Api(client, who).post("/phi/scan", json={"text": TEXT})
        assert r.status_code == 403
        assert set(r.json()) == {"error", "detail"}


def test_unauthenticated_is_refused(client: TestClient, clinic: Clinic) -> None:
    r = client.post("/api/v1/phi/scan", json={"text": TEXT})
    assert r.status_code == 401
    assert set(r.json()) == {"error", "detail"}


BAD_INPUT: list[object] = [
    {}, {"text": ""}, {"text": 12}, {"text": TEXT, "extra": TEXT}, {"text": TEXT + "x" * 50_000}, [TEXT],
]


def test_bad_input_is_a_4xx_that_does_not_echo_the_text(client: TestClient, clinic: Clinic) -> None:
    me = Api(client, clinic.nurse)
    responses = [me.post("/phi/scan", json=payload) for payload in BAD_INPUT]
    responses.append(me.post("/phi/scan", content=b'{"text": "Pat Jones (MRN 100234',
                             headers={"content-type": "application/json"}))
    for r in responses:
        assert r.status_code == 422, r.text
        assert set(r.json()) == {"error", "detail"}
        for secret in SECRETS:
            assert secret not in r.text


def test_nothing_of_the_text_reaches_logs_or_audit(client: TestClient, clinic: Clinic, db: Database,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    me = Api(client, clinic.doctor)
    assert me.post("/phi/scan", json={"text": TEXT}).status_code == 200
    assert me.post("/phi/scan", json={"text": TEXT, "oops": 1}).status_code == 422
    assert Api(client, clinic.patient).post("/phi/scan", json={"text": TEXT}).status_code == 404
    logged = "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
    audit = json.dumps(db.read_sync(lambda s: [(a.action, a.subject_id, a.details)
                                               for a in s.scalars(select(AuditRow))]))
    for secret in SECRETS:
        assert secret not in logged
        assert secret not in audit


def test_names_on_file_follow_the_directory(db: Database) -> None:
    service.forget_names()
    assert db.read_sync(service.names_on_file) == []
    make_user(db, "patient", username="dana.whitfield", sign_in=False)
    make_user(db, "physician", username="dr.grey", sign_in=False)  # staff are not on file
    assert db.read_sync(service.names_on_file) == ["Dana.Whitfield"]
    # A new patient shows up at once, though the list is cached.
    make_user(db, "patient", username="raj.patel", sign_in=False)
    names = db.read_sync(service.names_on_file)
    assert names == ["Dana.Whitfield", "Raj.Patel"]
    names.append("mutated by a caller")
    assert db.read_sync(service.names_on_file) == ["Dana.Whitfield", "Raj.Patel"]
    assert service.scan("Raj Patel called", names_on_file=names).kinds() == ["name"]


def test_names_on_file_are_cached_until_the_directory_changes(db: Database) -> None:
    service.forget_names()
    person = make_user(db, "patient", username="kim.lee", sign_in=False)
    assert db.read_sync(service.names_on_file) == ["Kim.Lee"]

    def rename(s):  # type: ignore[no-untyped-def]
        s.get(User, person.id).display_name = "Kim Lee-Park"

    db.write_sync(rename)
    # A rename does not change the signature: served from the cache until the TTL or forget_names().
    assert db.read_sync(service.names_on_file) == ["Kim.Lee"]
    service.forget_names()
    assert db.read_sync(service.names_on_file) == ["Kim Lee-Park"]
    db.write_sync(lambda s: s.add(User(username="x", display_name="Ana Torres", role="patient",
                                       created_at=s.get(User, person.id).created_at)))
    db.write_sync(lambda s: s.add(Patient(user_id=s.scalar(select(User.id).where(User.username == "x")),
                                          mrn="X1", birth_date=date(1990, 1, 1))))
    assert db.read_sync(service.names_on_file) == ["Ana Torres", "Kim Lee-Park"]
