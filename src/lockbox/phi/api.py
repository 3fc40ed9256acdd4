"""PHI scan route: staff check content before it leaves the message center."""

from __future__ import annotations

from fastapi import APIRouter, Request

from lockbox.http import Caller, Db, state
from lockbox.phi import schemas, service

router = APIRouter(tags=["phi"])


@router.post("/phi/scan", response_model=schemas.ScanResult)
async def scan(data: schemas.ScanRequest, actor: Caller, db: Db, request: Request) -> schemas.ScanResult:
    """Kinds and offsets of PHI indicators in the text and its risk; the text is neither stored nor logged."""
    settings = state(request).settings
    return await db.read(service.scan_for_staff, actor=actor, text=data.text, mode=settings.security_mode,
                         mrn_pattern=settings.phi_mrn_pattern)
