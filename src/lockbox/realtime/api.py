"""WebSocket ``/api/v1/events``: the caller's committed events, pushed as they happen.

Authenticated by the session (bearer header, the web UI's cookie, or a first ``auth`` frame for
clients that cannot set headers; never a token in the URL, where logs would keep it). The socket
closes when its session ends, after a ``wipe`` event if the session was wiped remotely.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from sqlalchemy import select
from sqlalchemy.orm import Session

from lockbox.access.actor import Actor
from lockbox.db.uow import runtime_of
from lockbox.errors import Unauthenticated
from lockbox.http import SESSION_COOKIE, AppState, resolve_actor
from lockbox.identity import sessions
from lockbox.identity.models import AuthSession, User
from lockbox.realtime.hub import CLOSE

log = logging.getLogger(__name__)

router = APIRouter(tags=["realtime"])

# How often open sockets' sessions are re-checked, so an idle or expired session cannot outlive its
# socket (ended sessions are closed at once by the hub; this catches time running out).
RECHECK_S = 5.0
RECHECK_BATCH = 500
AUTH_FRAME_TIMEOUT_S = 10.0
CLOSE_UNAUTHENTICATED = 4401


async def _authenticate(ws: WebSocket, app_state: AppState) -> tuple[Actor, str] | None:
    header = ws.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    candidate = token.strip() if scheme.lower() == "bearer" else ws.cookies.get(SESSION_COOKIE)
    addr = ws.client.host if ws.client else None
    if not candidate:
        try:
            frame = json.loads(await asyncio.wait_for(ws.receive_text(), AUTH_FRAME_TIMEOUT_S))
            candidate = frame.get("token") if isinstance(frame, dict) and frame.get("type") == "auth" else None
        except (TimeoutError, ValueError, WebSocketDisconnect):
            return None
    if not isinstance(candidate, str):
        return None
    try:
        return await resolve_actor(app_state.db, candidate, addr), candidate
    except Unauthenticated:
        return None


@router.websocket("/events")
async def events(ws: WebSocket) -> None:
    app_state: AppState = ws.app.state.lockbox
    await ws.accept()
    auth = await _authenticate(ws, app_state)
    if auth is None or auth[0].session_id is None:
        await ws.send_json({"type": "error", "error": "unauthenticated"})
        await ws.close(code=CLOSE_UNAUTHENTICATED)
        return
    actor, _ = auth
    assert actor.session_id is not None
    hub = app_state.hub
    sub = hub.subscribe(actor.user_id, actor.session_id)
    _watch_sessions(app_state)
    await ws.send_json({"type": "ready", "user_id": actor.user_id})
    reader = asyncio.create_task(_drain_client(ws))
    # A client that goes away ends the stream: no timeout per event needed to notice it.
    reader.add_done_callback(lambda _: sub.close())
    try:
        while (frame := await sub.queue.get()) is not CLOSE:
            await ws.send_text(frame)  # encoded once by the hub for every socket it reaches
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.unsubscribe(sub)
        reader.cancel()
        with contextlib.suppress(Exception):
            await ws.close(code=CLOSE_UNAUTHENTICATED)


def open_sessions(session: Session, *, session_ids: list[str]) -> set[str]:
    """Which of these sessions may still be used: the rule of ``sessions.resolve_session``, for many
    sessions in one query. Reading is not activity: this never extends an idle timeout."""
    now = runtime_of(session).clock.now()
    still = set()
    for start in range(0, len(session_ids), RECHECK_BATCH):
        chunk = session_ids[start:start + RECHECK_BATCH]
        rows = session.execute(select(AuthSession, User.active).join(User, User.id == AuthSession.user_id)
                               .where(AuthSession.id.in_(chunk)))
        for auth, active in rows:
            if auth.ended_at is None and active and now < sessions.idle_deadline(auth):
                still.add(auth.id)
    return still


def _watch_sessions(app_state: AppState) -> None:
    """One watcher per process while sockets are open: a query every RECHECK_S for all of them,
    rather than one per socket (a thousand idle sockets would otherwise cost 200 queries a second)."""
    hub = app_state.hub
    if hub.session_watch is None or hub.session_watch.done():
        hub.session_watch = asyncio.create_task(_watch(app_state), name="lockbox-session-watch")


async def _watch(app_state: AppState) -> None:
    hub = app_state.hub
    while hub.subscriber_count():
        await asyncio.sleep(RECHECK_S)
        ids = hub.session_ids()
        if not ids:
            continue
        try:
            still = await app_state.db.read(open_sessions, session_ids=ids)
        except Exception as exc:  # the database is away: try again next round, keep the sockets
            log.warning("realtime: session re-check failed (%s)", type(exc).__name__)
            continue
        hub.close_here([sid for sid in ids if sid not in still])


async def _drain_client(ws: WebSocket) -> None:
    """Clients only ping; reading keeps disconnects visible."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await ws.receive_text()
