"""The send path's prepared statements fail as the ORM's do: a value PostgreSQL cannot store is the
client's error (400), not the server's, and the unit's failure leaves nothing behind."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.clinic import Clinic
from tests.factories import Api


def test_a_nul_in_the_thread_id_is_bad_input_not_a_server_error(client: TestClient, clinic: Clinic,
                                                                backend: str) -> None:
    patient = Api(client, clinic.patient)
    r = patient.post("/threads/%000/messages", json={"body": "Hello"})
    # SQLite stores NUL, so the thread is simply not found; PostgreSQL refuses the value itself.
    assert r.status_code == (400 if backend == "postgresql" else 404), r.text
    assert r.json()["error"] == ("invalid_input" if backend == "postgresql" else "not_found")
    # The writer is unharmed: the next send works.
    tid = patient.post("/threads", json={"subject": "Rash", "body": "Itchy"}).json()["id"]
    assert patient.post(f"/threads/{tid}/messages", json={"body": "Still itchy"}).status_code == 201
