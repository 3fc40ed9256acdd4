"""A small clinic for messaging tests: two care teams, triage and billing pools, every kind of role."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from lockbox.db import Database
from tests.factories import Api, Person, make_pool, make_team, make_user


@dataclass
class Clinic:
    doctor: Person
    nurse: Person
    other_team_doctor: Person
    biller: Person
    scheduler: Person
    compliance: Person
    admin: Person
    patient: Person
    other_patient: Person
    declined_patient: Person

    def api(self, client: TestClient, who: Person) -> Api:
        return Api(client, who)


@pytest.fixture
def clinic(db: Database) -> Clinic:
    make_team(db, "team-a")
    make_team(db, "team-b")
    doctor = make_user(db, "physician", username="dr.house", care_teams=["team-a"])
    nurse = make_user(db, "nurse", username="nina.nurse", care_teams=["team-a"])
    other_doc = make_user(db, "physician", username="dr.wilson", care_teams=["team-b"])
    biller = make_user(db, "billing", username="bill.ing")
    scheduler = make_user(db, "scheduler", username="fran.desk")
    compliance = make_user(db, "compliance", username="cody.compliance")
    admin = make_user(db, "admin", username="ada.admin")
    make_pool(db, "nurse-triage", ["nurse"], members=[nurse])
    make_pool(db, "billing", ["billing"], members=[biller])
    make_pool(db, "scheduling", ["scheduler"], members=[scheduler])
    patient = make_user(db, "patient", username="pat.jones", care_teams=["team-a"], pcp=doctor, mrn="100234")
    other = make_user(db, "patient", username="sam.smith", care_teams=["team-b"], mrn="100999")
    declined = make_user(db, "patient", username="dee.clined", care_teams=["team-a"], consent="declined")
    return Clinic(doctor, nurse, other_doc, biller, scheduler, compliance, admin, patient, other, declined)
