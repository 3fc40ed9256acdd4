"""Routing routes: claim, release and transfer a thread, complete its call-back, explain its routing,
a pool's workload and a staff member's duty switch. Thin wrappers around routing.service."""

from __future__ import annotations

from fastapi import APIRouter

from lockbox.http import Caller, Db
from lockbox.routing import schemas, service

router = APIRouter(tags=["routing"])


@router.post("/threads/{thread_id}/claim", response_model=schemas.Assignment)
async def claim(thread_id: str, actor: Caller, db: Db) -> schemas.Assignment:
    return await db.write(service.claim, actor=actor, thread_id=thread_id)


@router.post("/threads/{thread_id}/release", response_model=schemas.Assignment)
async def release(thread_id: str, actor: Caller, db: Db) -> schemas.Assignment:
    return await db.write(service.release, actor=actor, thread_id=thread_id)


@router.post("/threads/{thread_id}/transfer", response_model=schemas.Assignment)
async def transfer(thread_id: str, data: schemas.TransferRequest, actor: Caller, db: Db) -> schemas.Assignment:
    return await db.write(service.transfer, actor=actor, thread_id=thread_id, to=data.to)


@router.post("/threads/{thread_id}/callback/complete", response_model=schemas.CallbackOut)
async def complete_callback(thread_id: str, actor: Caller, db: Db) -> schemas.CallbackOut:
    return await db.write(service.complete_callback, actor=actor, thread_id=thread_id)


@router.get("/threads/{thread_id}/routing", response_model=list[schemas.DecisionOut])
async def decisions(thread_id: str, actor: Caller, db: Db) -> list[schemas.DecisionOut]:
    return await db.read(service.decisions, actor=actor, thread_id=thread_id)


@router.get("/threads/{thread_id}/routing/clock", response_model=schemas.ClockOut)
async def clock(thread_id: str, actor: Caller, db: Db) -> schemas.ClockOut:
    return await db.read(service.clock, actor=actor, thread_id=thread_id)


@router.get("/pools/{pool_id}/workload", response_model=list[schemas.WorkloadOut])
async def workload(pool_id: str, actor: Caller, db: Db) -> list[schemas.WorkloadOut]:
    return await db.read(service.pool_workload, actor=actor, pool_id=pool_id)


@router.get("/routing/duty", response_model=schemas.DutyOut)
async def duty(actor: Caller, db: Db) -> schemas.DutyOut:
    return await db.read(service.duty_status, actor=actor)


@router.put("/routing/duty", response_model=schemas.DutyOut)
async def set_duty(data: schemas.DutyRequest, actor: Caller, db: Db) -> schemas.DutyOut:
    return await db.write(service.set_duty, actor=actor, available=data.available)
