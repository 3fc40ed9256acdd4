"""The periodic retention sweep: each run purges one batch and schedules the next run."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from lockbox.db import Database
from lockbox.db.uow import runtime_of
from lockbox.identity import throttle
from lockbox.jobs.service import enqueue, register
from lockbox.retention import service

SWEEP = "retention.sweep"


def _slot(now: datetime, every_s: int) -> int:
    return int(now.timestamp()) // every_s


def schedule(session: Session) -> str | None:
    """Make sure a sweep is queued (every server and worker calls this at start; repeats are no-ops).

    Dedupe keys are time slots, so however many processes seed or re-arm, one sweep runs per slot.
    """
    rt = runtime_of(session)
    slot = _slot(rt.clock.now(), rt.settings.retention_sweep_every_s)
    return enqueue(session, kind=SWEEP, dedupe_key=f"{SWEEP}:{slot}")


def arm(db: Database) -> None:
    """At the start of ``lockbox serve`` and ``lockbox worker``: queue the sweep if none is. Not under
    LOCKBOX_ENV=test, whose suites count the jobs they queue; retention tests arm it themselves."""
    if db.runtime.settings.env != "test":
        db.write_sync(schedule)


def run_sweep(session: Session, payload: dict[str, Any]) -> None:
    del payload  # a sweep needs nothing but the clock and the settings
    rt = runtime_of(session)
    settings = rt.settings
    result = service.sweep(session, rules=service.policies(settings), limit=settings.retention_batch)
    now = rt.clock.now()
    throttle.prune(session, now)  # sign-in counters are kept no longer than they protect anyone
    if result.more:
        # A backlog (the first run on an old database): keep going now, one committed batch at a time.
        enqueue(session, kind=SWEEP, dedupe_key=f"{SWEEP}:more:{result.purged[-1]}")
        return
    every = settings.retention_sweep_every_s
    slot = _slot(now, every) + 1
    enqueue(session, kind=SWEEP, run_at=datetime.fromtimestamp(slot * every, UTC), dedupe_key=f"{SWEEP}:{slot}")


register(SWEEP, run_sweep)
