"""The core's default route for patient messages, until the routing engine replaces it.

Every patient message goes to nurse triage when that pool exists (a clinician sees everything
first: the safe default), otherwise to the patient's care team.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from lockbox.db.uow import runtime_of
from lockbox.directory.models import Pool
from lockbox.routing.models import RoutingDecision

DEFAULT_POOL = "nurse-triage"


@dataclass(frozen=True)
class Decision:
    urgency: str
    topic: str
    pool_id: str | None
    assignee_id: str | None
    rule: str
    explanation: str
    emergency: bool = False
    auto_reply: str | None = None


def route_patient_message(
    session: Session, *, patient_id: str, care_team_id: str | None, subject: str, body: str, urgent: bool
) -> Decision:
    urgency = "urgent" if urgent else "routine"
    if session.get(Pool, DEFAULT_POOL) is not None:
        return Decision(urgency, "other", DEFAULT_POOL, None, "default",
                        "Default route: patient messages go to nurse triage.")
    return Decision(urgency, "other", None, None, "default-care-team",
                    "No nurse-triage pool: routed to the patient's care team.")


def route_patient_reply(
    session: Session, *, thread_id: str, patient_id: str, body: str
) -> Decision | None:
    """Re-triage hook for replies; the default route never changes a thread's route."""
    return None


def record_decision(session: Session, *, thread_id: str, message_id: str, decision: Decision) -> RoutingDecision:
    row = RoutingDecision(
        thread_id=thread_id,
        message_id=message_id,
        urgency=decision.urgency,
        topic=decision.topic,
        pool_id=decision.pool_id,
        assignee_id=decision.assignee_id,
        rule=decision.rule,
        explanation=decision.explanation,
        created_at=runtime_of(session).clock.now(),
    )
    session.add(row)
    return row
