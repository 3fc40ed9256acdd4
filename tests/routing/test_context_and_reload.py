"""Context providers feed the rules (a post-operative patient's symptoms go to surgery), and a rules file
changed under a running server is picked up, or refused with an alert while the last good rules stay."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from lockbox.audit.models import Alert
from lockbox.config import Settings
from lockbox.routing import context
from lockbox.routing.context import DirectoryContextProvider, PatientContext
from tests.factories import make_pool
from tests.routing.conftest import Routing

RASH = ("Wound", "The wound from my operation is red and a bit sore, is that normal? No fever.")
BILL = ("Question about my bill", "I was charged twice for my visit last month, can someone check my invoice?")

POST_OP_RULES = """
timezone: America/New_York
rules:
  - {name: emergency, when: {urgency: [emergency]}, pool: nurse-triage}
  - {name: post-op-wound, when: {topic: [symptoms], recent_surgery_days: 30}, pool: surgery, sla: 4h}
  - {name: symptoms, when: {topic: [symptoms]}, pool: nurse-triage}
  - {name: rest, pool: front-desk}
"""


class _Ehr:
    """An EHR that knows one patient had surgery last week (the FHIR provider's shape)."""

    name = "test-ehr"

    def __init__(self, operated: set[str]) -> None:
        self.operated = operated

    def patient_context(self, session: Session, *, patient_id: str) -> PatientContext:
        base = DirectoryContextProvider().patient_context(session, patient_id=patient_id)
        from lockbox.db import runtime_of

        surgery = runtime_of(session).clock.now() - timedelta(days=7) if patient_id in self.operated else None
        return PatientContext(base.pcp_id, base.care_team_id, base.location_id, ("Z98.890",), None, surgery,
                              source="test-ehr")


def _rewrite(path: Path, text: str) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.routing_context = "test-ehr"
    return settings


def test_a_recent_operation_sends_symptoms_to_surgery(routing: Routing, rules_file: Path) -> None:
    r, c = routing, routing.c
    context.register_provider("test-ehr", lambda s: _Ehr({c.patient.id}))
    surgeon = r.c.doctor
    make_pool(r.db, "surgery", ["physician"], members=[surgeon])
    _rewrite(rules_file, POST_OP_RULES)
    out = r.send(c.patient, *RASH)
    assert out["routing"]["pool"] == "surgery" and out["routing"]["rule"] == "post-op-wound"
    history = r.api(surgeon).get(f"/threads/{out['id']}/routing").json()
    assert history[0]["phases"]["context"] == {"source": "test-ehr", "care_team": "team-a", "location": "main",
                                               "conditions": 1, "recent_surgery": True}
    assert r.send(c.other_patient, *RASH)["routing"]["pool"] == "nurse-triage"


def test_rules_reload_and_a_bad_file_keeps_the_last_good_rules(routing: Routing, rules_file: Path) -> None:
    r, c = routing, routing.c
    context.register_provider("test-ehr", lambda s: DirectoryContextProvider())
    assert r.send(c.patient, *BILL)["routing"]["pool"] == "billing"
    _rewrite(rules_file, "timezone: America/New_York\nrules: [{name: all-to-desk, pool: front-desk}]\n")
    assert r.send(c.patient, *BILL)["routing"]["rule"] == "all-to-desk"
    _rewrite(rules_file, "rules: [{name: broken, pool: front-desk, when: {urgency: [whenever]}}]\n")
    out = r.send(c.patient, *BILL)
    assert out["routing"]["rule"] == "all-to-desk"  # the last good rules still route
    r.send(c.patient, *BILL)
    alerts = r.query(lambda s: list(s.scalars(select(Alert).where(Alert.kind == "routing_rules_invalid"))))
    assert len(alerts) == 1 and alerts[0].details == {"rules_file": "rules.yaml", "problems": 1}
    assert r.audit("audit.alert.raise")[-1].details["kind"] == "routing_rules_invalid"
    _rewrite(rules_file, "rules: [{name: fixed, pool: billing}]\n")
    assert r.send(c.patient, *BILL)["routing"]["rule"] == "fixed"
