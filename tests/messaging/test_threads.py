"""The messaging API as patients and staff use it: start, route, list, open, reply, receipts."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.clinic import Clinic
from tests.factories import Api

# A symptom the routing engine sends to nurse triage (a refill would go to the missing medication pool).
RASH = "I have had a mild itchy rash on my forearm for a week"


def patient_thread(client: TestClient, clinic: Clinic, body: str = "My refill ran out", subject: str = "Refill") -> str:
    r = Api(client, clinic.patient).post("/threads", json={"subject": subject, "body": body})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_patient_message_is_routed_to_nurse_triage(client: TestClient, clinic: Clinic) -> None:
    r = Api(client, clinic.patient).post("/threads", json={"subject": "Rash", "body": RASH})
    assert r.status_code == 201
    routing = r.json()["routing"]
    assert routing["pool"] == "nurse-triage"
    assert routing["rule"] and routing["explanation"]
    assert "forearm" not in routing["explanation"]
    queue = Api(client, clinic.nurse).get("/pools/nurse-triage/threads")
    assert queue.status_code == 200
    assert [t["id"] for t in queue.json()] == [r.json()["id"]]
    assert queue.json()[0]["subject"] == "Rash"


def test_conversation_with_receipts_and_unread(client: TestClient, clinic: Clinic) -> None:
    tid = patient_thread(client, clinic)
    nurse, patient = Api(client, clinic.nurse), Api(client, clinic.patient)
    assert nurse.get("/threads").json()[0]["unread"] == 1
    opened = nurse.get(f"/threads/{tid}").json()
    assert opened["messages"][0]["body"] == "My refill ran out"
    assert opened["messages"][0]["read_by"] == []
    assert nurse.post(f"/threads/{tid}/read").status_code == 204
    assert nurse.get("/threads").json()[0]["unread"] == 0
    r = nurse.post(f"/threads/{tid}/messages", json={"body": "Sent to your pharmacy."})
    assert r.status_code == 201 and r.json()["seq"] == 2
    mine = patient.get(f"/threads/{tid}").json()
    assert [m["body"] for m in mine["messages"]] == ["My refill ran out", "Sent to your pharmacy."]
    assert clinic.nurse.id in mine["messages"][0]["read_by"]
    assert patient.get("/threads").json()[0]["unread"] == 1
    patient.post(f"/threads/{tid}/read")
    assert clinic.patient.id in nurse.get(f"/threads/{tid}").json()["messages"][1]["read_by"]


def test_staff_thread_needs_recipient_confirmation_the_first_time(client: TestClient, clinic: Clinic) -> None:
    doctor = Api(client, clinic.doctor)
    body = {"subject": "Consult", "body": "Can you see my patient?", "to": ["dr.wilson"]}
    r = doctor.post("/threads", json=body)
    assert r.status_code == 409
    assert r.json()["error"] == "confirm_recipients"
    assert [c["name"] for c in r.json()["recipients"]] == ["dr.wilson"]
    assert doctor.get("/threads").json() == []  # nothing was written
    assert doctor.post("/threads", json={**body, "confirm_recipients": True}).status_code == 201
    assert doctor.post("/threads", json=body).status_code == 201  # known recipient now


def test_confirmation_shows_patient_identity(client: TestClient, clinic: Clinic) -> None:
    r = Api(client, clinic.doctor).post("/threads", json={"subject": "Labs", "body": "Your labs are fine",
                                                         "patient": "pat.jones"})
    assert r.status_code == 409
    card = r.json()["recipients"][0]
    assert card["mrn"] == "100234" and card["birth_date"] and card["display_name"]


def test_staff_cannot_start_a_thread_with_a_patient_without_consent(client: TestClient, clinic: Clinic) -> None:
    doctor = Api(client, clinic.doctor)
    r = doctor.post("/threads", json={"subject": "Hello", "body": "Checking in", "patient": "dee.clined",
                                      "confirm_recipients": True})
    assert r.status_code == 422 and r.json()["error"] == "consent_required"
    ok = doctor.post("/threads", json={"subject": "Hello", "body": "Checking in", "patient": "pat.jones",
                                       "confirm_recipients": True})
    assert ok.status_code == 201
    assert Api(client, clinic.patient).get(f"/threads/{ok.json()['id']}").status_code == 200


def test_unknown_recipients_are_named_and_nothing_is_written(client: TestClient, clinic: Clinic) -> None:
    doctor = Api(client, clinic.doctor)
    r = doctor.post("/threads", json={"subject": "x", "body": "y", "to": ["nobody.here"], "confirm_recipients": True})
    assert r.status_code == 400 and r.json()["recipients"] == ["nobody.here"]
    r = doctor.post("/threads", json={"subject": "x", "body": "y", "to": ["cody.compliance"],
                                      "confirm_recipients": True})
    assert r.status_code == 400
    assert doctor.get("/threads").json() == []


def test_patients_may_only_address_their_own_care_team(client: TestClient, clinic: Clinic) -> None:
    patient = Api(client, clinic.patient)
    r = patient.post("/threads", json={"subject": "x", "body": "y", "to": ["dr.wilson"], "confirm_recipients": True})
    assert r.status_code == 400
    r = patient.post("/threads", json={"subject": "x", "body": "y", "to": ["dr.house"], "confirm_recipients": True})
    assert r.status_code == 201


def test_group_thread_and_pool_address(client: TestClient, clinic: Clinic) -> None:
    doctor = Api(client, clinic.doctor)
    r = doctor.post("/threads", json={"subject": "Huddle", "body": "9am", "to": ["nina.nurse", "dr.wilson"],
                                      "confirm_recipients": True})
    assert r.status_code == 201
    detail = doctor.get(f"/threads/{r.json()['id']}").json()
    assert detail["kind"] == "group"
    assert {p["username"] for p in detail["participants"]} == {"dr.house", "nina.nurse", "dr.wilson"}
    r = doctor.post("/threads", json={"subject": "Bill", "body": "Question", "to": ["billing"],
                                      "confirm_recipients": True})
    assert r.status_code == 201
    assert r.json()["id"] in [t["id"] for t in Api(client, clinic.biller).get("/pools/billing/threads").json()]


def test_urgent_flag_and_close_by_staff_only(client: TestClient, clinic: Clinic) -> None:
    tid = patient_thread(client, clinic, subject="Rash", body=RASH)
    assert Api(client, clinic.patient).post(f"/threads/{tid}/urgent", json={"urgent": True}).status_code == 404
    nurse = Api(client, clinic.nurse)
    assert nurse.post(f"/threads/{tid}/urgent", json={"urgent": True}).status_code == 204
    assert nurse.get(f"/threads/{tid}").json()["urgent"] is True
    assert nurse.post(f"/threads/{tid}/close").status_code == 204
    assert nurse.get("/pools/nurse-triage/threads").json() == []
    # A patient's reply reopens it.
    Api(client, clinic.patient).post(f"/threads/{tid}/messages", json={"body": "One more thing"})
    assert [t["id"] for t in nurse.get("/pools/nurse-triage/threads").json()] == [tid]


def test_bad_input_gets_a_clear_error_and_changes_nothing(client: TestClient, clinic: Clinic) -> None:
    patient = Api(client, clinic.patient)
    for body in ({}, {"subject": "", "body": "x"}, {"subject": "x", "body": "   "}, {"subject": "x" * 201, "body": "y"},
                 {"subject": "x", "body": "y", "unexpected": 1}, {"subject": 5, "body": []}):
        r = patient.post("/threads", json=body)
        assert r.status_code == 422, body
        assert set(r.json()) == {"error", "detail"}
    r = patient.post("/threads", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert patient.get("/threads").json() == []


def test_secret_body_never_echoed_in_validation_errors(client: TestClient, clinic: Clinic) -> None:
    r = Api(client, clinic.patient).post("/threads", json={"subject": "HIV-result-xyz", "body": 12})
    assert r.status_code == 422
    assert "HIV-result-xyz" not in r.text


def test_requests_without_a_session_are_401(client: TestClient, clinic: Clinic) -> None:
    assert client.get("/api/v1/threads").status_code == 401
    assert client.get("/api/v1/threads", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_thread_responses_are_not_cached(client: TestClient, clinic: Clinic) -> None:
    tid = patient_thread(client, clinic)
    r = Api(client, clinic.patient).get(f"/threads/{tid}")
    assert r.headers["cache-control"] == "no-store"
