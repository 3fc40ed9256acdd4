"""What a unit of work carries besides SQL: the runtime, pending audit entries and post-commit events.

Services reach these through the session they are given, so they stay free of globals and HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.orm import Session

F = TypeVar("F", bound=Callable[..., Any])

if TYPE_CHECKING:
    from lockbox.clock import Clock
    from lockbox.config import Settings
    from lockbox.crypto.keys import Keyring


@dataclass
class Runtime:
    settings: Settings
    keyring: Keyring
    clock: Clock
    # Receives (user_ids, event) after commit; the realtime hub plugs in here.
    publish: Callable[[Iterable[str], dict[str, Any]], None] = field(default=lambda users, event: None)
    # Receives session ids whose clients must be disconnected (and optionally wiped) after commit.
    end_sessions: Callable[[Iterable[str], bool], None] = field(default=lambda sessions, wipe: None)
    # Receives the audit chain head after each commit, to be kept outside the database.
    audit_head: Callable[[int, str], None] = field(default=lambda seq, hash_: None)


@dataclass(frozen=True, slots=True)
class Credentials:
    """A caller not yet authenticated: passed as ``actor=`` to ``Database.write``/``read``, it is
    resolved to an Actor inside the unit itself, so a request costs one trip to the database."""

    token: str
    client_addr: str | None = None


# Set on a unit of work that resolves ``actor=Credentials`` itself, with a statement it runs anyway.
RESOLVES_CREDENTIALS = "__lockbox_resolves_credentials__"


def resolves_credentials(fn: F) -> F:
    """Mark ``fn`` as taking ``actor=`` as Credentials: the writer then hands them over unresolved, and
    ``fn`` must authenticate them (``identity.sessions.accept``) before anything else. For the send path,
    where the session lookup joins the access check: one round trip fewer on PostgreSQL."""
    setattr(fn, RESOLVES_CREDENTIALS, True)
    return fn


def runtime_of(session: Session) -> Runtime:
    runtime = session.info.get("runtime")
    if runtime is None:
        raise RuntimeError("session opened outside Database: no runtime attached")
    return runtime


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the unit's transaction is durably committed, never before."""
    session.info.setdefault("after_commit", []).append(callback)


def publish(session: Session, user_ids: Iterable[str], event: dict[str, Any]) -> None:
    """Queue a real-time event for these users, sent only if the unit commits."""
    users = list(dict.fromkeys(user_ids))
    runtime = runtime_of(session)
    after_commit(session, lambda: runtime.publish(users, event))


def end_sessions(session: Session, session_ids: Iterable[str], *, wipe: bool = False) -> None:
    ids = list(session_ids)
    runtime = runtime_of(session)
    after_commit(session, lambda: runtime.end_sessions(ids, wipe))
