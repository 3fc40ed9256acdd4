"""Key bookkeeping inside units of work: seal counts per key-encryption key."""

from __future__ import annotations

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from lockbox.crypto import aead
from lockbox.crypto.exceptions import KeyExhausted
from lockbox.crypto.models import KeyUsage


def count_seal(session: Session, *, key_version: int, n: int = 1) -> int:
    """Count ``n`` seals under a key-encryption key; refuse once it nears the random-nonce limit."""
    result = session.execute(
        update(KeyUsage).where(KeyUsage.key_version == key_version).values(seals=KeyUsage.seals + n)
        .returning(KeyUsage.seals).execution_options(synchronize_session=False)
    ).first()
    if result is None:
        session.execute(insert(KeyUsage).values(key_version=key_version, seals=n))
        total = n
    else:
        total = result[0]
    if total >= aead.SEAL_LIMIT:
        raise KeyExhausted(f"key version {key_version} reached its seal budget: run `lockbox keys rotate`")
    return total


def seals(session: Session, *, key_version: int) -> int:
    return session.scalar(select(KeyUsage.seals).where(KeyUsage.key_version == key_version)) or 0
