"""Consent and AuditEvent exports: valid R4 (fhir.resources R4B and the server's validator), NDJSON from the
CLI for the compliance team, pushed to the EHR without duplicates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.consent import Consent
from sqlalchemy import func, select
from tests.clinic import Clinic
from tests.fhir.conftest import FhirServer, link_everyone, seed_chart

from lockbox.audit.models import AuditRow
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.fhir.export import audit_events, consents, push_entries
from lockbox.fhir.runtime import runtime_for


def _activity(client: TestClient, clinic: Clinic) -> None:
    pat = clinic.api(client, clinic.patient)
    r = pat.post("/threads", json={"subject": "Refill", "body": "Please refill my metformin."})
    assert r.status_code == 201
    assert clinic.api(client, clinic.nurse).get(f"/threads/{r.json()['id']}").status_code == 200
    sms = {"status": "declined", "scope": "sms", "terms_version": "2026-01"}
    assert pat.post("/me/consent", json=sms).status_code == 201


def _push(settings: Settings, resources: list[dict[str, Any]]) -> dict[str, Any]:
    bundle = push_entries(resources)
    return runtime_for(settings).call(lambda c: c.transaction(bundle))


def test_audit_events_and_consents_are_valid_r4(db: Database, clinic: Clinic, client: TestClient) -> None:
    _activity(client, clinic)
    rows, events = db.read_sync(lambda s: (s.scalar(select(func.count()).select_from(AuditRow)),
                                           list(audit_events(s))))
    assert len(events) >= rows > 0  # every row (and any written meanwhile)
    for event in events:
        AuditEvent.model_validate(event)
    actions = {e["subtype"][-1]["code"]: e for e in events}
    send = actions["messaging.message.send"] if "messaging.message.send" in actions else \
        actions["messaging.thread.create"]
    assert send["action"] == "C" and send["agent"][0]["who"]["identifier"]["value"] == clinic.patient.id
    view = actions["messaging.thread.view"]
    assert (view["type"]["code"], view["subtype"][0]["code"], view["action"]) == ("rest", "read", "R")
    for doc in db.read_sync(lambda s: list(consents(s))):
        Consent.model_validate(doc)
    text = json.dumps(events)
    assert "metformin" not in text and "Refill" not in text and "100234" not in text  # identifiers only


def test_the_ehr_accepts_them_and_a_second_push_adds_nothing(fhir: FhirServer, db: Database, clinic: Clinic,
                                                            client: TestClient, settings: Settings) -> None:
    chart = seed_chart(fhir, db, clinic)
    link_everyone(db, clinic)
    _activity(client, clinic)
    events = db.read_sync(lambda s: list(audit_events(s)))
    docs = db.read_sync(lambda s: list(consents(s)))
    for batch in (events, docs):
        answer = _push(settings, batch)
        assert {e["response"]["status"][:3] for e in answer["entry"]} <= {"200", "201"}
    stored = fhir.search("AuditEvent", _count="1000")
    assert len(stored) == len(events)
    mine = fhir.search("Consent", patient=f"Patient/{chart.pat['id']}")
    assert sorted(c["status"] for c in mine) == ["active", "rejected"]  # messaging granted, SMS declined
    _push(settings, events)
    _push(settings, docs)
    assert len(fhir.search("AuditEvent", _count="1000")) == len(events)
    assert len(fhir.search("Consent", _count="1000")) == len(docs)


def test_the_server_validator_refuses_a_broken_audit_event(fhir: FhirServer, settings: Settings) -> None:
    """The server really validates: the same AuditEvent without its required ``recorded`` is refused."""
    from lockbox.fhir.exceptions import FhirRejected

    broken = {"resourceType": "AuditEvent", "type": {"code": "rest"}, "agent": [{"requestor": True}],
              "source": {"observer": {"display": "Lockbox"}}}
    r = __import__("httpx").post(f"{fhir.base_url}/AuditEvent", json=broken, timeout=10)
    assert r.status_code == 400
    try:
        runtime_for(settings).call(lambda c: c.request("POST", "AuditEvent", body=broken))
    except FhirRejected as exc:
        assert exc.http_status == 400
    else:
        raise AssertionError("the server accepted an invalid AuditEvent")


def _lockbox(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOCKBOX_DATA_DIR": str(settings.data_dir),
           "LOCKBOX_DATABASE_URL": settings.resolved_database_url,
           "LOCKBOX_FHIR_BASE_URL": settings.fhir_base_url or "", "LOCKBOX_FHIR_MRN_SYSTEM": settings.fhir_mrn_system}
    return subprocess.run([sys.executable, "-m", "lockbox.cli", "fhir", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_the_cli_matches_reports_and_exports_ndjson(fhir: FhirServer, db: Database, clinic: Clinic,
                                                   client: TestClient, settings: Settings, tmp_path: Path) -> None:
    seed_chart(fhir, db, clinic)
    _activity(client, clinic)
    assert _lockbox(settings, "staff-id", "dr.house", "1234567893").returncode == 0
    done = _lockbox(settings, "match")
    assert done.returncode == 1, done.stderr  # dee.clined is not in the EHR: reported, exit 1
    report = {row["username"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert report["pat.jones"]["status"] == "linked" and report["dr.house"]["status"] == "linked"
    assert report["dee.clined"]["status"] == "not_found"

    out = tmp_path / "AuditEvent.ndjson"
    done = _lockbox(settings, "export-audit", "-o", str(out))
    assert done.returncode == 0, done.stderr
    lines = out.read_text().splitlines()
    assert lines and all(AuditEvent.model_validate_json(line) for line in lines)
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    pushed = _lockbox(settings, "export-consent", "--push")
    assert pushed.returncode == 0, pushed.stderr
    stored = fhir.search("Consent")
    assert stored and all(Consent.model_validate(d) for d in stored)
    assert f"pushed {len(stored)} Consent resources" in pushed.stderr
