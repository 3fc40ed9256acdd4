"""Server-side sessions: opaque bearer tokens stored as SHA-256, idle timeout and absolute lifetime.

A session is checked on every request against the database, so logout, revocation or deactivation
in any process takes effect on the next request everywhere.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lockbox.access.actor import Actor
from lockbox.db.uow import end_sessions, runtime_of
from lockbox.errors import Unauthenticated
from lockbox.identity.models import AuthSession, User
from lockbox.identity.roles import Role

# Activity is written back at most this often; the idle clock is that much coarser, never longer.
TOUCH_GRANULARITY_S = 15


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)  # 256 bits


def create_session(session: Session, *, user: User, device: str, client_addr: str) -> tuple[str, AuthSession]:
    """A new session with a new token: never reuse one across logins (session fixation)."""
    rt = runtime_of(session)
    now = rt.clock.now()
    token = new_token()
    auth = AuthSession(
        user_id=user.id,
        token_hash=hash_token(token),
        device=device[:200],
        client_addr=client_addr[:64],
        created_at=now,
        last_seen_at=now,
        expires_at=now + timedelta(seconds=rt.settings.session_lifetime_s),
        idle_timeout_s=rt.settings.idle_timeout_s,
    )
    session.add(auth)
    session.flush()
    return token, auth


def idle_deadline(auth: AuthSession) -> datetime:
    return min(auth.last_seen_at + timedelta(seconds=auth.idle_timeout_s), auth.expires_at)


def resolve_session(session: Session, *, token: str, client_addr: str | None = None) -> tuple[Actor, bool]:
    """The actor behind ``token`` and whether its activity should be written back (see touch_session).

    Any unknown, ended, idle or expired session is the same Unauthenticated, whatever the cause.
    """
    now = runtime_of(session).clock.now()
    row = session.execute(
        select(AuthSession, User)
        .join(User, User.id == AuthSession.user_id)
        .where(AuthSession.token_hash == hash_token(token))
    ).first()
    if row is None:
        raise Unauthenticated()
    auth, user = row
    if auth.ended_at is not None or not user.active or now >= idle_deadline(auth):
        raise Unauthenticated("Your session has ended. Sign in again.")
    actor = Actor(
        user_id=user.id,
        username=user.username,
        role=Role(user.role),
        display_name=user.display_name,
        session_id=auth.id,
        client_addr=client_addr,
    )
    stale = (now - auth.last_seen_at).total_seconds() >= min(TOUCH_GRANULARITY_S, auth.idle_timeout_s / 10)
    return actor, stale


def touch_session(session: Session, *, session_id: str) -> None:
    now = runtime_of(session).clock.now()
    session.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.ended_at.is_(None), AuthSession.last_seen_at < now)
        .values(last_seen_at=now)
    )


def end_user_sessions(
    session: Session, *, user_id: str, reason: str, wipe: bool = False, except_session: str | None = None
) -> list[str]:
    """End every open session of a user; open sockets are closed (and told to wipe) after commit."""
    now = runtime_of(session).clock.now()
    query = select(AuthSession.id).where(AuthSession.user_id == user_id, AuthSession.ended_at.is_(None))
    if except_session:
        query = query.where(AuthSession.id != except_session)
    ids = list(session.scalars(query))
    if ids:
        session.execute(
            update(AuthSession).where(AuthSession.id.in_(ids)).values(ended_at=now, end_reason=reason)
        )
        end_sessions(session, ids, wipe=wipe)
    return ids


def end_session(session: Session, *, session_id: str, reason: str, wipe: bool = False) -> bool:
    now = runtime_of(session).clock.now()
    result = session.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.ended_at.is_(None))
        .values(ended_at=now, end_reason=reason)
    )
    if result.rowcount:  # type: ignore[attr-defined]
        end_sessions(session, [session_id], wipe=wipe)
        return True
    return False
