"""Routing context from the EHR: identity matching, the context a seeded chart yields, routing by it, and a
send path that never waits for the EHR."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.clinic import Clinic
from tests.factories import make_pool
from tests.fhir.conftest import FhirServer, context_of, link_everyone, seed_chart, wait_until

from lockbox.config import Settings
from lockbox.db import Database
from lockbox.fhir import service
from lockbox.fhir.cache import ClinicalContext
from lockbox.fhir.models import FhirLink
from lockbox.fhir.runtime import runtime_for
from lockbox.routing.models import RoutingDecision
from lockbox.routing.rules import DEFAULT_RULES, store_for

RULES_EXTRA = """
  - name: diabetes-chronic-care
    when: {urgency: [routine], conditions: ["E11", "44054006"]}
    pool: chronic-care
  - name: post-op
    when: {urgency: [urgent, routine], recent_surgery_days: 30}
    pool: surgery
"""


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    text = DEFAULT_RULES.read_text()
    # The EHR rules go right after the emergency rule, before the urgency and topic rules.
    marker = "    pool: nurse-triage\n"
    head, _, tail = text.partition(marker)
    path = tmp_path / "rules.yaml"
    path.write_text(head + marker + RULES_EXTRA.lstrip("\n") + tail)
    return path


@pytest.fixture
def settings(settings: Settings, rules_file: Path) -> Settings:
    settings.routing_rules = rules_file
    store_for(rules_file).check_every_s = 0
    return settings


def _cached(db: Database, patient_id: str) -> bool:
    return runtime_for(db.runtime.settings).cache.get(patient_id) is not None


def test_matching_links_patients_by_mrn_and_staff_by_npi(fhir: FhirServer, db: Database, clinic: Clinic,
                                                         backend: str) -> None:
    chart = seed_chart(fhir, db, clinic)
    counts = link_everyone(db, clinic)
    links = {r.username: r for r in db.read_sync(service.link_report)}
    assert links["pat.jones"].status == "linked" and links["pat.jones"].fhir_id == chart.pat["id"]
    assert links["sam.smith"].status == "linked" and links["sam.smith"].fhir_id == chart.sam["id"]
    assert links["dr.house"].status == "linked" and links["dr.house"].fhir_id == chart.house["id"]
    # dr.wilson's NPI is on his PractitionerRole: linked to that role's Practitioner.
    assert links["dr.wilson"].fhir_id == chart.wilson_role["practitioner"]["reference"].split("/")[1]
    # dee.clined has no record in the EHR: reported, not guessed.
    assert links["dee.clined"].status == "not_found"
    assert counts == {"linked": 4, "not_found": 1}


def test_mismatches_are_reported_never_guessed(fhir: FhirServer, db: Database, clinic: Clinic) -> None:
    from lockbox.fhir.tasks import match_everyone

    fhir.create({"resourceType": "Patient", "identifier": [{"system": "http://clinic.example/mrn", "value": "100234"}],
                 "birthDate": "1901-01-01"})
    for _ in range(2):
        fhir.create({"resourceType": "Patient", "identifier": [{"system": "http://clinic.example/mrn",
                                                                "value": "100999"}]})
    match_everyone(db)
    links = {r.username: r for r in db.read_sync(service.link_report, problems_only=True)}
    assert (links["pat.jones"].status, links["pat.jones"].reason) == ("mismatch", "birth_date_differs")
    assert (links["sam.smith"].status, links["sam.smith"].reason) == ("ambiguous", "2_patients_with_mrn")
    # A mismatch gives no FHIR context: routing keeps the directory's answer.
    assert context_of(db, clinic.patient.id).source == "directory"


def test_a_moved_mrn_stays_a_mismatch_until_a_person_confirms(fhir: FhirServer, db: Database, clinic: Clinic) -> None:
    from lockbox.fhir.tasks import match_patient

    first = seed_chart(fhir, db, clinic).pat
    assert match_patient(db, patient_id=clinic.patient.id).status == "linked"  # type: ignore[union-attr]
    fhir.reset()
    moved = fhir.create({"resourceType": "Patient",
                         "identifier": [{"system": "http://clinic.example/mrn", "value": "100234"}]})
    assert match_patient(db, patient_id=clinic.patient.id).reason == "mrn_moved"  # type: ignore[union-attr]
    assert match_patient(db, patient_id=clinic.patient.id).status == "mismatch"  # type: ignore[union-attr]
    db.write_sync(service.confirm_link, username="pat.jones", fhir_id=moved["id"])
    link = db.read_sync(lambda s: s.get(FhirLink, clinic.patient.id))
    assert (link.status, link.fhir_id) == ("linked", moved["id"]) and moved["id"] != first["id"]


def test_context_of_a_seeded_patient(fhir: FhirServer, db: Database, clinic: Clinic) -> None:
    seed_chart(fhir, db, clinic)
    link_everyone(db, clinic)  # matching a patient also warms their context
    wait_until(lambda: _cached(db, clinic.patient.id) and _cached(db, clinic.other_patient.id))
    now = db.runtime.clock.now()

    pat = context_of(db, clinic.patient.id)
    assert pat.source == "fhir"
    assert pat.pcp_id == clinic.doctor.id  # Patient.generalPractitioner -> dr.house's Practitioner
    assert pat.care_team_id == "team-a"  # the active CareTeam's identifier
    assert set(pat.conditions) == {"44054006", "E11.9"}  # active only: the resolved asthma is left out
    assert pat.last_encounter_at is not None and now - pat.last_encounter_at < timedelta(days=4)
    assert pat.last_surgery_at is None

    sam = context_of(db, clinic.other_patient.id)
    assert sam.pcp_id == clinic.other_team_doctor.id  # through a PractitionerRole
    assert sam.conditions == ()
    assert sam.last_surgery_at is not None and timedelta(days=9) < now - sam.last_surgery_at < timedelta(days=11)


def _route(client: TestClient, clinic: Clinic, who: str, subject: str, body: str) -> dict[str, object]:
    person = clinic.patient if who == "pat" else clinic.other_patient
    r = clinic.api(client, person).post("/threads", json={"subject": subject, "body": body})
    assert r.status_code == 201, r.text
    return r.json()["routing"]  # type: ignore[no-any-return]


def test_routing_uses_conditions_and_recent_surgery(fhir: FhirServer, db: Database, clinic: Clinic,
                                                    client: TestClient, backend: str) -> None:
    make_pool(db, "chronic-care", ["nurse"], members=[clinic.nurse])
    make_pool(db, "surgery", ["physician"], members=[clinic.other_team_doctor])
    make_pool(db, "front-desk", ["scheduler"], members=[clinic.scheduler])
    seed_chart(fhir, db, clinic)
    question = ("Care plan", "Could you send me a copy of my care plan before my visit next month?")
    # Nothing known yet: the first message is routed on the directory alone (and a match is queued).
    assert _route(client, clinic, "pat", *question)["rule"] != "diabetes-chronic-care"
    link_everyone(db, clinic)
    wait_until(lambda: _cached(db, clinic.patient.id) and _cached(db, clinic.other_patient.id))

    routed = _route(client, clinic, "pat", *question)
    assert (routed["pool"], routed["rule"]) == ("chronic-care", "diabetes-chronic-care")
    post_op = _route(client, clinic, "sam", "Wound", "The scar from my operation itches a bit, is that normal?")
    assert (post_op["pool"], post_op["rule"]) == ("surgery", "post-op")
    sources = db.read_sync(lambda s: {d.rule: d.phases["context"]["source"] for d in s.scalars(
        select(RoutingDecision))})
    assert sources["diabetes-chronic-care"] == sources["post-op"] == "fhir"


def test_surgery_longer_ago_than_the_rule_says_is_not_recent(fhir: FhirServer, db: Database, clinic: Clinic,
                                                              client: TestClient) -> None:
    make_pool(db, "surgery", ["physician"], members=[clinic.other_team_doctor])
    seed_chart(fhir, db, clinic, days_since_surgery=45)
    link_everyone(db, clinic)
    wait_until(lambda: _cached(db, clinic.other_patient.id))
    routed = _route(client, clinic, "sam", "Wound", "The scar from my operation itches a bit, is that normal?")
    assert routed["rule"] != "post-op"


def test_a_hanging_ehr_does_not_hold_up_sending(fhir: FhirServer, db: Database, clinic: Clinic,
                                                client: TestClient, settings: Settings) -> None:
    settings.fhir_timeout_s = 20  # the EHR's answer is awaited long after the message is sent
    chart = seed_chart(fhir, db, clinic)
    db.write_sync(service.confirm_link, username="pat.jones", fhir_id=chart.pat["id"])
    fhir.hang(60_000)  # every FHIR request now waits a minute (far beyond the client's 2 s timeout)
    try:
        asked = fhir.stats()["requests"]
        routed = _route(client, clinic, "pat", "Care plan", "Could you send me a copy of my care plan?")
        # The message was sent and routed on the directory while the EHR still holds the refresh it was asked.
        assert routed["rule"]
        assert not runtime_for(settings).idle()  # sent while the context refresh still waits for the EHR
        wait_until(lambda: fhir.stats()["requests"] > asked and fhir.stats()["inflight"] >= 1)
        assert not _cached(db, clinic.patient.id)
        assert [p["context"]["source"] for p in db.read_sync(
            lambda s: s.scalars(select(RoutingDecision.phases)).all())] == ["directory"]
    finally:
        fhir.hang(0)


def test_a_stopped_ehr_does_not_hold_up_sending(settings: Settings, db: Database, clinic: Clinic,
                                                client: TestClient) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        settings.fhir_base_url = f"http://127.0.0.1:{s.getsockname()[1]}/fhir/R4"
    db.write_sync(service.confirm_link, username="pat.jones", fhir_id="abc")
    for _ in range(4):
        r = clinic.api(client, clinic.patient).post("/threads", json={"subject": "Plan", "body": "Is my plan ready?"})
        assert r.status_code == 201
    rt = runtime_for(settings)
    wait_until(rt.idle)
    assert not _cached(db, clinic.patient.id)


def test_the_link_report_is_for_admin_and_compliance(fhir: FhirServer, db: Database, clinic: Clinic,
                                                     client: TestClient) -> None:
    seed_chart(fhir, db, clinic)
    link_everyone(db, clinic)
    r = clinic.api(client, clinic.compliance).get("/fhir/links", params={"problems_only": True})
    assert r.status_code == 200
    assert [(row["username"], row["status"], row["reason"]) for row in r.json()] == [
        ("dee.clined", "not_found", "no_patient_with_mrn")]
    assert len(clinic.api(client, clinic.admin).get("/fhir/links").json()) == 5
    for who in (clinic.doctor, clinic.patient, clinic.nurse):
        assert clinic.api(client, who).get("/fhir/links").status_code == 404


def test_a_stale_context_is_served_while_it_is_refreshed(fhir: FhirServer, db: Database, clinic: Clinic,
                                                         settings: Settings) -> None:
    import dataclasses
    import time

    chart = seed_chart(fhir, db, clinic)
    db.write_sync(service.confirm_link, username="pat.jones", fhir_id=chart.pat["id"])
    cache = runtime_for(settings).cache
    old = dataclasses.replace(ClinicalContext(fhir_patient_id=chart.pat["id"], conditions=("I10",)),
                              fetched_at=time.monotonic() - settings.fhir_context_ttl_s - 1)
    cache.put(clinic.patient.id, old)
    stale = context_of(db, clinic.patient.id)
    assert (stale.source, stale.conditions) == ("fhir-stale", ("I10",))  # what was known, at once
    wait_until(lambda: cache.get(clinic.patient.id) is not old)
    fresh = context_of(db, clinic.patient.id)
    assert fresh.source == "fhir" and "E11.9" in fresh.conditions

    too_old = dataclasses.replace(old, fetched_at=time.monotonic() - settings.fhir_context_max_stale_s - 1)
    cache.put(clinic.patient.id, too_old)
    assert context_of(db, clinic.patient.id).source == "directory"  # too old to trust: the directory answers
    wait_until(lambda: cache.get(clinic.patient.id) is not too_old)

    # A link a person corrects takes over: the old record's context is dropped, never served for the new one.
    other = fhir.create({"resourceType": "Patient"})
    db.write_sync(service.confirm_link, username="pat.jones", fhir_id=other["id"])
    cache.put(clinic.patient.id, old)
    assert context_of(db, clinic.patient.id).source == "directory"
    refreshed = wait_until(lambda: cache.get(clinic.patient.id))
    assert refreshed.fhir_patient_id == other["id"] and refreshed.conditions == ()


def test_a_patient_unknown_to_the_ehr_is_asked_about_again_a_day_later(fhir: FhirServer, db: Database,
                                                                      clinic: Clinic, clock: Any) -> None:
    from lockbox.fhir.tasks import match_patient
    from lockbox.jobs.models import Job

    def queued() -> int:
        return db.read_sync(lambda s: s.query(Job).filter(Job.kind == "fhir.match_patient").count())

    assert match_patient(db, patient_id=clinic.patient.id).status == "not_found"  # type: ignore[union-attr]
    context_of(db, clinic.patient.id)
    assert queued() == 0  # just checked: not asked again at every message
    clock.advance(25 * 3600)
    assert context_of(db, clinic.patient.id).source == "directory"
    context_of(db, clinic.patient.id)
    assert queued() == 1  # once a day, however many messages
