"""Consent routes: the patient's own record and staff recording on the patient's behalf."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from lockbox.consent import schemas, service
from lockbox.http import Caller, Db

router = APIRouter(tags=["consent"])
Username = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]


@router.get("/me/consent", response_model=schemas.ConsentOverview)
async def my_consent(actor: Caller, db: Db) -> schemas.ConsentOverview:
    return await db.read(service.my_consent, actor=actor)


@router.post("/me/consent", status_code=201, response_model=schemas.ConsentOverview)
async def change_my_consent(data: schemas.ConsentChange, actor: Caller, db: Db) -> schemas.ConsentOverview:
    return await db.write(service.change_my_consent, actor=actor, data=data)


@router.get("/patients/{username}/consent", response_model=schemas.ConsentOverview)
async def patient_consent(username: Username, actor: Caller, db: Db) -> schemas.ConsentOverview:
    # A write: looking at a patient's record is itself audited.
    return await db.write(service.patient_consent, actor=actor, username=username)


@router.post("/patients/{username}/consent", status_code=201, response_model=schemas.ConsentOverview)
async def change_patient_consent(username: Username, data: schemas.ConsentChange, actor: Caller,
                                 db: Db) -> schemas.ConsentOverview:
    return await db.write(service.change_patient_consent, actor=actor, username=username, data=data)


@router.get("/patients/{username}/consent/fhir")
async def patient_consent_fhir(username: Username, actor: Caller, db: Db) -> dict[str, Any]:
    """A FHIR R4 Bundle (type collection) of Consent resources, newest first."""
    return await db.write(service.patient_consent_fhir, actor=actor, username=username)
