"""Filing a thread into the patient's chart: a clinician's request and its outcome."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from lockbox.fhir import context as _context  # noqa: F401 - registers the "fhir" routing context provider
from lockbox.fhir import schemas, service
from lockbox.http import Caller, Db

router = APIRouter(tags=["fhir"])
ThreadId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


@router.post("/threads/{thread_id}/file", status_code=202, response_model=schemas.FilingOut)
async def file_thread(thread_id: ThreadId, actor: Caller, db: Db) -> schemas.FilingOut:
    """File the thread as FHIR Communication resources in the patient's EHR chart (queued; see GET)."""
    return await db.write(service.request_filing, actor=actor, thread_id=thread_id)


@router.get("/threads/{thread_id}/file", response_model=schemas.FilingOut)
async def filing_status(thread_id: ThreadId, actor: Caller, db: Db) -> schemas.FilingOut:
    return await db.read(service.filing_status, actor=actor, thread_id=thread_id)


@router.get("/fhir/links", response_model=list[schemas.LinkOut])
async def links(actor: Caller, db: Db, problems_only: bool = False) -> list[schemas.LinkOut]:
    """Each account's link to the EHR and, for mismatches, why (admin and compliance only)."""
    return await db.read(service.links_for, actor=actor, problems_only=problems_only)
