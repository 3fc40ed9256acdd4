"""One-time enrolment codes: issued by the directory, stored hashed, expiring and single-use."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy.orm import Session

from lockbox.db.uow import runtime_of
from lockbox.identity.models import User

# Unambiguous alphabet (no 0/O, 1/I/L): codes are read aloud and typed from paper.
_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"


def hash_code(code: str) -> str:
    normalized = code.replace("-", "").replace(" ", "").upper()
    return hashlib.sha256(normalized.encode()).hexdigest()


def issue_enrolment_code(session: Session, *, user: User) -> str:
    """A new code for ``user`` (replacing any earlier one), valid for ``enrolment_code_ttl_s``."""
    rt = runtime_of(session)
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(16))  # ~79 bits
    code = "-".join(raw[i : i + 4] for i in range(0, 16, 4))
    user.enrolment_code_hash = hash_code(code)
    user.enrolment_expires_at = rt.clock.now() + timedelta(seconds=rt.settings.enrolment_code_ttl_s)
    return code
