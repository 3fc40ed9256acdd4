"""Two real ``lockbox serve`` processes on one PostgreSQL database and one Redis.

What one process does, the other sees: pushed events, lockouts, ended sessions, wipes, rate limits.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from lockbox.config import Settings
from tests.conftest import _truncate_pg
from tests.factories import Person, make_pool, make_team, make_user
from tests.serverproc import ServerProcess, seeded_database

API = "/api/v1"
pytestmark = pytest.mark.slow

UPLOADS_PER_MINUTE = 3
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 100


@dataclass
class Cluster:
    a: ServerProcess
    b: ServerProcess
    doctor: Person
    nurse: Person
    patient: Person
    admin: Person
    spare: list[Person]  # one per test that signs someone out or locks them out

    def post(self, server: ServerProcess, who: Person, path: str, **kw: object) -> httpx.Response:
        return httpx.post(server.base_url + API + path, headers={"Authorization": f"Bearer {who.token}"},
                          timeout=30, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cluster(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    _truncate_pg(pg_url)
    root = tmp_path_factory.mktemp("two-servers")
    data_dir = root / "data"
    data_dir.mkdir(mode=0o700)
    settings = Settings(env="test", data_dir=data_dir, database_url=pg_url, smtp_gateway_port=0)
    with seeded_database(settings) as db:
        make_team(db, "team-a")
        doctor = make_user(db, "physician", care_teams=["team-a"])
        nurse = make_user(db, "nurse", care_teams=["team-a"])
        make_pool(db, "nurse-triage", ["nurse"], members=[nurse])
        patient = make_user(db, "patient", care_teams=["team-a"], pcp=doctor)
        admin = make_user(db, "admin")
        spare = [make_user(db, "nurse", care_teams=["team-a"]) for _ in range(3)]
    prefix = f"lockbox-test-{root.name}"
    env = {"LOCKBOX_REDIS_URL": redis_url, "LOCKBOX_REDIS_PREFIX": prefix,
           "LOCKBOX_RATE_UPLOAD_ACCOUNT": f"{UPLOADS_PER_MINUTE}/minute"}
    a = ServerProcess.for_settings(settings, env=env, log_path=root / "a.log")
    b = ServerProcess.for_settings(settings, env=env, log_path=root / "b.log")
    a.start(timeout=90)
    try:
        b.start(timeout=90)
        yield Cluster(a, b, doctor, nurse, patient, admin, spare)
    finally:
        b.stop()
        a.stop()


@contextmanager
def _socket(server: ServerProcess, who: Person) -> Iterator[ClientConnection]:
    with connect(server.base_url.replace("http", "ws") + API + "/events",
                 additional_headers={"Authorization": f"Bearer {who.token}"}, proxy=None) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        yield ws


def _next(ws: ClientConnection, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        event: dict[str, Any] = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if event["type"] == kind:
            return event


def test_a_socket_on_one_process_sees_what_is_sent_through_the_other(cluster: Cluster) -> None:
    with _socket(cluster.a, cluster.nurse) as nurse_ws, _socket(cluster.a, cluster.patient) as patient_ws:
        started = time.perf_counter()
        r = cluster.post(cluster.b, cluster.patient, "/threads", json={"subject": "Rash", "body": "Itchy rash."})
        assert r.status_code == 201, r.text
        thread_id = r.json()["id"]
        assert _next(nurse_ws, "thread")["thread_id"] == thread_id
        latencies = []
        for n in range(20):
            started = time.perf_counter()
            r = cluster.post(cluster.b, cluster.nurse, f"/threads/{thread_id}/messages", json={"body": f"Hi {n}"})
            assert r.status_code == 201, r.text
            event = _next(patient_ws, "message")
            latencies.append(time.perf_counter() - started)
            assert event["thread_id"] == thread_id and event["message_id"] == r.json()["id"]
        # The sender's own process delivers its own events once, never a second time from Redis.
        with _socket(cluster.b, cluster.nurse) as same_process:
            r = cluster.post(cluster.b, cluster.patient, f"/threads/{thread_id}/messages", json={"body": "Thanks"})
            sent = r.json()["id"]
            cluster.post(cluster.b, cluster.patient, f"/threads/{thread_id}/read")
            seen: list[dict[str, Any]] = []
            while not seen or seen[-1]["type"] != "read":
                seen.append(json.loads(same_process.recv(timeout=5)))
            assert sum(1 for e in seen if e["type"] == "message" and e.get("message_id") == sent) == 1
    latencies.sort()
    print(f"send on B -> event on A: median {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"max {latencies[-1] * 1000:.1f} ms (request included)")
    assert latencies[-1] < 5.0


def test_a_lockout_earned_on_one_process_holds_on_the_other(cluster: Cluster) -> None:
    person = cluster.spare[0]
    for _ in range(5):
        r = httpx.post(cluster.a.base_url + API + "/auth/login", timeout=30,
                       json={"username": person.username, "password": "a-wrong-password", "totp": "000000"})
        assert r.status_code == 401
    r = httpx.post(cluster.b.base_url + API + "/auth/login", timeout=30,
                   json={"username": person.username, "password": "plum-kettle-arbor-92-quietly",
                         "totp": person.totp()})
    assert r.status_code == 429 and r.json()["error"] == "throttled"
    assert 0 < int(r.headers["retry-after"]) <= 30


def test_a_logout_on_one_process_closes_the_socket_held_by_the_other(cluster: Cluster) -> None:
    person = cluster.spare[1]
    with _socket(cluster.b, person) as ws:
        started = time.monotonic()
        assert cluster.post(cluster.a, person, "/auth/logout").status_code == 204
        assert _next(ws, "session_ended", timeout=4)["type"] == "session_ended"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=4)
    # Sooner than the socket's own periodic re-check of its session could have noticed.
    print(f"socket on B closed {(time.monotonic() - started) * 1000:.0f} ms after the logout on A")


def test_a_wipe_ordered_on_one_process_reaches_the_device_on_the_other(cluster: Cluster) -> None:
    person = cluster.spare[2]
    with _socket(cluster.b, person) as ws:
        assert cluster.post(cluster.a, cluster.admin, f"/admin/users/{person.id}/wipe").status_code == 204
        # Only the hub says "wipe": the socket's own session re-check would only say "session_ended".
        assert _next(ws, "wipe")["type"] == "wipe"


def test_upload_limit_per_account_is_shared_by_both_processes(cluster: Cluster) -> None:
    r = cluster.post(cluster.a, cluster.patient, "/threads", json={"subject": "Photo", "body": "See photo."})
    thread_id = r.json()["id"]
    statuses = []
    for n in range(UPLOADS_PER_MINUTE + 1):
        server = cluster.a if n % 2 == 0 else cluster.b
        r = cluster.post(server, cluster.patient, f"/threads/{thread_id}/attachments",
                         files={"file": ("p.png", PNG, "image/png")})
        statuses.append(r.status_code)
    assert statuses[:UPLOADS_PER_MINUTE] == [201] * UPLOADS_PER_MINUTE, r.text
    assert statuses[-1] == 429
    assert r.json()["error"] == "throttled" and set(r.json()) == {"error", "detail"}
    assert 1 <= int(r.headers["retry-after"]) <= 60
