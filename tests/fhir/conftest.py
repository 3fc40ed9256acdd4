"""A real FHIR R4 server for the whole session: Medplum's FHIR engine (in-memory repository, R4 validation on
every write) under Node 22, both from the npm registry, run by tests/fhir_server/server.mjs. Each test gets
it empty; the /$test/ endpoints make it fail, hang or answer bad data the way a real EHR sometimes does.
"""

from __future__ import annotations

import json
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session
from tests.clinic import Clinic

from lockbox.config import Settings
from lockbox.db import Database
from lockbox.fhir import runtime as fhir_runtime
from lockbox.identity.models import Patient

SERVER_DIR = Path(__file__).resolve().parents[1] / "fhir_server"
NPI = "http://hl7.org/fhir/sid/us-npi"
MRN = "http://clinic.example/mrn"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"


def _node() -> Path:
    node = SERVER_DIR / "node_modules" / ".bin" / "node"
    if not node.exists():
        # scripts/test installs it; a bare `pytest` on a fresh checkout does the same here.
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=SERVER_DIR, check=True)
    return node


@dataclass
class FhirServer:
    root: str
    process: subprocess.Popen[str]

    @property
    def base_url(self) -> str:
        return f"{self.root}/fhir/R4"

    def control(self, command: str, body: str | None = None, **params: Any) -> Any:
        r = httpx.post(f"{self.root}/$test/{command}", params={k: str(v) for k, v in params.items()}, content=body,
                       timeout=10)
        r.raise_for_status()
        return r.json()

    def reset(self) -> None:
        self.control("reset")

    def fail(self, *, status: int = 503, count: int = 1, after: bool = False) -> None:
        self.control("fail", status=status, count=count, after=int(after))

    def hang(self, ms: int) -> None:
        self.control("hang", ms=ms)

    def canned(self, path: str, body: str, *, count: int = 1, status: int = 200) -> None:
        self.control("canned", body=body, path=path, count=count, status=status)

    def stats(self) -> dict[str, int]:
        return httpx.get(f"{self.root}/$test/stats", timeout=10).json()  # type: ignore[no-any-return]

    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(f"{self.base_url}/{resource['resourceType']}", json=resource, timeout=10,
                       headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    def search(self, resource_type: str, **params: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.base_url}/{resource_type}", params=params, timeout=10)
        assert r.status_code == 200, r.text
        return [e["resource"] for e in r.json().get("entry", [])]


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirServer]:
    proc = subprocess.Popen([str(_node()), "server.mjs", "0"], cwd=SERVER_DIR, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("listening "):
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        pytest.fail(f"the FHIR test server did not start: {line!r} {err[-2000:]}")
    server = FhirServer(f"http://127.0.0.1:{int(line.split()[1])}", proc)
    yield server
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def fhir(fhir_server: FhirServer) -> Iterator[FhirServer]:
    fhir_server.reset()
    yield fhir_server
    fhir_server.reset()


@pytest.fixture(autouse=True)
def _close_fhir_runtimes() -> Iterator[None]:
    yield
    fhir_runtime.close_all()  # each test's settings got its own loop and connection pool


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite unless a test asks for ``backend`` (then both): FHIR tests are about the EHR, not storage."""
    if "backend" in request.fixturenames and request.getfixturevalue("backend") == "postgresql":
        from tests.conftest import _truncate_pg

        url: str = request.getfixturevalue("pg_url")
        _truncate_pg(url)
        return url
    template: Path = request.getfixturevalue("sqlite_template")
    target = tmp_path / "data" / "lockbox.db"
    target.parent.mkdir(mode=0o700, exist_ok=True)
    shutil.copy(template, target)
    return f"sqlite:///{target}"


@pytest.fixture
def settings(settings: Settings, fhir_server: FhirServer) -> Settings:
    settings.fhir_base_url = fhir_server.base_url
    settings.fhir_mrn_system = MRN
    settings.fhir_timeout_s = 2
    settings.fhir_retries = 1
    settings.fhir_breaker_threshold = 3
    settings.fhir_breaker_reset_s = 60
    settings.routing_context = "fhir"
    return settings


def wait_until(check: Callable[[], Any], *, within_s: float = 15) -> Any:
    """Poll a background effect (a refresh on the FHIR loop); not a timing assertion."""
    deadline = time.monotonic() + within_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("the background work did not finish")
        time.sleep(0.02)


def birth_date(db: Database, patient_id: str) -> date:
    return db.read_sync(lambda s: s.get(Patient, patient_id).birth_date)  # type: ignore[union-attr]


@dataclass
class Chart:
    """The EHR's side of the shared clinic: dr.house's Practitioner, pat.jones with diabetes, a PCP and care
    team; sam.smith operated on ten days ago."""

    house: dict[str, Any]
    wilson_role: dict[str, Any]
    pat: dict[str, Any]
    sam: dict[str, Any]


def seed_chart(fhir: FhirServer, db: Database, clinic: Clinic, *, days_since_surgery: int = 10) -> Chart:
    now = db.runtime.clock.now()
    house = fhir.create({"resourceType": "Practitioner", "identifier": [{"system": NPI, "value": "1234567893"}],
                         "name": [{"family": "House", "given": ["Gregory"]}]})
    wilson = fhir.create({"resourceType": "Practitioner", "name": [{"family": "Wilson"}]})
    wilson_role = fhir.create({"resourceType": "PractitionerRole",
                               "practitioner": {"reference": f"Practitioner/{wilson['id']}"},
                               "identifier": [{"system": NPI, "value": "1987654321"}]})
    pat = fhir.create({"resourceType": "Patient", "identifier": [{"system": MRN, "value": "100234"}],
                       "birthDate": birth_date(db, clinic.patient.id).isoformat(),
                       "generalPractitioner": [{"reference": f"Practitioner/{house['id']}"}]})
    sam = fhir.create({"resourceType": "Patient", "identifier": [{"system": MRN, "value": "100999"}],
                       "birthDate": birth_date(db, clinic.other_patient.id).isoformat(),
                       "generalPractitioner": [{"reference": f"PractitionerRole/{wilson_role['id']}"}]})
    fhir.create({"resourceType": "CareTeam", "status": "active", "subject": {"reference": f"Patient/{pat['id']}"},
                 "identifier": [{"system": "urn:lockbox:care-team", "value": "team-a"}],
                 "participant": [{"member": {"reference": f"Practitioner/{house['id']}"}}]})
    fhir.create({"resourceType": "Condition", "subject": {"reference": f"Patient/{pat['id']}"},
                 "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                "code": "active"}]},
                 "code": {"coding": [{"system": SNOMED, "code": "44054006"}, {"system": ICD10, "code": "E11.9"}]}})
    fhir.create({"resourceType": "Condition", "subject": {"reference": f"Patient/{pat['id']}"},
                 "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                "code": "resolved"}]},
                 "code": {"coding": [{"system": ICD10, "code": "J45.909"}]}})
    fhir.create({"resourceType": "Encounter", "status": "finished", "subject": {"reference": f"Patient/{pat['id']}"},
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                 "period": {"start": _days_ago(now, 3), "end": _days_ago(now, 3)}})
    fhir.create({"resourceType": "Procedure", "status": "completed", "subject": {"reference": f"Patient/{sam['id']}"},
                 "category": {"coding": [{"system": SNOMED, "code": "387713003"}]},
                 "code": {"coding": [{"system": SNOMED, "code": "80146002"}]},
                 "performedDateTime": _days_ago(now, days_since_surgery)})
    return Chart(house, wilson_role, pat, sam)


def _days_ago(now: Any, days: int) -> str:
    from datetime import timedelta

    return str((now - timedelta(days=days)).isoformat())


def link_everyone(db: Database, clinic: Clinic) -> dict[str, int]:
    from lockbox.fhir import service
    from lockbox.fhir.tasks import match_everyone

    db.write_sync(service.set_staff_identifier, username=clinic.doctor.username, identifier="1234567893")
    db.write_sync(service.set_staff_identifier, username=clinic.other_team_doctor.username, identifier="1987654321")
    return match_everyone(db)


def context_of(db: Database, patient_id: str) -> Any:
    from lockbox.routing.context import provider_for

    def read(session: Session) -> Any:
        return provider_for(db.runtime.settings).patient_context(session, patient_id=patient_id)

    return db.write_sync(read)


def dump(resource: Any) -> str:
    return json.dumps(resource)

