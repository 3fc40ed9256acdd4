"""Identity matching: a Lockbox patient is the EHR Patient carrying their MRN (identifier system configurable),
a staff member is the Practitioner (or the PractitionerRole's practitioner) carrying their NPI or other
identifier. Anything but exactly one consistent match is a mismatch for a person to resolve: never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from lockbox.fhir.client import FhirClient, references


@dataclass(frozen=True)
class Outcome:
    status: str  # linked | not_found | ambiguous | mismatch | inactive
    reason: str | None = None
    fhir_type: str | None = None
    fhir_id: str | None = None


async def find_patients(client: FhirClient, *, system: str, mrn: str) -> list[dict[str, Any]]:
    return await client.search("Patient", {"identifier": f"{system}|{mrn}"})


async def find_practitioners(client: FhirClient, *, system: str, value: str) -> list[dict[str, Any]]:
    """Practitioners with the identifier; failing that, the practitioners of PractitionerRoles with it."""
    found = await client.search("Practitioner", {"identifier": f"{system}|{value}"})
    if found:
        return found
    roles = await client.search("PractitionerRole", {"identifier": f"{system}|{value}"})
    ids = list(dict.fromkeys(rid for role in roles
                             for _, rid in references([role.get("practitioner")], "Practitioner")))
    return [await client.read("Practitioner", rid) for rid in ids]


def decide_patient(found: list[dict[str, Any]], *, birth_date: date, linked_to: str | None = None) -> Outcome:
    if not found:
        return Outcome("not_found", "no_patient_with_mrn")
    if len(found) > 1:
        return Outcome("ambiguous", f"{min(len(found), 99)}_patients_with_mrn")
    patient = found[0]
    fhir_id = str(patient.get("id") or "")
    if not fhir_id:
        return Outcome("mismatch", "patient_without_id")
    if patient.get("active") is False:
        return Outcome("inactive", "patient_inactive", "Patient", fhir_id)
    born = patient.get("birthDate")
    if isinstance(born, str) and born[:10] != birth_date.isoformat():
        return Outcome("mismatch", "birth_date_differs", "Patient", fhir_id)
    if linked_to is not None and linked_to != fhir_id:
        # The MRN now names another record (a merge, a re-issued number): a person decides.
        return Outcome("mismatch", "mrn_moved", "Patient", fhir_id)
    return Outcome("linked", None, "Patient", fhir_id)


def decide_staff(found: list[dict[str, Any]], *, linked_to: str | None = None) -> Outcome:
    if not found:
        return Outcome("not_found", "no_practitioner_with_identifier")
    ids = list(dict.fromkeys(str(p.get("id") or "") for p in found))
    if len(ids) > 1:
        return Outcome("ambiguous", f"{min(len(ids), 99)}_practitioners_with_identifier")
    fhir_id = ids[0]
    if not fhir_id:
        return Outcome("mismatch", "practitioner_without_id")
    if found[0].get("active") is False:
        return Outcome("inactive", "practitioner_inactive", "Practitioner", fhir_id)
    if linked_to is not None and linked_to != fhir_id:
        return Outcome("mismatch", "identifier_moved", "Practitioner", fhir_id)
    return Outcome("linked", None, "Practitioner", fhir_id)
