"""Health endpoints; ``/ping`` is the no-op the send benchmark measures the HTTP stack's ceiling with.

``/healthz`` says the process serves and reads its database (liveness); ``/readyz`` also checks that
the schema is current, the key provider answers and triage is warmed up (readiness: send traffic here).
``/metrics`` (at the root, for Prometheus) answers loopback callers or holders of ``LOCKBOX_METRICS_TOKEN``.
"""

from __future__ import annotations

import hmac
import logging
from functools import cache

import anyio.to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from lockbox.http import Db, json_error, state
from lockbox.routing import classify
from lockbox.system.metrics import Metrics, is_loopback

log = logging.getLogger(__name__)

router = APIRouter(tags=["system"])
# Mounted at the root by the app, outside /api/v1 and the OpenAPI schema.
metrics_router = APIRouter(include_in_schema=False)


def _ready(session: Session) -> bool:
    session.execute(text("SELECT 1"))
    return True


@cache
def _head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    from lockbox.db.engine import alembic_config

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def _schema_revision(session: Session) -> str | None:
    return session.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


@router.get("/ping")
async def ping() -> dict[str, bool]:
    return {"ok": True}


@router.get("/healthz")
async def healthz(db: Db) -> dict[str, bool]:
    return {"ok": await db.read(_ready)}


@router.get("/readyz", responses={503: {"description": "Not ready: the body names the failing check"}})
async def readyz(request: Request, db: Db) -> JSONResponse:
    """200 ``{"ok": true, "checks": {...}}`` when every check passes; 503 with the failing ones otherwise."""
    checks: dict[str, bool] = {}
    try:
        revision = await db.read(_schema_revision)
        checks["database"] = True
        checks["migrations"] = revision == _head_revision()
    except SQLAlchemyError as exc:
        log.warning("readyz: database check failed: %s", type(exc).__name__)
        checks["database"] = checks["migrations"] = False
    checks["keys"] = await anyio.to_thread.run_sync(_keys_ready, request)
    # Until the triage engine is built (seconds after start) a patient's message would wait for it.
    checks["triage"] = classify.is_warm()
    if db.writer_process is not None:  # it warms its own triage engine before taking units
        checks["writer"] = db.writer_ready()
    ok = all(checks.values())
    return JSONResponse({"ok": ok, "checks": checks}, status_code=200 if ok else 503)


def _keys_ready(request: Request) -> bool:
    """The key provider answers: the key file is still there and readable, or Vault is reachable."""
    provider = state(request).db.runtime.keyring.provider
    try:
        check = getattr(provider, "ready", None)
        return bool(check()) if callable(check) else provider.active_version() > 0
    except Exception as exc:
        log.warning("readyz: key provider check failed: %s", type(exc).__name__)
        return False


@metrics_router.get("/metrics")
async def metrics(request: Request) -> Response:
    settings = state(request).settings
    token = settings.metrics_token
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    allowed = bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token or "")
    # A loopback peer that forwards for someone else (a local proxy) is not a local caller.
    forwarded = "x-forwarded-for" in request.headers or "forwarded" in request.headers
    if not allowed and not (is_loopback(request.client.host if request.client else None) and not forwarded):
        return json_error(404, "not_found", "Not found.")
    registry: Metrics = request.app.state.metrics
    body = await anyio.to_thread.run_sync(generate_latest, registry.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
