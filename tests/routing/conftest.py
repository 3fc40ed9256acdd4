"""A clinic for routing tests at a known instant (a Wednesday, 10:00 in New York: clinic open), with
no in-process job worker: each test runs the jobs it means to, when it means to."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from lockbox.app import create_app
from lockbox.audit.models import AuditRow
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.directory.models import OnCallShift, Pool
from lockbox.jobs.models import Job
from lockbox.routing.rules import store_for
from tests.clinic import Clinic
from tests.factories import Api, Person, add_to_pool, make_pool, make_user

WEDNESDAY_10AM_NY = datetime(2026, 1, 7, 15, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(WEDNESDAY_10AM_NY)


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    from lockbox.routing.rules import DEFAULT_RULES

    path = tmp_path / "rules.yaml"
    path.write_text(DEFAULT_RULES.read_text())
    return path


@pytest.fixture
def settings(settings: Settings, rules_file: Path) -> Settings:
    settings.routing_rules = rules_file
    # Timers run for hours of clinic time; the staff's sign-ins must outlive them.
    settings.idle_timeout_s = 24 * 3600
    settings.session_lifetime_s = 7 * 24 * 3600
    store_for(rules_file).check_every_s = 0
    settings.routing_rules_watch_s = 0  # the watcher's own tests drive it; no thread racing the others
    return settings


@pytest.fixture
def app(settings: Settings, clock: FrozenClock) -> FastAPI:
    return create_app(settings, clock=clock, migrate=False, workers=0)


class _TickingApi(Api):
    """Each write happens a second after the one before, so "the latest decision" is never a tie."""

    def __init__(self, client: TestClient, person: Person, clock: FrozenClock) -> None:
        super().__init__(client, person)
        self.clock = clock

    def post(self, path: str, **kw: Any) -> Any:
        self.clock.advance(1)
        return super().post(path, **kw)

    def put(self, path: str, **kw: Any) -> Any:
        self.clock.advance(1)
        return super().put(path, **kw)


@dataclass
class Routing:
    """The shared clinic plus a pool lead, a second triage nurse on team B and an on-call physician."""

    c: Clinic
    lead: Person
    ned: Person
    oncall_doc: Person
    db: Database
    client: TestClient
    clock: FrozenClock

    def api(self, who: Person) -> Api:
        return _TickingApi(self.client, who, self.clock)

    def on_call(self, pool: str, who: Person, start: datetime, hours: float = 12) -> None:
        self.db.write_sync(lambda s: s.add(OnCallShift(pool_id=pool, user_id=who.id, starts_at=start,
                                                       ends_at=start + timedelta(hours=hours))))

    def send(self, who: Person, subject: str, body: str, **extra: Any) -> dict[str, Any]:
        r = self.api(who).post("/threads", json={"subject": subject, "body": body, **extra})
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    def jobs(self, kind: str) -> list[Job]:
        return self.db.read_sync(lambda s: list(s.scalars(select(Job).where(Job.kind == kind)
                                                          .order_by(Job.created_at, Job.id))))

    def audit(self, action: str) -> list[AuditRow]:
        return self.db.read_sync(lambda s: list(s.scalars(select(AuditRow).where(AuditRow.action == action)
                                                          .order_by(AuditRow.seq))))

    def query(self, fn: Callable[[Session], Any]) -> Any:
        return self.db.read_sync(fn)


@pytest.fixture
def routing(client: TestClient, clinic: Clinic, db: Database, clock: FrozenClock) -> Iterator[Routing]:
    lead = make_user(db, "nurse", username="nora.lead")
    ned = make_user(db, "nurse", username="ned.nurse", care_teams=["team-b"])
    oncall_doc = make_user(db, "physician", username="dr.oncall")
    add_to_pool(db, "nurse-triage", ned)
    db.write_sync(lambda s: setattr(s.get(Pool, "nurse-triage"), "lead_id", lead.id))
    make_pool(db, "front-desk", ["scheduler"], members=[clinic.scheduler])
    r = Routing(clinic, lead, ned, oncall_doc, db, client, clock)
    r.on_call("nurse-triage", oncall_doc, clock.now() - timedelta(hours=1), hours=48)
    yield r


@pytest.fixture
def run_jobs(db: Database) -> Iterator[Callable[[], int]]:
    """Run every due job now (routing's and anyone else's), as the in-process worker would."""
    from lockbox.jobs.worker import Worker

    worker = Worker(db, name="test-worker")

    def _run() -> int:
        total = 0
        while n := worker.run_once():
            total += n
        return total

    yield _run
    worker.stop()
