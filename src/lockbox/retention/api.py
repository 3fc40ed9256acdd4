"""Legal holds for compliance and admin: place, list, release. Everyone else gets 404."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Path, Query

from lockbox.http import Caller, Db
from lockbox.retention import schemas, service

router = APIRouter(tags=["retention"])
HoldId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[0-9a-f]+$")]


@router.post("/legal-holds", status_code=201, response_model=schemas.HoldOut)
async def place_hold(data: schemas.HoldCreate, actor: Caller, db: Db) -> schemas.HoldOut:
    hold = await db.write(service.place_hold, actor=actor, patient=data.patient, thread_id=data.thread,
                          reason=data.reason)
    return schemas.HoldOut(**asdict(hold))


@router.get("/legal-holds", response_model=list[schemas.HoldOut])
async def list_holds(actor: Caller, db: Db, released: Annotated[bool, Query()] = False) -> list[schemas.HoldOut]:
    holds = await db.read(service.list_holds, actor=actor, include_released=released)
    return [schemas.HoldOut(**asdict(h)) for h in holds]


@router.post("/legal-holds/{hold_id}/release", response_model=schemas.HoldOut)
async def release_hold(hold_id: HoldId, actor: Caller, db: Db) -> schemas.HoldOut:
    return schemas.HoldOut(**asdict(await db.write(service.release_hold, actor=actor, hold_id=hold_id)))


@router.get("/retention/policies", response_model=list[schemas.PolicyOut])
async def retention_policies(actor: Caller, db: Db) -> list[schemas.PolicyOut]:
    rules = await db.read(service.policies_for, actor=actor)
    return [schemas.PolicyOut(kind=p.kind, days=p.days, after=p.after) for p in rules.values()]
