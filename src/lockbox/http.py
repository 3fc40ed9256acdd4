"""The HTTP edge shared by every router: app state, the acting user, error rendering, safe headers."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
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


def credentials(request: Request) -> Credentials:
    """The caller's credentials, resolved inside the unit of work that serves the request (401 without)."""
    token = bearer_token(request)
    if not token or len(token) > 200:
        raise Unauthenticated()
    return Credentials(token, client_addr(request))


async def caller(request: Request) -> Credentials:
    """``credentials`` as a dependency. ``async`` although it awaits nothing: FastAPI runs a plain ``def``
    dependency in the thread pool, a thread hop per request."""
    return credentials(request)


async def _database(request: Request) -> Database:
    # async for the same reason as ``caller``; ``database`` stays a plain function for direct calls.
    return state(request).db


CurrentActor = Annotated[Actor, Depends(current_actor)]
Caller = Annotated[Credentials, Depends(caller)]
Db = Annotated[Database, Depends(_database)]


Model = TypeVar("Model", bound=BaseModel)


# Models of bodies read by ``json_body``: FastAPI lists only parameters' models under components.
_BODY_MODELS: dict[str, type[BaseModel]] = {}


def json_body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of a route that reads its body with ``json_body``: the request body FastAPI
    documents for a body parameter of that model, a reference to it under components, which
    ``document_body_models`` adds (clients generated from the schema keep the model's name)."""
    _BODY_MODELS[model.__name__] = model
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def document_body_models(app: FastAPI) -> None:
    """Add the models of ``json_body_openapi`` routes to the app's OpenAPI components."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, model in _BODY_MODELS.items():
                doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(doc.pop("$defs", {}))
                components[name] = doc
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _is_json(content_type: str) -> bool:
    kind = content_type.partition(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


async def json_body(request: Request, model: type[Model]) -> Model:
    """The request's JSON body as ``model``, validated by pydantic straight from the bytes.

    For the hottest route (a reply), instead of a FastAPI body parameter: FastAPI parses the content type
    with ``email.message``, decodes the JSON with ``json``, then validates the dict through its resolver,
    about a tenth of a send's time on the event loop; ``model_validate_json`` does it in one pass in
    Rust. The outcome is FastAPI's: a JSON content type is required, and anything missing, malformed or
    invalid is the same 422 ``invalid_input`` naming fields only, never echoing the input."""
    try:
        raw = await request.body()
    except StarletteHTTPException:
        raise  # a middleware's own answer (a body over a size limit), as FastAPI lets it through
    except Exception as exc:  # as FastAPI answers a body it could not read (the client went away)
        raise StarletteHTTPException(400, "There was an error parsing the body") from exc
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    if not _is_json(request.headers.get("content-type", "")):
        raise RequestValidationError([{"type": "model_attributes_type", "loc": ("body",), "input": None,
                                       "msg": "Input should be a valid dictionary or object to extract fields from"}])
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in errors]) from None


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
        self.always_hsts = hsts
        common = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"cross-origin-opener-policy", b"same-origin"),
        ]
        no_store = [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]
        # Patient data must not linger in browser or proxy caches.
        api = [*no_store, (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")]
        hsts_header = [(b"strict-transport-security", b"max-age=63072000; includeSubDomains")]
        # The extra headers of each kind of path, without and with HSTS, made once rather than per request.
        self.extra: dict[tuple[str, bool], list[tuple[bytes, bytes]]] = {}
        for kind, own in (("api", api), ("static", []), ("page", no_store)):
            self.extra[(kind, False)] = common + own
            self.extra[(kind, True)] = common + own + hsts_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        # Only static assets may be cached; every page and API answer may carry patient data.
        cacheable = path.startswith("/static/")
        kind = "api" if path.startswith("/api/") else "static" if cacheable else "page"
        extra = self.extra[(kind, self.always_hsts or scope.get("scheme") == "https")]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                if not cacheable:
                    headers = [h for h in headers if h[0].lower() != b"cache-control"]
                message["headers"] = [*headers, *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def json_error(status: int, code: str, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail, **extra}, status_code=status)
