"""Schemathesis over every operation of the OpenAPI schema, as each kind of user: never a 5xx, and every
error body is exactly ``{"error", "detail"}`` (plus ``recipients`` where the contract documents it)."""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance
from sqlalchemy import select

from lockbox.app import create_app
from lockbox.audit.models import Alert
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.identity import sessions
from lockbox.identity.models import User
from lockbox.messaging import service
from lockbox.messaging.schemas import ThreadCreate
from lockbox.routers import mount_all
from tests.factories import Person, make_pool, make_team, make_user

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
PERSONAS = ["patient", "nurse", "compliance", "admin", "anonymous"]
# Error codes whose body documents more than error and detail (ARCHITECTURE section 5).
ERROR_EXTRAS = {"confirm_recipients": {"recipients"}, "unknown_recipient": {"recipients"}}


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
            + chunk(b"IEND", b""))


@dataclass
class World:
    app: FastAPI
    db: Database
    people: dict[str, Person]
    # Real ids to put in path parameters, so cases reach past the 404 of a random id.
    ids: dict[str, str]

    def sign_in(self, persona: str) -> tuple[str, str] | None:
        """A fresh session per case: a fuzzed logout, password change or wipe must not starve later cases."""
        if persona == "anonymous":
            return None

        def _do(session: Any) -> tuple[str, str]:
            user = session.get(User, self.people[persona].id)
            token, auth = sessions.create_session(session, user=user, device="fuzz", client_addr="testclient")
            return token, auth.id

        return self.db.write_sync(_do)


@pytest.fixture
def world(settings: Settings) -> Any:
    # One clinic per operation and backend: what a fuzzed deactivate or close did stays in its own test.
    app = create_app(settings, migrate=False)
    db: Database = app.state.lockbox.db
    make_team(db, "team-a")
    make_team(db, "team-b")
    doctor = make_user(db, "physician", care_teams=["team-a"])
    nurse = make_user(db, "nurse", care_teams=["team-a"])
    outsider = make_user(db, "physician", care_teams=["team-b"])
    make_pool(db, "nurse-triage", ["nurse"], members=[nurse])
    people = {
        "patient": make_user(db, "patient", care_teams=["team-a"], pcp=doctor),
        "nurse": nurse,
        "compliance": make_user(db, "compliance"),
        "admin": make_user(db, "admin"),
    }
    target = make_user(db, "patient", care_teams=["team-a"], sign_in=False)

    def actor(p: Person) -> Any:
        return db.read_sync(sessions.resolve_session, token=p.token, client_addr=None)[0]

    thread = db.write_sync(service.create_thread, actor=actor(people["patient"]),
                           data=ThreadCreate(subject="Rash", body="A rash on my arm since Tuesday."))
    attached = db.write_sync(service.add_attachment, actor=actor(people["patient"]), thread_id=thread.id,
                             filename="rash.png", data=_png())
    # Break-glass by a doctor outside the care team raises a real alert for compliance to acknowledge.
    db.write_sync(service.break_glass, actor=actor(outsider), thread_id=thread.id,
                  reason="Covering the on-call line tonight")
    alert_id = db.read_sync(lambda s: s.scalar(select(Alert.id)))
    ids = {"thread_id": thread.id, "attachment_id": attached.attachments[0].id, "user_id": target.id,
           "pool_id": "nurse-triage", "alert_id": alert_id}
    yield World(app, db, people, ids)
    db.close()


@pytest.fixture
def api_schema(world: World) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", world.app)


def _operations() -> list[str]:
    # The routes alone (no storage) give the operation list at collection time, one test id each.
    # schemathesis.pytest's own parametrize breaks on pytest 9.2 (it writes Node._nodeid), hence this.
    bare = FastAPI()
    mount_all(bare)
    return [f"{method.upper()} {path}" for path, ops in bare.openapi()["paths"].items() for method in ops]


def _with_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value[: len(value) // 2] + "\x00" + value[len(value) // 2 :]
    if isinstance(value, list):
        return [_with_nul(v) for v in value]
    if isinstance(value, dict):
        return {k: _with_nul(v) for k, v in value.items()}
    return value


def _exercise(world: World, case: Any, persona: str, real_ids: bool, nul_in: str | None) -> None:
    signed_in = world.sign_in(persona)
    headers = {}
    if signed_in is not None:
        token, session_id = signed_in
        headers["Authorization"] = f"Bearer {token}"
        world.ids["session_id"] = session_id
    if real_ids and case.path_parameters:
        for name in case.path_parameters:
            if name in world.ids:
                case.path_parameters[name] = world.ids[name]
    # PostgreSQL refuses NUL in text where SQLite stores it; generated strings rarely hold one, so add it.
    if nul_in == "path" and case.path_parameters:
        case.path_parameters.update(_with_nul(case.path_parameters))
    elif nul_in == "query" and case.query:
        case.query.update(_with_nul(case.query))
    elif nul_in == "body" and isinstance(case.body, dict | list | str):
        case.body = _with_nul(case.body)

    response = case.call(headers=headers)

    where = f"{case.method} {case.formatted_path} as {persona}"
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:500]}"
    is_json = any(v.startswith("application/json") for v in response.headers.get("content-type", []))
    if response.status_code >= 400 and (is_json or case.path.startswith("/api/")):
        body = response.json()
        assert isinstance(body, dict), f"{where}: error body is not an object: {response.text[:200]}"
        assert isinstance(body.get("error"), str) and isinstance(body.get("detail"), str), f"{where}: {body}"
        extras = set(body) - {"error", "detail"}
        assert extras <= ERROR_EXTRAS.get(body["error"], set()), f"{where}: undocumented keys {extras}"
    elif is_json and response.status_code < 300:
        # Error bodies are checked above: the generated schema documents FastAPI's 422 shape, not ours.
        # Only JSON: the attachment download is documented as JSON although it returns the file.
        case.validate_response(response, checks=[response_schema_conformance, content_type_conformance],
                               headers=headers)


def test_every_operation_is_fuzzed(tmp_path: Path) -> None:
    app = create_app(Settings(env="test", data_dir=tmp_path / "data", smtp_gateway_port=0), migrate=False)
    served = {f"{m.upper()} {path}" for path, ops in app.openapi()["paths"].items() for m in ops}
    app.state.lockbox.db.close()
    assert served == set(_operations())


@pytest.mark.parametrize("label", _operations())
def test_no_server_error_and_uniform_error_bodies(label: str, api_schema: Any, world: World) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in /openapi.json"
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                      operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases, persona=st.sampled_from(PERSONAS), real_ids=st.booleans(),
           nul_in=st.sampled_from([None, None, "path", "query", "body"]))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case: Any, persona: str, real_ids: bool, nul_in: str | None) -> None:
        _exercise(world, case, persona, real_ids, nul_in)

    run()
