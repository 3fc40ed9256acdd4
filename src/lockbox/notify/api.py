"""Notify routes: the caller's quiet hours, and the outbox for admins (dead letters included)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from lockbox.http import Caller, Db
from lockbox.notify import schemas, service

router = APIRouter(tags=["notify"])


@router.get("/me/notifications", response_model=schemas.PreferencesOut)
async def my_preferences(actor: Caller, db: Db) -> schemas.PreferencesOut:
    return await db.read(service.my_preferences, actor=actor)


@router.put("/me/notifications", response_model=schemas.PreferencesOut)
async def set_my_preferences(data: schemas.PreferencesIn, actor: Caller, db: Db) -> schemas.PreferencesOut:
    return await db.write(service.set_my_preferences, actor=actor, data=data)


@router.get("/admin/notifications", response_model=list[schemas.NotificationOut])
async def list_notifications(
    actor: Caller,
    db: Db,
    status: Annotated[schemas.Status | None, Query(description="failed: the dead letters")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[schemas.NotificationOut]:
    return await db.read(service.list_notifications, actor=actor, status=status, limit=limit)
