"""The HTTP edge shared by every router: app state, the acting user, error rendering, safe headers."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lockbox.access.actor import Actor
from lockbox.config import Settings
from lockbox.crypto.exceptions import CryptoError, KeyExhausted
from lockbox.db import Database
from lockbox.db.uow import Credentials
from lockbox.errors import LockboxError, Throttled, Unauthenticated
from lockbox.identity import sessions
from lockbox.realtime.hub import Hub

log = logging.getLogger(__name__)

SESSION_COOKIE = "lockbox_session"


class ErrorBody(BaseModel):
    """Every error the API returns; some carry extra fields (``recipients`` for confirm_recipients)."""

    model_config = ConfigDict(extra="allow")

    error: str
    detail: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in [(400, "Bad input"), (401, "Not signed in"), (403, "Not allowed for this role"),
                         (404, "Not found, or not yours to see"), (409, "Conflict"),
                         (422, "Invalid payload"), (429, "Throttled")]
}


@dataclass
class AppState:
    settings: Settings
    db: Database
    hub: Hub


def state(request: Request) -> AppState:
    return request.app.state.lockbox


def database(request: Request) -> Database:
    return state(request).db


def client_addr(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.cookies.get(SESSION_COOKIE) or None


async def resolve_actor(db: Database, token: str | None, addr: str | None) -> Actor:
    if not token or len(token) > 200:
        raise Unauthenticated()
    actor, stale = await db.read(sessions.resolve_session, token=token, client_addr=addr)
    if stale and actor.session_id:
        # Activity is not an acknowledged write: no need to wait for it.
        db.submit(sessions.touch_session, session_id=actor.session_id)
    return actor


async def current_actor(request: Request) -> Actor:
    return await resolve_actor(database(request), bearer_token(request), client_addr(request))


async def caller(request: Request) -> Credentials:
    """The caller's credentials, resolved inside the unit of work that serves the request.

    ``async`` although it awaits nothing: FastAPI runs a plain ``def`` dependency in the thread pool,
    a thread hop per request on the send path."""
    token = bearer_token(request)
    if not token or len(token) > 200:
        raise Unauthenticated()
    return Credentials(token, client_addr(request))


async def _database(request: Request) -> Database:
    # async for the same reason as ``caller``; ``database`` stays a plain function for direct calls.
    return state(request).db


CurrentActor = Annotated[Actor, Depends(current_actor)]
Caller = Annotated[Credentials, Depends(caller)]
Db = Annotated[Database, Depends(_database)]


def error_response(exc: LockboxError) -> JSONResponse:
    headers = {}
    if isinstance(exc, Throttled):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    # Field paths and reasons only: the offending input may be PHI and is never echoed back.
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _where(request: Request) -> str:
    """The route's template (``/api/v1/patients/{username}/consent``), never the filled-in path: a
    path can name a patient."""
    route = request.scope.get("route")
    return f"{request.method} {getattr(route, 'path', 'unmatched route')}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LockboxError)
    async def _domain(_: Request, exc: LockboxError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid_input", "detail": _validation_detail(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = "Not found." if exc.status_code == 404 else str(exc.detail)
        return JSONResponse({"error": code, "detail": detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(KeyExhausted)
    async def _exhausted(request: Request, exc: KeyExhausted) -> JSONResponse:
        log.error("key budget exhausted on %s: run `lockbox keys rotate`", _where(request))
        return JSONResponse({"error": "unavailable", "detail": "Sending is paused until the encryption keys are "
                             "rotated. Your administrator has been told."}, status_code=503)

    @app.exception_handler(CryptoError)
    async def _crypto(request: Request, exc: CryptoError) -> JSONResponse:
        # Tampered or moved ciphertext: refuse to show it, and say so without saying what.
        log.error("integrity failure %s on %s", type(exc).__name__, _where(request))
        return JSONResponse({"error": "integrity_error",
                             "detail": "This content failed its integrity check and cannot be shown."},
                            status_code=500)

    @app.exception_handler(DataError)
    async def _unstorable(request: Request, exc: DataError) -> JSONResponse:
        # PostgreSQL refuses values SQLite takes (a NUL character in any text): bad input, not a bug.
        log.warning("database refused a value (%s) on %s", type(exc.orig).__name__, _where(request))
        return JSONResponse({"error": "invalid_input", "detail": "The request holds a value that cannot be "
                             "stored, such as a NUL character."}, status_code=400)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # The exception text may quote data; log its type and place only.
        log.error("unhandled %s on %s", type(exc).__name__, _where(request))
        return JSONResponse({"error": "internal", "detail": "Something went wrong on our side."}, status_code=500)


class SecurityHeaders:
    """Pure ASGI (no BaseHTTPMiddleware: it costs a task per request on the hot path)."""

    def __init__(self, app: ASGIApp, *, hsts: bool = False) -> None:
        # HSTS is sent on every HTTPS response (TLS terminated here) or always when ``hsts`` says the
        # public URL is HTTPS (TLS terminated by a proxy in front).
        self.app = app
        self.headers: list[tuple[bytes, bytes]] = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"cross-origin-opener-policy", b"same-origin"),
        ]
        self.always_hsts = hsts
        self.hsts = [(b"strict-transport-security", b"max-age=63072000; includeSubDomains")]
        self.no_store = [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]
        self.api_headers = [
            # Patient data must not linger in browser or proxy caches.
            (b"cache-control", b"no-store"),
            (b"pragma", b"no-cache"),
            (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_api = scope["path"].startswith("/api/")
        # Only static assets may be cached; every page and API answer may carry patient data.
        cacheable = scope["path"].startswith("/static/")
        extra = self.headers + (self.api_headers if is_api else [] if cacheable else self.no_store)
        if self.always_hsts or scope.get("scheme") == "https":
            extra = extra + self.hsts

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"cache-control" or cacheable]
                message["headers"] = headers + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


def json_error(status: int, code: str, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail, **extra}, status_code=status)
