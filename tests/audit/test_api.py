"""The compliance API: the audit trail, alerts and verification, for compliance and admin only."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update

from lockbox.audit.models import AuditRow
from lockbox.audit.service import raise_alert, record
from lockbox.clock import FrozenClock
from lockbox.db import Database
from tests.audit.conftest import ROWS, tamper
from tests.factories import Api, Person, make_user


@pytest.fixture
def officer(db: Database) -> Person:
    return make_user(db, "compliance")


def _entries(db: Database, clock: FrozenClock, actors: list[str]) -> None:
    for i, actor in enumerate(actors):
        db.write_sync(lambda s, i=i, actor=actor: record(s, action=f"test.thing.{'open' if i % 2 else 'close'}",
                                                         actor_id=actor, subject_type="thing", subject_id=f"t{i}",
                                                         n=i))
        clock.advance(60)


def _last_seq(db: Database) -> int:
    return int(db.read_sync(lambda s: s.scalar(select(AuditRow.seq).order_by(AuditRow.seq.desc()).limit(1))) or 0)


def test_compliance_reads_the_audit_trail_newest_first(client: TestClient, db: Database, clock: FrozenClock,
                                                        officer: Person) -> None:
    _entries(db, clock, ["u1", "u2", "u1", "u3"])
    r = Api(client, officer).get("/audit")
    assert r.status_code == 200
    rows = r.json()
    seqs = [row["seq"] for row in rows]
    assert seqs == sorted(seqs, reverse=True) and len(rows) == _last_seq(db)
    assert rows[0] == {"seq": seqs[0], "at": rows[0]["at"], "actor_id": "u3", "session_id": None,
                       "action": "test.thing.open", "subject_type": "thing", "subject_id": "t3", "outcome": "success",
                       "details": {"n": 3}}
    assert "hash" not in rows[0]


def test_audit_filters(client: TestClient, db: Database, clock: FrozenClock, officer: Person) -> None:
    start = clock.now()
    _entries(db, clock, ["u1", "u2", "u1", "u3", "u1"])
    api = Api(client, officer)
    assert [r["details"]["n"] for r in api.get("/audit", params={"actor": "u1"}).json()] == [4, 2, 0]
    assert [r["details"]["n"] for r in api.get("/audit", params={"action": "test.thing.op"}).json()] == [3, 1]
    # LIKE wildcards in the prefix are literal characters.
    assert api.get("/audit", params={"action": "test.%"}).json() == []
    assert api.get("/audit", params={"action": "test_thing"}).json() == []
    window = {"since": (start + timedelta(seconds=60)).isoformat(),
              "until": (start + timedelta(seconds=180)).isoformat()}
    assert [r["details"]["n"] for r in api.get("/audit", params=window).json()] == [2, 1]
    # A time without a zone is UTC, not an error.
    naive = {"since": (start + timedelta(seconds=240)).replace(tzinfo=None).isoformat(), "action": "test."}
    assert [r["details"]["n"] for r in api.get("/audit", params=naive).json()] == [4]
    page = api.get("/audit", params={"action": "test.", "limit": 2}).json()
    assert [r["details"]["n"] for r in page] == [4, 3]
    nxt = api.get("/audit", params={"action": "test.", "limit": 2, "before": page[-1]["seq"]}).json()
    assert [r["details"]["n"] for r in nxt] == [2, 1]
    assert api.get("/audit", params={"limit": 0}).status_code == 422
    assert api.get("/audit", params={"limit": 100000}).status_code == 422


def test_admin_reads_the_audit_trail_too(client: TestClient, db: Database) -> None:
    admin = make_user(db, "admin")
    assert Api(client, admin).get("/audit").status_code == 200
    assert Api(client, admin).get("/alerts").status_code == 200


@pytest.mark.parametrize("role", ["nurse", "patient", "physician", "billing", "scheduler"])
def test_everyone_else_gets_404(client: TestClient, db: Database, role: str) -> None:
    other = Api(client, make_user(db, role))
    alert_id = db.write_sync(lambda s: raise_alert(s, kind="break_glass", subject_type="thread", subject_id="t1").id)
    for path in ("/audit", "/audit/verify", "/alerts"):
        r = other.get(path)
        assert r.status_code == 404 and r.json()["error"] == "not_found", path
    r = other.post(f"/alerts/{alert_id}/acknowledge")
    assert r.status_code == 404
    assert db.read_sync(lambda s: s.scalar(select(AuditRow.action).order_by(AuditRow.seq.desc()).limit(1))) \
        == "audit.alert.raise"


def test_signed_out_callers_get_401(client: TestClient) -> None:
    assert client.get("/api/v1/audit").status_code == 401
    assert client.get("/api/v1/alerts").status_code == 401


def test_alerts_list_and_acknowledge(client: TestClient, db: Database, clock: FrozenClock, officer: Person) -> None:
    nurse = make_user(db, "nurse")
    first = db.write_sync(lambda s: raise_alert(s, kind="break_glass", actor_id=nurse.id, subject_type="thread",
                                                subject_id="t1", reason_code="emergency").id)
    clock.advance(10)
    second = db.write_sync(lambda s: raise_alert(s, kind="failed_login_burst", actor_id=nurse.id).id)
    api = Api(client, officer)
    alerts = api.get("/alerts").json()
    assert [a["id"] for a in alerts] == [second, first]
    assert alerts[1]["kind"] == "break_glass" and alerts[1]["details"] == {"reason_code": "emergency"}
    assert alerts[1]["acknowledged_at"] is None

    r = api.post(f"/alerts/{first}/acknowledge")
    assert r.status_code == 204 and r.content == b""
    assert [a["id"] for a in api.get("/alerts", params={"acknowledged": "false"}).json()] == [second]
    acked = api.get("/alerts", params={"acknowledged": "true"}).json()
    assert [a["id"] for a in acked] == [first] and acked[0]["acknowledged_at"] is not None

    audit = api.get("/audit", params={"action": "audit.alert.acknowledge"}).json()
    assert [(a["actor_id"], a["subject_id"], a["details"]) for a in audit] == [(officer.id, first,
                                                                               {"kind": "break_glass"})]
    assert audit[0]["session_id"] is not None
    # Again: nothing changes, nothing more is recorded.
    assert api.post(f"/alerts/{first}/acknowledge").status_code == 204
    assert len(api.get("/audit", params={"action": "audit.alert.acknowledge"}).json()) == 1


def test_acknowledging_an_unknown_alert_is_404(client: TestClient, db: Database, officer: Person) -> None:
    api = Api(client, officer)
    assert api.post("/alerts/nope/acknowledge").status_code == 404
    assert api.post(f"/alerts/{'x' * 65}/acknowledge").status_code == 422
    assert api.get("/audit", params={"action": "audit.alert"}).json() == []


def test_verify_report(client: TestClient, db: Database, clock: FrozenClock, officer: Person, raw: Engine) -> None:
    _entries(db, clock, ["u1"] * 6)
    api = Api(client, officer)
    report = api.get("/audit/verify").json()
    last = _last_seq(db)
    assert report["ok"] is True and report["rows_checked"] == last and report["head_seq"] == last
    assert report["first_bad_seq"] is None and report["summary"].startswith("audit log intact")

    target = db.read_sync(lambda s: s.scalar(select(AuditRow.seq).where(AuditRow.details["n"].as_integer() == 2)))
    tamper(raw, lambda c: c.execute(update(ROWS).where(ROWS.c.seq == target).values(actor_id="someone-else")))
    report = api.get("/audit/verify").json()
    assert report["ok"] is False
    assert (report["first_bad_seq"], report["kind"], report["action"]) == (target, "altered", "test.thing.close")
    assert "someone-else" not in str(report)


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"before": str(2**70)}, 422),
        ({"since": "0001-01-01T00:00:00+05:00"}, 200),  # before the start of time: no lower bound
        ({"until": "9999-12-31T23:59:59-05:00"}, 200),
        ({"since": "0001-01-01T00:00:00", "until": "9999-12-31T23:59:59.999999"}, 200),
        ({"action": "%_"}, 200),
    ],
)
def test_extreme_filters_get_an_answer_not_a_500(client: TestClient, db: Database, officer: Person,
                                                 params: dict[str, str], status: int) -> None:
    db.write_sync(lambda s: record(s, action="test.thing.happen", actor_id="u1"))
    r = Api(client, officer).get("/audit", params=params)
    assert r.status_code == status, r.text
    if status == 200:
        assert len(r.json()) == (0 if "action" in params else 1)
    else:
        assert r.json()["error"] == "invalid_input"
