"""The reply route reads its own body (``http.json_body``) instead of a FastAPI body parameter: the answers,
their order (rate limit, then 401, then 422) and the documented request body stay those of FastAPI's."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from lockbox.messaging.schemas import MessageCreate
from tests.clinic import Clinic
from tests.factories import Api, auth


def _thread(client: TestClient, clinic: Clinic) -> str:
    r = Api(client, clinic.patient).post("/threads", json={"subject": "Refill", "body": "My refill ran out"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _messages(client: TestClient, clinic: Clinic, tid: str) -> list[str]:
    return [m["body"] for m in Api(client, clinic.nurse).get(f"/threads/{tid}").json()["messages"]]


@pytest.mark.parametrize(("content", "content_type", "field"), [
    (b'{"body": "   "}', "application/json", "body"),  # blank after stripping
    (b'{"body": ""}', "application/json", "body"),
    (b'{"body": "xyzzy", "to": ["x"]}', "application/json", "to"),  # extra fields are refused
    (b'{"text": "xyzzy"}', "application/json", "body"),
    (b'{"body": 5}', "application/json", "body"),
    (b'["body"]', "application/json", "body"),
    (b'{"body": "xyzzy"', "application/json", "body"),  # not JSON
    (b"", "application/json", "body"),
    (b'{"body": "xyzzy"}', "text/plain", "body"),  # a JSON content type is required, as FastAPI does
    (b'{"body": "xyzzy"}', "", "body"),
])
def test_a_bad_body_is_422_naming_fields_only(client: TestClient, clinic: Clinic, content: bytes, content_type: str,
                                              field: str) -> None:
    tid = _thread(client, clinic)
    headers = {**auth(clinic.nurse), "Content-Type": content_type}
    r = client.post(f"/api/v1/threads/{tid}/messages", content=content, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_input"
    assert field in r.json()["detail"]
    assert "xyzzy" not in r.json()["detail"]  # the input is never echoed back
    assert r.headers["cache-control"] == "no-store"
    assert _messages(client, clinic, tid) == ["My refill ran out"]


def test_a_json_reply_with_charset_or_a_json_suffix_is_taken(client: TestClient, clinic: Clinic) -> None:
    tid = _thread(client, clinic)
    for content_type in ("application/json; charset=utf-8", "application/vnd.lockbox+json"):
        r = client.post(f"/api/v1/threads/{tid}/messages", content='{"body": "  Sent to your pharmacy. "}',
                        headers={**auth(clinic.nurse), "Content-Type": content_type})
        assert r.status_code == 201, r.text
        assert r.json()["body"] == "Sent to your pharmacy."
    assert _messages(client, clinic, tid)[1:] == ["Sent to your pharmacy."] * 2


def test_no_token_is_401_before_the_body_is_looked_at_and_a_stale_one_after(client: TestClient,
                                                                             clinic: Clinic) -> None:
    # The order of FastAPI's dependencies and body parameter: a missing token is refused first, a token
    # that names no session by the unit of work, after the body has been validated.
    tid = _thread(client, clinic)
    r = client.post(f"/api/v1/threads/{tid}/messages", content=b"not json")
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    stale = {"Authorization": "Bearer not-a-session"}
    assert client.post(f"/api/v1/threads/{tid}/messages", content=b"not json", headers=stale).status_code == 422
    r = client.post(f"/api/v1/threads/{tid}/messages", json={"body": "Hello"}, headers=stale)
    assert r.status_code == 401, r.text
    assert _messages(client, clinic, tid) == ["My refill ran out"]


def test_someone_elses_thread_is_404(client: TestClient, clinic: Clinic) -> None:
    tid = _thread(client, clinic)
    r = Api(client, clinic.other_patient).post(f"/threads/{tid}/messages", json={"body": "Hello"})
    assert r.status_code == 404
    assert _messages(client, clinic, tid) == ["My refill ran out"]


def test_the_documented_request_body_is_message_create(client: TestClient) -> None:
    op = client.get("/openapi.json").json()["paths"]["/api/v1/threads/{thread_id}/messages"]["post"]
    assert op["requestBody"] == {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/MessageCreate"}}}}
    components = client.get("/openapi.json").json()["components"]["schemas"]
    assert components["MessageCreate"] == MessageCreate.model_json_schema()
    assert [p["name"] for p in op["parameters"]] == ["thread_id"]
    created = op["responses"]["201"]["content"]["application/json"]["schema"]
    assert created == {"$ref": "#/components/schemas/MessageOut"}
