"""What a unit of work carries besides SQL: the runtime, pending audit entries and post-commit events.

Services reach these through the session they are given, so they stay free of globals and HTTP.
"""

from __future__ import annotations

import pickle
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


# The test suite sets this: every unit's arguments, outcome and callbacks then make the round trip they would
# make to the writer process and back (lockbox.db.writer_process), so whatever cannot travel fails a test.
CHECK_CROSSING = False

# What runs after a commit: a module-level function of the server's runtime and plain arguments. The unit
# may run in the writer process (lockbox.db.writer_process); the callback then travels back by reference
# and runs in the server, whose sockets, job workers and caches it is about.
AfterCommit = Callable[..., None]


def after_commit(session: Session, callback: AfterCommit, *args: Any) -> None:
    """Run ``callback(runtime, *args)`` in the server once the unit's transaction is durably committed,
    never before. ``callback`` must be a module-level function and ``args`` picklable."""
    if CHECK_CROSSING:
        callback, args = pickle.loads(pickle.dumps((callback, args), protocol=pickle.HIGHEST_PROTOCOL))  # noqa: S301
    session.info.setdefault("after_commit", []).append((callback, args))


def _publish(runtime: Runtime, users: list[str], event: dict[str, Any]) -> None:
    runtime.publish(users, event)


def _end_sessions(runtime: Runtime, ids: list[str], wipe: bool) -> None:
    runtime.end_sessions(ids, wipe)


def publish(session: Session, user_ids: Iterable[str], event: dict[str, Any]) -> None:
    """Queue a real-time event for these users, sent only if the unit commits."""
    after_commit(session, _publish, list(dict.fromkeys(user_ids)), event)


def end_sessions(session: Session, session_ids: Iterable[str], *, wipe: bool = False) -> None:
    after_commit(session, _end_sessions, list(session_ids), wipe)
