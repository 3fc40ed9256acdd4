"""Routing's third phase: what the clinic knows about the patient (PCP, care team, location, active
conditions, a recent encounter or surgery), behind a provider interface chosen by ``routing_context``.

The directory provider answers from Lockbox's own tables; the FHIR integration registers its own
provider under another name with :func:`register_provider`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from lockbox.config import Settings
from lockbox.directory.models import CareTeam
from lockbox.identity.models import Patient, User


@dataclass(frozen=True)
class PatientContext:
    pcp_id: str | None = None
    care_team_id: str | None = None
    location_id: str | None = None
    # Active condition codes (ICD-10 / SNOMED); codes only, never display text.
    conditions: tuple[str, ...] = ()
    last_encounter_at: datetime | None = None
    last_surgery_at: datetime | None = None
    source: str = "directory"


class ContextProvider(Protocol):
    name: str

    def patient_context(self, session: Session, *, patient_id: str) -> PatientContext: ...


class DirectoryContextProvider:
    """PCP, care team and location from the directory; no clinical facts (those live in the EHR)."""

    name = "directory"

    def patient_context(self, session: Session, *, patient_id: str) -> PatientContext:
        row = session.execute(
            select(Patient.pcp_id, Patient.care_team_id, User.location_id, CareTeam.location_id)
            .select_from(Patient).join(User, User.id == Patient.user_id)
            .outerjoin(CareTeam, CareTeam.id == Patient.care_team_id)
            .where(Patient.user_id == patient_id)).first()
        if row is None:
            return PatientContext()
        pcp, team, own_location, team_location = row
        return PatientContext(pcp_id=pcp, care_team_id=team, location_id=own_location or team_location)


_factories: dict[str, Callable[[Settings], ContextProvider]] = {"directory": lambda s: DirectoryContextProvider()}
_instances: dict[tuple[int, str], ContextProvider] = {}


def register_provider(name: str, factory: Callable[[Settings], ContextProvider]) -> None:
    _factories[name] = factory
    for key in [k for k in _instances if k[1] == name]:
        del _instances[key]


def provider_for(settings: Settings) -> ContextProvider:
    name = settings.routing_context
    key = (id(settings), name)
    provider = _instances.get(key)
    if provider is None:
        factory = _factories.get(name)
        if factory is None:
            raise LookupError(f"no routing context provider named {name!r}")
        provider = _instances[key] = factory(settings)
    return provider
