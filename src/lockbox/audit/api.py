"""The compliance API: audit trail, alerts and chain verification, for compliance and admin only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from lockbox.audit import service
from lockbox.audit.schemas import AlertOut, AuditRowOut, VerifyReportOut
from lockbox.http import CurrentActor, Db

router = APIRouter(tags=["audit"])


@router.get("/audit")
async def search_audit(
    actor: CurrentActor,
    db: Db,
    actor_id: Annotated[str | None, Query(alias="actor", max_length=64, description="user id that acted")] = None,
    action: Annotated[str | None, Query(max_length=64, description="action prefix, e.g. identity.login")] = None,
    since: Annotated[datetime | None, Query(description="from this time (inclusive), UTC if no zone")] = None,
    until: Annotated[datetime | None, Query(description="up to this time (exclusive)")] = None,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="rows with a smaller seq (next page)")] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 100,
) -> list[AuditRowOut]:
    return await db.read(service.search_log, actor=actor, actor_id=actor_id, action=action, since=since,
                         until=until, before_seq=before, limit=limit)


@router.get("/audit/verify")
async def verify_audit(actor: CurrentActor, db: Db) -> VerifyReportOut:
    return VerifyReportOut.of(await db.read(service.verify_log, actor=actor))


@router.get("/alerts")
async def list_alerts(
    actor: CurrentActor,
    db: Db,
    acknowledged: Annotated[bool | None, Query(description="only acknowledged (true) or open (false)")] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 100,
) -> list[AlertOut]:
    return await db.read(service.list_alerts, actor=actor, acknowledged=acknowledged, limit=limit)


@router.post("/alerts/{alert_id}/acknowledge", status_code=204)
async def acknowledge_alert(
    actor: CurrentActor, db: Db, alert_id: Annotated[str, Path(max_length=64)]
) -> Response:
    await db.write(service.acknowledge_alert, actor=actor, alert_id=alert_id)
    return Response(status_code=204)
