"""Routing's EHR context: the patient's PCP, care team, active conditions, last encounter and recent surgery,
read from FHIR and served to the routing engine as ``routing_context = "fhir"``.

The provider runs inside the writer thread on the send path, so it never waits for the network: it answers
from the in-memory cache (fresh, or stale while a refresh runs) and asks the FHIR runtime to refresh in the
background. With nothing cached (a first message, the EHR down since start) it answers what the directory
knows, exactly as ``routing_context = "directory"`` would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lockbox.config import Settings
from lockbox.db.uow import runtime_of
from lockbox.directory.models import CareTeam
from lockbox.fhir.cache import ClinicalContext
from lockbox.fhir.client import FhirClient, references
from lockbox.fhir.exceptions import FhirError
from lockbox.fhir.models import FhirLink
from lockbox.fhir.runtime import FhirRuntime, runtime_for
from lockbox.routing.context import DirectoryContextProvider, PatientContext, register_provider

log = logging.getLogger(__name__)

SNOMED = "http://snomed.info/sct"
ICD10 = ("http://hl7.org/fhir/sid/icd-10-cm", "http://hl7.org/fhir/sid/icd-10")
# SNOMED CT "Surgical procedure": the Procedure.category that marks an operation.
SURGICAL_CATEGORY = "387713003"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
ACTIVE_CLINICAL = {"active", "recurrence", "relapse"}
MATCH_JOB = "fhir.match_patient"
# Statuses the EHR itself may resolve (a mismatch waits for a person), and how often they are asked about again.
RECHECK = {"not_found", "ambiguous", "inactive"}
RECHECK_AFTER = timedelta(days=1)


# -- reading the EHR (on the FHIR runtime's loop) ------------------------------------------------


def _when(value: Any) -> datetime | None:
    """A FHIR dateTime/date as an aware UTC datetime; a date alone means its start, in UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        if len(value) <= 10:
            parts = [int(p) for p in value.split("-")]
            return datetime(parts[0], parts[1] if len(parts) > 1 else 1, parts[2] if len(parts) > 2 else 1,
                            tzinfo=UTC)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _latest(*values: datetime | None) -> datetime | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def condition_codes(conditions: list[dict[str, Any]]) -> tuple[str, ...]:
    """Active conditions' SNOMED CT and ICD-10 codes (bare codes: rules match them by prefix)."""
    codes: list[str] = []
    for cond in conditions:
        status = {c.get("code") for c in (cond.get("clinicalStatus") or {}).get("coding") or []
                  if c.get("system") == CONDITION_CLINICAL}
        if status and not status & ACTIVE_CLINICAL:
            continue
        for coding in (cond.get("code") or {}).get("coding") or []:
            if (coding.get("system") == SNOMED or coding.get("system") in ICD10) and coding.get("code"):
                codes.append(str(coding["code"])[:32])
    return tuple(dict.fromkeys(codes))


def _is_surgery(proc: dict[str, Any]) -> bool:
    return any(c.get("system") == SNOMED and c.get("code") == SURGICAL_CATEGORY
               for c in (proc.get("category") or {}).get("coding") or [])


def _performed(proc: dict[str, Any]) -> datetime | None:
    period = proc.get("performedPeriod") or {}
    return _latest(_when(proc.get("performedDateTime")), _when(period.get("end")), _when(period.get("start")))


async def gather_all(*calls: Awaitable[Any]) -> list[Any]:
    """Every result, or the first failure once all have finished (so no failure goes unread)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def _practitioners(client: FhirClient, refs: list[tuple[str, str]]) -> list[str]:
    """Practitioner ids behind Practitioner and PractitionerRole references (roles are read once each)."""
    ids = [rid for kind, rid in refs if kind == "Practitioner"]
    roles = [rid for kind, rid in refs if kind == "PractitionerRole"]
    for role in await gather_all(*(client.read("PractitionerRole", rid) for rid in dict.fromkeys(roles))):
        ids += [rid for _, rid in references([role.get("practitioner")], "Practitioner")]
    return list(dict.fromkeys(ids))


async def fetch_context(client: FhirClient, *, fhir_patient_id: str, care_team_system: str,
                        surgery_days: int, now: datetime) -> ClinicalContext:
    subject = f"Patient/{fhir_patient_id}"
    since = (now - timedelta(days=surgery_days)).date().isoformat()
    patient, teams, conditions, encounters, procedures = await gather_all(
        client.read("Patient", fhir_patient_id),
        client.search("CareTeam", {"subject": subject, "status": "active"}),
        client.search("Condition", {"subject": subject}),
        client.search("Encounter", {"subject": subject, "date": f"ge{since}"}),
        client.search("Procedure", {"subject": subject, "date": f"ge{since}"}),
    )
    pcp = await _practitioners(client, references(patient.get("generalPractitioner") or [],
                                                  "Practitioner", "PractitionerRole"))
    members: list[tuple[str, str]] = []
    keys: list[str] = []
    for team in teams:
        members += references([p.get("member") for p in team.get("participant") or []],
                              "Practitioner", "PractitionerRole")
        keys += [str(i["value"])[:64] for i in team.get("identifier") or []
                 if i.get("system") == care_team_system and i.get("value")]
    last_encounter = _latest(*(_latest(_when((e.get("period") or {}).get("end")),
                                       _when((e.get("period") or {}).get("start"))) for e in encounters))
    last_surgery = _latest(*(_performed(p) for p in procedures if _is_surgery(p) and p.get("status") != "not-done"))
    return ClinicalContext(
        fhir_patient_id=fhir_patient_id, practitioner_ids=tuple(pcp),
        care_team_member_ids=tuple(await _practitioners(client, members)), care_team_keys=tuple(keys),
        conditions=condition_codes(conditions), last_encounter_at=last_encounter, last_surgery_at=last_surgery)


def care_team_system(settings: Settings) -> str:
    return f"{settings.fhir_identifier_system}:care-team"


def refresh(rt: FhirRuntime, *, patient_id: str, fhir_patient_id: str, now: datetime) -> bool:
    """Ask for a background refresh of one patient's context; never waits. False if one is running."""
    settings = rt.settings

    async def run(client: FhirClient) -> None:
        try:
            ctx = await fetch_context(client, fhir_patient_id=fhir_patient_id,
                                      care_team_system=care_team_system(settings),
                                      surgery_days=settings.fhir_surgery_days, now=now)
        except FhirError as exc:
            # The stale entry, if any, keeps serving; the code says why (no EHR text, no patient).
            log.warning("FHIR context refresh failed: %s", exc.code)
            return
        rt.cache.put(patient_id, ctx)

    return rt.refresh_soon(patient_id, run)


# -- serving routing (in the writer, a process or thread: database and memory only) ------------------------


class FhirContextProvider:
    name = "fhir"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.directory = DirectoryContextProvider()

    def patient_context(self, session: Session, *, patient_id: str) -> PatientContext:
        base = self.directory.patient_context(session, patient_id=patient_id)
        if not self.settings.fhir_base_url:
            return base
        rt = runtime_for(self.settings)
        cached = rt.cache.get(patient_id)
        age = time.monotonic() - cached.fetched_at if cached is not None else None
        if cached is None or age is None or age >= self.settings.fhir_context_ttl_s:
            self._refresh(session, rt, patient_id, cached)
            cached = rt.cache.get(patient_id)  # dropped when the link changed
        if cached is None or age is None or age >= self.settings.fhir_context_max_stale_s:
            return base
        return self._merge(session, base, cached, stale=age >= self.settings.fhir_context_ttl_s)

    def _refresh(self, session: Session, rt: FhirRuntime, patient_id: str, cached: ClinicalContext | None) -> None:
        """Only on a miss or a stale entry: the link is read again, so a corrected link takes effect."""
        now = runtime_of(session).clock.now()
        link = session.get(FhirLink, patient_id)
        if link is None or (link.status in RECHECK and (link.checked_at is None
                                                        or now - link.checked_at > RECHECK_AFTER)):
            # Never matched, or not found a day ago (the EHR may have registered the patient since): a durable
            # job matches by MRN and warms this cache, at most once per patient a day.
            from lockbox.jobs.service import enqueue

            enqueue(session, kind=MATCH_JOB, payload={"patient_id": patient_id},
                    dedupe_key=f"{MATCH_JOB}:{patient_id}:{date.isoformat(now.date())}")
        if link is None or link.status != "linked" or not link.fhir_id:
            rt.cache.drop(patient_id)  # a mismatch waits for a person; routing uses the directory meanwhile
            return
        if cached is not None and cached.fhir_patient_id != link.fhir_id:
            rt.cache.drop(patient_id)
        refresh(rt, patient_id=patient_id, fhir_patient_id=link.fhir_id, now=now)

    def _merge(self, session: Session, base: PatientContext, ctx: ClinicalContext, *, stale: bool) -> PatientContext:
        wanted = set(ctx.practitioner_ids)
        staff: dict[str, str] = {}
        if wanted:
            rows = session.execute(select(FhirLink.fhir_id, FhirLink.user_id).where(
                FhirLink.kind == "staff", FhirLink.status == "linked", FhirLink.fhir_id.in_(wanted)))
            staff = {fhir_id: user_id for fhir_id, user_id in rows if fhir_id}
        pcp = next((staff[p] for p in ctx.practitioner_ids if p in staff), None)
        team = None
        if ctx.care_team_keys:
            team = session.scalar(select(CareTeam.id).where(CareTeam.id.in_(ctx.care_team_keys)).limit(1))
        return PatientContext(
            pcp_id=pcp or base.pcp_id, care_team_id=team or base.care_team_id, location_id=base.location_id,
            conditions=ctx.conditions, last_encounter_at=ctx.last_encounter_at, last_surgery_at=ctx.last_surgery_at,
            source="fhir-stale" if stale else "fhir")


register_provider("fhir", FhirContextProvider)
