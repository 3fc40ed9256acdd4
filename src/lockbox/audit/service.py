"""Recording audit entries and alerts inside the unit of work whose change they describe."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from lockbox.audit.chain import Entry
from lockbox.audit.models import Alert
from lockbox.db.uow import runtime_of

if TYPE_CHECKING:
    from lockbox.access.actor import Actor

# Audit details carry identifiers, counts and flags only; free text could smuggle PHI into the log.
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.:@/+-]{0,80}$")
_ACTION = re.compile(r"^[a-z_]+(\.[a-z_]+){1,3}$")


def _check_details(details: dict[str, Any]) -> dict[str, Any]:
    for key, value in details.items():
        if isinstance(value, list):
            values = value
        else:
            values = [value]
        for v in values:
            if v is None or isinstance(v, bool | int):
                continue
            if not isinstance(v, str) or not _SAFE_VALUE.match(v):
                raise ValueError(f"audit detail {key!r} is not an identifier")
    return details


def record(
    session: Session,
    *,
    action: str,
    actor: Actor | None = None,
    actor_id: str | None = None,
    subject_type: str | None = None,
    subject_id: str | None = None,
    outcome: str = "success",
    **details: Any,
) -> None:
    """Queue an audit entry; it is chained and written in the same commit as the change, or not at all.

    ``action`` is ``domain.subject.action``; details are identifiers only (checked).
    """
    if not _ACTION.match(action):
        raise ValueError(f"audit action {action!r} is not domain.subject.action")
    entry = Entry(
        at=runtime_of(session).clock.now(),
        action=action,
        actor_id=actor.user_id if actor else actor_id,
        session_id=actor.session_id if actor else None,
        subject_type=subject_type,
        subject_id=subject_id,
        outcome=outcome,
        details=_check_details(details),
    )
    session.info.setdefault("audit", []).append(entry)


def raise_alert(
    session: Session,
    *,
    kind: str,
    actor_id: str | None = None,
    subject_type: str | None = None,
    subject_id: str | None = None,
    **details: Any,
) -> Alert:
    """An alert for the security officer (break-glass, failed-login bursts …), itself audited."""
    alert = Alert(
        kind=kind,
        at=runtime_of(session).clock.now(),
        actor_id=actor_id,
        subject_type=subject_type,
        subject_id=subject_id,
        details=_check_details(details),
    )
    session.add(alert)
    session.flush()
    record(session, action="audit.alert.raise", actor_id=actor_id, subject_type="alert", subject_id=alert.id,
           kind=kind)
    return alert
