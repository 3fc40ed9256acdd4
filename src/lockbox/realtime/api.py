"""WebSocket ``/api/v1/events``: the caller's committed events, pushed as they happen.

Authenticated by the session (bearer header, the web UI's cookie, or a first ``auth`` frame for
clients that cannot set headers; never a token in the URL, where logs would keep it). The socket
closes when its session ends, after a ``wipe`` event if the session was wiped remotely.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from lockbox.access.actor import Actor
from lockbox.errors import Unauthenticated
from lockbox.http import SESSION_COOKIE, AppState, resolve_actor
from lockbox.identity import sessions
from lockbox.realtime.hub import CLOSE

router = APIRouter(tags=["realtime"])

# How often an open socket re-checks its session, so an idle or revoked session cannot outlive it.
RECHECK_S = 5.0
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
    actor, token = auth
    assert actor.session_id is not None
    hub = app_state.hub
    sub = hub.subscribe(actor.user_id, actor.session_id)
    await ws.send_json({"type": "ready", "user_id": actor.user_id})
    reader = asyncio.create_task(_drain_client(ws))
    try:
        while not reader.done():
            try:
                event = await asyncio.wait_for(sub.queue.get(), RECHECK_S)
            except TimeoutError:
                if not await _still_valid(app_state, token):
                    await ws.send_json({"type": "session_ended"})
                    break
                continue
            if event is CLOSE or event.get("type") == "_close":
                break
            await ws.send_json(event)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.unsubscribe(sub)
        reader.cancel()
        with contextlib.suppress(Exception):
            await ws.close(code=CLOSE_UNAUTHENTICATED)


async def _still_valid(app_state: AppState, token: str) -> bool:
    """An open socket is not activity: this check never extends the session's idle timeout."""
    try:
        await app_state.db.read(sessions.resolve_session, token=token)
        return True
    except Unauthenticated:
        return False


async def _drain_client(ws: WebSocket) -> None:
    """Clients only ping; reading keeps disconnects visible."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await ws.receive_text()
