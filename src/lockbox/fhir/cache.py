"""The short-lived, in-memory cache of each patient's clinical context as the EHR last described it.

Memory only, bounded, per process: condition codes are PHI and are not copied into the database; a restart
simply reads them again. cachetools' TTL caches drop an entry at expiry, but routing wants the stale entry
(better than nothing while a refresh runs), so each entry carries its own fetch time.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class ClinicalContext:
    """What the EHR says about a patient, in FHIR terms (ids are the EHR's, codes are system|code)."""

    fhir_patient_id: str
    practitioner_ids: tuple[str, ...] = ()  # generalPractitioner, as Practitioner ids
    care_team_member_ids: tuple[str, ...] = ()  # active CareTeam participants, as Practitioner ids
    care_team_keys: tuple[str, ...] = ()  # Lockbox care-team ids named by CareTeam identifiers
    conditions: tuple[str, ...] = ()
    last_encounter_at: datetime | None = None
    last_surgery_at: datetime | None = None
    fetched_at: float = field(default_factory=time.monotonic)


class ContextCache:
    def __init__(self, *, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, ClinicalContext] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, patient_id: str) -> ClinicalContext | None:
        with self._lock:
            entry = self._entries.get(patient_id)
            if entry is not None:
                self._entries.move_to_end(patient_id)
            return entry

    def put(self, patient_id: str, context: ClinicalContext) -> None:
        with self._lock:
            self._entries[patient_id] = context
            self._entries.move_to_end(patient_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def drop(self, patient_id: str) -> None:
        with self._lock:
            self._entries.pop(patient_id, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
