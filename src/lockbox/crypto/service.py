"""Key-encryption-key usage against the random-nonce limit, and key rotation.

Rotation adds a KEK version and re-wraps every thread's data key (and re-seals every TOTP secret)
under it, one committed batch at a time; a run that stops half-way is finished by the next run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from lockbox.audit.service import record
from lockbox.crypto import aead
from lockbox.crypto.exceptions import CryptoError, KeyExhausted
from lockbox.crypto.keys import KeyProvider, Keyring
from lockbox.crypto.models import KeyUsage
from lockbox.db.engine import Database
from lockbox.identity.credentials import TOTP_PURPOSE
from lockbox.identity.models import User
from lockbox.messaging.models import Thread

_USAGE: Table = KeyUsage.__table__  # type: ignore[assignment]

# (phase, done, total): phase is "threads" or "secrets".
Progress = Callable[[str, int, int], None]


class RotatingProvider(KeyProvider, Protocol):
    def add_version(self) -> int: ...


def count_seal(session: Session, *, key_version: int, n: int = 1) -> int:
    """Count ``n`` seals made with KEK ``key_version``; returns the new total.

    The call that would bring a version to ``aead.SEAL_LIMIT`` raises KeyExhausted and counts
    nothing, so the unit of work that wrapped the key rolls back. One atomic upsert: concurrent
    processes on PostgreSQL cannot both slip under the limit.
    """
    if n < 1:
        raise ValueError("n must be positive")
    limit = aead.SEAL_LIMIT
    if n >= limit:
        raise KeyExhausted(f"{n} seals exceed the budget of one key version")
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(_USAGE).values(key_version=key_version, seals=n)
    stmt = stmt.on_conflict_do_update(
        index_elements=[_USAGE.c.key_version],
        set_={"seals": _USAGE.c.seals + stmt.excluded.seals},
        where=_USAGE.c.seals + stmt.excluded.seals < limit,
    )
    total = session.execute(stmt.returning(_USAGE.c.seals)).scalar_one_or_none()
    if total is None:
        raise KeyExhausted(f"key version {key_version} reached its seal budget: run `lockbox keys rotate`")
    return int(total)


def seals(session: Session, *, key_version: int) -> int:
    return session.scalar(select(KeyUsage.seals).where(KeyUsage.key_version == key_version)) or 0


@dataclass
class Rotation:
    version: int
    resumed: bool  # an earlier, unfinished rotation was completed instead of adding a version
    threads: int = 0
    secrets: int = 0
    # Ids whose key could not be unwrapped (damaged, or under a version missing from the key file).
    unreadable: list[str] = field(default_factory=list)


def rotate_keys(
    db: Database, keyring_provider: RotatingProvider, progress: Progress | None = None, *, batch_size: int = 500
) -> Rotation:
    """Re-wrap every data key and re-seal every secret under a new KEK version.

    If rows are still on an older version than the active one, the last rotation did not finish:
    this run finishes it under the active version instead of adding yet another one.
    """
    keyring = Keyring(keyring_provider)
    active = keyring_provider.active_version()
    behind_threads = db.read_sync(_threads_behind, version=active)
    behind_secrets = db.read_sync(_secrets_behind, version=active)
    resumed = bool(behind_threads or behind_secrets)
    if resumed:
        version = active
    else:
        version = keyring_provider.add_version()
        behind_threads = db.read_sync(_threads_behind, version=version)
        behind_secrets = db.read_sync(_secrets_behind, version=version)
        db.write_sync(_record_phase, version=version, phase="new_version", count=0)
    result = Rotation(version=version, resumed=resumed)

    # Thread data keys, then TOTP secrets: each batch is its own committed unit, so a stopped run resumes.
    for kind, step, behind in (("threads", _rewrap_threads, behind_threads),
                               ("secrets", _reseal_secrets, behind_secrets)):
        after, handled = "", 0
        while True:
            done, unreadable, after_id = db.write_sync(step, keyring=keyring, version=version, after=after,
                                                       limit=batch_size)
            setattr(result, kind, getattr(result, kind) + done)
            result.unreadable += unreadable
            handled += done + len(unreadable)
            if progress is not None:
                progress(kind, handled, behind)
            if after_id is None:
                break
            after = after_id

    db.write_sync(_record_phase, version=version, phase="complete", count=result.threads + result.secrets)
    return result


def _threads_behind(session: Session, *, version: int) -> int:
    return int(session.scalar(select(func.count()).select_from(Thread).where(Thread.key_version != version)) or 0)


def _secrets_behind(session: Session, *, version: int) -> int:
    # The version is inside the sealed blob, so this reads them; there is one per user, not per message.
    blobs = session.scalars(select(User.totp_secret_sealed).where(User.totp_secret_sealed.is_not(None)))
    return sum(1 for blob in blobs if blob and Keyring.secret_version(blob) != version)


def _record_phase(session: Session, *, version: int, phase: str, count: int) -> None:
    record(session, action="crypto.key.rotate", subject_type="kek", subject_id=str(version), phase=phase,
           count=count)


def _rewrap_threads(
    session: Session, *, keyring: Keyring, version: int, after: str, limit: int
) -> tuple[int, list[str], str | None]:
    """One batch, keyset-paged by id so an unreadable key is reported once and never retried in a loop."""
    rows = session.execute(
        select(Thread.id, Thread.key_version, Thread.data_key_wrapped)
        .where(Thread.id > after, Thread.key_version != version)
        .order_by(Thread.id)
        .limit(limit)
    ).all()
    done, unreadable = 0, []
    for thread_id, old_version, wrapped in rows:
        try:
            new_version, new_wrapped = keyring.rewrap_data_key(f"thread:{thread_id}", old_version, wrapped)
        except CryptoError:
            unreadable.append(thread_id)
            continue
        # Only if nobody re-wrapped it meanwhile (another rotation in another process).
        changed = session.execute(
            update(Thread)
            .where(Thread.id == thread_id, Thread.key_version == old_version)
            .values(data_key_wrapped=new_wrapped, key_version=new_version)
            .execution_options(synchronize_session=False)
        )
        done += changed.rowcount  # type: ignore[attr-defined]
    if done:
        count_seal(session, key_version=version, n=done)
        record(session, action="crypto.key.rotate", subject_type="kek", subject_id=str(version), phase="rewrap",
               count=done)
    if unreadable:
        record(session, action="crypto.key.rotate", subject_type="kek", subject_id=str(version), outcome="failure",
               phase="rewrap", count=len(unreadable), threads=unreadable)
    return done, unreadable, (rows[-1].id if len(rows) == limit else None)


def _reseal_secrets(
    session: Session, *, keyring: Keyring, version: int, after: str, limit: int
) -> tuple[int, list[str], str | None]:
    rows = session.execute(
        select(User.id, User.totp_secret_sealed)
        .where(User.id > after, User.totp_secret_sealed.is_not(None))
        .order_by(User.id)
        .limit(limit)
    ).all()
    done, unreadable = 0, []
    for user_id, blob in rows:
        if not blob or Keyring.secret_version(blob) == version:
            continue
        try:
            new_blob = keyring.reseal_secret(TOTP_PURPOSE, user_id, blob)
        except CryptoError:
            unreadable.append(user_id)
            continue
        # Compare-and-set: a user who re-enrolled meanwhile already has a fresh secret.
        changed = session.execute(
            update(User)
            .where(User.id == user_id, User.totp_secret_sealed == blob)
            .values(totp_secret_sealed=new_blob)
            .execution_options(synchronize_session=False)
        )
        done += changed.rowcount  # type: ignore[attr-defined]
    if done:
        record(session, action="crypto.key.rotate", subject_type="kek", subject_id=str(version), phase="reseal",
               count=done)
    if unreadable:
        record(session, action="crypto.key.rotate", subject_type="kek", subject_id=str(version), outcome="failure",
               phase="reseal", count=len(unreadable), users=unreadable)
    return done, unreadable, (rows[-1].id if len(rows) == limit else None)


# -- retirement ----------------------------------------------------------------------------------

# What a retired version still does: check the audit MACs it made (checkpoints, head file lines).
RETIRED_KEEPS = ("audit-checkpoint", "audit-head")


class RetiringProvider(KeyProvider, Protocol):
    def retire(self, version: int, *, keep: tuple[str, ...]) -> None: ...


@dataclass
class Retirement:
    version: int
    resealed: int  # legal-hold reasons moved to the active version first


def still_using(session: Session, *, version: int) -> dict[str, int]:
    """What still needs ``version`` to be read: thread keys and TOTP secrets (rotation moves both)."""
    threads = int(session.scalar(select(func.count()).select_from(Thread).where(Thread.key_version == version)) or 0)
    blobs = session.scalars(select(User.totp_secret_sealed).where(User.totp_secret_sealed.is_not(None)))
    secrets = sum(1 for blob in blobs if blob and Keyring.secret_version(blob) == version)
    return {k: v for k, v in {"threads": threads, "totp_secrets": secrets}.items() if v}


def retire_version(db: Database, provider: RetiringProvider, version: int) -> Retirement:
    """Destroy an old key version once nothing live needs it; afterwards, whatever it wrapped, in old
    backups too (e.g. threads purged by retention since), can no longer be opened."""
    if version == provider.active_version():
        raise CryptoError(f"key version {version} is the active one: rotate first")
    using = db.read_sync(still_using, version=version)
    if using:
        what = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in using.items())
        raise CryptoError(f"key version {version} still protects {what}: run `lockbox keys rotate` first")
    keyring = Keyring(provider)
    resealed = db.write_sync(_reseal_hold_reasons, keyring=keyring, version=version)
    provider.retire(version, keep=RETIRED_KEEPS)
    db.write_sync(_record_retire, version=version)
    return Retirement(version, resealed)


def _reseal_hold_reasons(session: Session, *, keyring: Keyring, version: int) -> int:
    from lockbox.retention.models import LegalHold
    from lockbox.retention.service import REASON_PURPOSE

    done = 0
    for hold in session.scalars(select(LegalHold)):
        if Keyring.secret_version(hold.reason_sealed) == version:
            hold.reason_sealed = keyring.reseal_secret(REASON_PURPOSE, hold.id, hold.reason_sealed)
            done += 1
    return done


def _record_retire(session: Session, *, version: int) -> None:
    record(session, action="crypto.key.retire", subject_type="kek", subject_id=str(version))
