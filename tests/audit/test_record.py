"""Recording: identifiers only, well-formed action names, one linear chain under concurrency."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from lockbox.app import build_database
from lockbox.audit.chain import GENESIS
from lockbox.audit.headfile import HeadFile
from lockbox.audit.models import Alert, AuditRow
from lockbox.audit.service import raise_alert, record
from lockbox.audit.verify import verify
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.db import Database
from tests.audit.conftest import write_entries
from tests.factories import make_user


def _rows(db: Database) -> list[Any]:
    return db.read_sync(lambda s: s.execute(select(AuditRow.seq, AuditRow.prev_hash, AuditRow.hash,
                                                   AuditRow.actor_id, AuditRow.details)
                                            .order_by(AuditRow.seq)).all())


def _assert_linear(db: Database, n: int) -> None:
    rows = _rows(db)
    assert [r.seq for r in rows] == list(range(1, n + 1))
    assert [r.prev_hash for r in rows] == [GENESIS] + [r.hash for r in rows[:-1]]
    report = db.read_sync(lambda s: verify(s, db.runtime.keyring,
                                           HeadFile(db.runtime.settings.audit_head_file, db.runtime.keyring).latest()))
    assert report.ok, report.summary()
    assert report.head_seq == n


def test_concurrent_units_from_many_threads_make_one_chain(standalone_db: Database) -> None:
    db = standalone_db
    start = threading.Barrier(8)

    def worker(w: int) -> None:
        start.wait()
        for i in range(25):
            db.write_sync(lambda s, i=i: record(s, action="test.thing.happen", actor_id=f"w{w}", n=i))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    _assert_linear(db, 200)
    assert {r.actor_id for r in _rows(db)} == {f"w{w}" for w in range(8)}


def test_two_processes_writing_at_once_make_one_chain(standalone_db: Database, settings: Settings) -> None:
    """Two Database objects stand for two server processes: each has its own writer and connections."""
    other = build_database(settings, clock=FrozenClock())
    try:
        start = threading.Barrier(2)

        def worker(db: Database, name: str) -> None:
            start.wait()
            futures = [db.submit(lambda s, i=i: record(s, action="test.thing.happen", actor_id=name, n=i))
                       for i in range(60)]
            for f in futures:
                f.result()

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(worker, [standalone_db, other], ["a", "b"]))
    finally:
        other.close()
    _assert_linear(standalone_db, 120)


def test_a_unit_that_fails_leaves_no_audit_row(standalone_db: Database) -> None:
    def failing(session: Session) -> None:
        record(session, action="test.thing.happen", actor_id="u1")
        raise RuntimeError("boom")

    write_entries(standalone_db, 2)
    with pytest.raises(RuntimeError):
        standalone_db.write_sync(failing)
    write_entries(standalone_db, 1, start=2)
    assert [r.details["n"] for r in _rows(standalone_db)] == [0, 1, 2]


@pytest.mark.parametrize(
    "details",
    [
        {"reason": "patient said chest pain"},
        {"note": "Jones, Pat"},
        {"mrn": "100234\n"},
        {"name": "x" * 81},
        {"nested": {"a": "b"}},
        {"ids": ["ok", "not ok"]},
        {"ids": [["nested"]]},
        {"ratio": 0.5},
        {"raw": b"bytes"},
        {"free text key": "ok"},
    ],
)
def test_record_refuses_free_text_details(standalone_db: Database, details: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="audit detail"):
        standalone_db.write_sync(lambda s: record(s, action="test.thing.happen", actor_id="u1", **details))
    assert _rows(standalone_db) == []


def test_record_accepts_identifiers_counts_and_flags(standalone_db: Database) -> None:
    standalone_db.write_sync(lambda s: record(s, action="test.thing.happen", actor_id="u1", thread="a1b2",
                                              count=3, urgent=True, pool="nurse-triage", ids=["x1", "y2"],
                                              terms_version="2026-01", missing=None))
    assert _rows(standalone_db)[0].details == {"thread": "a1b2", "count": 3, "urgent": True, "pool": "nurse-triage",
                                               "ids": ["x1", "y2"], "terms_version": "2026-01", "missing": None}


@pytest.mark.parametrize("action", ["login", "Identity.login.success", "identity", "identity.login.",
                                    "identity..login", "a.b.c.d.e", "identity.login\n", "identity.log in",
                                    "identity.login-ok", ""])
def test_record_refuses_bad_action_names(standalone_db: Database, action: str) -> None:
    with pytest.raises(ValueError, match=r"domain\.subject\.action"):
        standalone_db.write_sync(lambda s: record(s, action=action))
    assert _rows(standalone_db) == []


def test_raised_alert_is_itself_audited(standalone_db: Database) -> None:
    nurse = make_user(standalone_db, "nurse", sign_in=False)
    alert_id = standalone_db.write_sync(
        lambda s: raise_alert(s, kind="break_glass", actor_id=nurse.id, subject_type="thread", subject_id="t1").id)
    stored = standalone_db.read_sync(lambda s: s.get_one(Alert, alert_id))
    assert (stored.kind, stored.actor_id, stored.acknowledged_at) == ("break_glass", nurse.id, None)
    rows = standalone_db.read_sync(lambda s: s.execute(select(AuditRow.action, AuditRow.subject_id)).all())
    assert ("audit.alert.raise", alert_id) in [tuple(r) for r in rows]
