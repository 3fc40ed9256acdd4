"""PHI scanner: finds indicators of health information in text (spans only, never the words) and decides,
per security mode, whether outbound content must stay in the message center.

Risk rule (documented in docs/phi.md): an identifier (name on file, MRN, birth date, SSN, phone, email,
address) together with a clinical term (diagnosis, medication, ICD-10 code) is ``high``; a strong identifier
alone (SSN, MRN, name on file, birth date) is ``high`` too, because it ties the message to a patient of the
clinic; any other finding is ``low``; nothing found is ``none``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from lockbox.access.actor import Actor
    from lockbox.phi.schemas import ScanResult

KINDS = ("name", "mrn", "birth_date", "phone", "address", "ssn", "email", "diagnosis", "medication", "icd10")
IDENTIFIER_KINDS = frozenset({"name", "mrn", "birth_date", "phone", "address", "ssn", "email"})
# Identifiers that on their own point at one of the clinic's patients.
STRONG_IDENTIFIER_KINDS = frozenset({"name", "mrn", "birth_date", "ssn"})
CLINICAL_KINDS = frozenset({"diagnosis", "medication", "icd10"})

Risk = Literal["none", "low", "high"]


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class Assessment:
    risk: Risk
    findings: tuple[Finding, ...]

    def kinds(self) -> list[str]:
        """Sorted distinct kinds: the only part of an assessment that is safe to log or audit."""
        return sorted({f.kind for f in self.findings})


def rate(findings: Iterable[Finding]) -> Risk:
    kinds = {f.kind for f in findings}
    if not kinds:
        return "none"
    if kinds & STRONG_IDENTIFIER_KINDS:
        return "high"
    if kinds & IDENTIFIER_KINDS and kinds & CLINICAL_KINDS:
        return "high"
    return "low"


def scan(text: str, *, names_on_file: Iterable[str] = (), mrn_pattern: str | None = None) -> Assessment:
    """Every PHI indicator in ``text``, with the risk it adds up to. ``mrn_pattern`` defaults to the setting
    ``LOCKBOX_PHI_MRN_PATTERN``. Pure: no I/O, no logging (the text is PHI)."""
    from lockbox.phi import detect

    findings = detect.find_all(text, names_on_file=names_on_file, mrn_pattern=mrn_pattern)
    return Assessment(risk=rate(findings), findings=tuple(findings))


def warm() -> None:
    """Load the scanner's lexicons ahead of the first message (a server calls it at start, in a thread)."""
    from lockbox.phi import detect

    detect.warm()


def must_stay_secure(mode: str, assessment: Assessment) -> bool:
    """``always`` keeps every outbound message in the message center; ``adaptive`` only high-risk ones.
    Any other mode is treated as ``always``: the safe default."""
    if mode == "adaptive":
        return assessment.risk == "high"
    return True


def scan_for_staff(session: Session, *, actor: Actor, text: str, mode: str,
                   mrn_pattern: str | None = None) -> ScanResult:
    """The scan API: staff check content before it leaves; patients find no such thing (404)."""
    from lockbox.access import policy
    from lockbox.phi.schemas import FindingOut, ScanResult

    policy.require_staff(actor)
    assessment = scan(text, names_on_file=names_on_file(session), mrn_pattern=mrn_pattern)
    return ScanResult(risk=assessment.risk, kinds=assessment.kinds(),
                      findings=[FindingOut(kind=f.kind, start=f.start, end=f.end)
                                for f in assessment.findings],
                      stays_secure=must_stay_secure(mode, assessment))


# Patients' names are needed for every outbound email and change rarely: one aggregate query tells whether
# patients were added or removed; the names themselves are re-read then, or after _NAMES_TTL_S (renames).
_NAMES_TTL_S = 300.0
_names_lock = threading.Lock()
_names_cache: dict[str, tuple[float, tuple[object, ...], list[str]]] = {}


def names_on_file(session: Session) -> list[str]:
    """Display names of the patients in the directory (cached per database, see above)."""
    from lockbox.identity.models import Patient, User

    bind = session.get_bind()
    key = repr(bind.engine.url)  # the password is masked; the key never leaves this process
    patients = select(Patient.user_id).subquery()
    signature = tuple(session.execute(
        select(func.count(), func.max(User.created_at)).select_from(User).join(patients,
                                                                             patients.c.user_id == User.id)
    ).one())
    now = time.monotonic()
    with _names_lock:
        hit = _names_cache.get(key)
        if hit is not None and hit[1] == signature and now - hit[0] < _NAMES_TTL_S:
            return list(hit[2])
    names = sorted(set(session.scalars(select(User.display_name).join(Patient, Patient.user_id == User.id))))
    with _names_lock:
        _names_cache[key] = (now, signature, names)
    return list(names)


def forget_names() -> None:
    """Drop the cache (after a directory load, and between tests)."""
    with _names_lock:
        _names_cache.clear()
