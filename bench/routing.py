"""Routing decisions per second, p99 per decision (classification included, no EHR call), the reply path's
cost (emergency check only) and the share of a message send that routing takes (ARCHITECTURE section 7).

Usage: .venv/bin/python bench/routing.py [--decisions 2000] [--sends 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lockbox.access.actor import Actor
from lockbox.app import build_database
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.directory.schemas import read_directory_file
from lockbox.directory.service import load_directory
from lockbox.identity.models import Patient, User
from lockbox.identity.roles import Role
from lockbox.messaging import schemas
from lockbox.messaging import service as messaging
from lockbox.routing import service as routing
from lockbox.routing.classify import classify, emergency_check

BUDGET_P99_MS = 10.0
DEMO = Path(__file__).resolve().parents[1] / "src" / "lockbox" / "demo" / "clinic.yaml"

# As patients write: lay words, misspellings, Spanish, long stories; every urgency and topic.
MESSAGES = [
    ("refill", "Hi, could you send a refill of my metformin to the CVS on Main? I have 4 days left. Thanks"),
    ("bill", "I got a bill for $240 for my visit in March but my insurance should have covered it"),
    ("appt", "I need to reschedule my appointment next tuesday, something came up at work"),
    ("results", "Are my blood test results back yet? The lab said 3 days and its been a week"),
    ("rash", "my son has had a rash on his arms for 2 days, no fever, eating fine. should we come in?"),
    ("help", "CHEST PAIN and my left arm is numb, feel like im going to pass out"),
    ("question", "My mom's smile looks crooked all of a sudden and she is slurring her words"),
    ("form", "I need a form signed for my school, can the doctor fill it out? the seizures stopped years ago"),
    ("cita", "Necesito cambiar mi cita del jueves, por favor. Gracias"),
    ("dolor", "Tengo dolor de garganta y fiebre de 38.5 desde ayer, que debo hacer?"),
    ("med", "i think the new blood pressure pills make me dizzy when i stand up, should i keep taking them"),
    ("long", "So last week I went hiking with my family and everything was fine, we had a picnic and the kids "
             "played, then on the way back I twisted my ankle a little. It is swollen but I can walk on it. "
             "I have been icing it. Do I need an x-ray or can I wait? Also, unrelated, is my flu shot due?"),
]
REPLIES = [
    "Thanks, that helps a lot.",
    "ok I will pick it up tomorrow",
    "It is still a bit sore but better than yesterday, no fever now.",
    "now I can't breathe and my lips are going blue",
]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _seed(db: Database) -> list[tuple[str, str | None]]:
    db.write_sync(load_directory, doc=read_directory_file(DEMO))
    return db.read_sync(lambda s: [(r[0], r[1]) for r in s.execute(
        select(Patient.user_id, Patient.care_team_id).join(User, User.id == Patient.user_id)
        .where(User.active.is_(True)))])


def _time_decisions(db: Database, patients: list[tuple[str, str | None]], n: int) -> list[float]:
    """Each decision (classify, rules, context from the directory, balance) inside a real unit of work."""
    def _unit(session: Session) -> list[float]:
        out = []
        for i in range(n):
            pid, team = patients[i % len(patients)]
            subject, body = MESSAGES[i % len(MESSAGES)]
            t0 = time.perf_counter()
            routing.route_patient_message(session, patient_id=pid, care_team_id=team, subject=subject, body=body,
                                          urgent=False)
            out.append(time.perf_counter() - t0)
        return out

    return db.write_sync(_unit)


def _time(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _send_share(db: Database, patients: list[tuple[str, str | None]], n: int) -> tuple[float, float, float]:
    """Mean send (one committed unit: route, seal, write, audit) and the routing part of it."""
    spent = {"routing": 0.0}
    original_route, original_record = routing.route_patient_message, routing.record_decision

    def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
        def _wrapped(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent["routing"] += time.perf_counter() - t0
        return _wrapped

    routing.route_patient_message = timed(original_route)  # type: ignore[assignment]
    routing.record_decision = timed(original_record)  # type: ignore[assignment]
    actors = db.read_sync(lambda s: {u.id: Actor(u.id, u.username, Role.patient, u.display_name)
                                     for u in s.scalars(select(User).where(User.role == "patient"))})
    try:
        t0 = time.perf_counter()
        for i in range(n):
            pid, _ = patients[i % len(patients)]
            subject, body = MESSAGES[i % len(MESSAGES)]
            db.write_sync(messaging.create_thread, actor=actors[pid],
                          data=schemas.ThreadCreate(subject=subject, body=body))
        total = time.perf_counter() - t0
    finally:
        routing.route_patient_message, routing.record_decision = original_route, original_record  # type: ignore[assignment]
    return total / n, spent["routing"] / n, spent["routing"] / total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--decisions", type=int, default=2000)
    ap.add_argument("--sends", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(env="test", data_dir=Path(tmp), smtp_gateway_port=0)
        db = build_database(settings)
        db.migrate()
        try:
            patients = _seed(db)
            classify("warm", "up")  # the classifier loads its lexicon and model once
            emergency_check("warm up")
            _time_decisions(db, patients, 50)
            decisions = _time_decisions(db, patients, args.decisions)
            classify_only = _time(lambda: classify(*MESSAGES[len(MESSAGES) // 2]), 500)
            replies = [_time(lambda r=r: emergency_check(r), 200) for r in REPLIES]  # type: ignore[misc]
            send_mean, routing_mean, share = _send_share(db, patients, args.sends)
        finally:
            db.close()
    p50, p99 = _percentile(decisions, 0.50) * 1e3, _percentile(decisions, 0.99) * 1e3
    reply_p99 = _percentile([x for r in replies for x in r], 0.99) * 1e3
    print(f"routing decisions: {len(decisions) / sum(decisions):,.0f}/s on one thread "
          f"(mean {statistics.fmean(decisions) * 1e3:.2f} ms, p50 {p50:.2f} ms, p99 {p99:.2f} ms; "
          f"budget p99 < {BUDGET_P99_MS:.0f} ms: {'OK' if p99 < BUDGET_P99_MS else 'OVER'})")
    print(f"  of which classification: p99 {_percentile(classify_only, 0.99) * 1e3:.2f} ms")
    print(f"reply path (emergency check only): p99 {reply_p99:.3f} ms")
    print(f"message send (SQLite, committed): mean {send_mean * 1e3:.2f} ms, routing {routing_mean * 1e3:.2f} ms "
          f"= {share:.0%} of the send")
    return 0 if p99 < BUDGET_P99_MS else 1


if __name__ == "__main__":
    sys.exit(main())
