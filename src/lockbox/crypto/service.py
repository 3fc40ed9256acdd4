"""Key-encryption-key usage against the random-nonce limit, and key rotation.

Rotation adds a KEK version and re-wraps every thread's data key (and re-seals every column listed in
``crypto.sealed``) under it, one committed batch at a time; a run that stops half-way is finished by the next run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Table, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from lockbox.audit.service import record
from lockbox.crypto import aead
from lockbox.crypto.exceptions import CryptoError, KeyExhausted
from lockbox.crypto.keys import KeyProvider, Keyring
from lockbox.crypto.models import KeyUsage
from lockbox.crypto.sealed import SealedSecrets, sealed_secrets
from lockbox.db.engine import Database
from lockbox.messaging.models import Thread

_USAGE: Table = KeyUsage.__table__  # type: ignore[assignment]

# (phase, done, total): phase is "threads" or the name of a sealed column (``crypto.sealed``).
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
    # Re-sealed per column of ``crypto.sealed.sealed_secrets()``, by its name (those with any).
    resealed: dict[str, int] = field(default_factory=dict)
    # Ids whose key could not be unwrapped (damaged, or under a version missing from the key file).
    unreadable: list[str] = field(default_factory=list)


def rotate_keys(
    db: Database, keyring_provider: RotatingProvider, progress: Progress | None = None, *, batch_size: int = 500
) -> Rotation:
    """Re-wrap every data key and re-seal every sealed secret (``crypto.sealed``) under a new KEK version.

    If rows are still on an older version than the active one, the last rotation did not finish:
    this run finishes it under the active version instead of adding yet another one.
    """
    keyring = Keyring(keyring_provider)
    active = keyring_provider.active_version()
    behind = db.read_sync(_behind, version=active)
    resumed = any(behind.values())
    if resumed:
        version = active
    else:
        version = keyring_provider.add_version()
        behind = db.read_sync(_behind, version=version)
        db.write_sync(_record_phase, version=version, phase="new_version", count=0)
    result = Rotation(version=version, resumed=resumed)

    # Thread data keys, then each sealed column: every batch is its own committed unit, so a stopped run resumes.
    phases: list[tuple[str, Callable[..., tuple[int, list[str], str | None]], dict[str, Any]]] = [
        ("threads", _rewrap_threads, {})]
    phases += [(sealed.name, _reseal_secrets, {"sealed": sealed}) for sealed in sealed_secrets()]
    for phase, step, extra in phases:
        after, handled = "", 0
        while True:
            done, unreadable, after_id = db.write_sync(step, keyring=keyring, version=version, after=after,
                                                       limit=batch_size, **extra)
            if phase == "threads":
                result.threads += done
            else:
                result.secrets += done
                if done:
                    result.resealed[phase] = result.resealed.get(phase, 0) + done
            result.unreadable += unreadable
            handled += done + len(unreadable)
            if progress is not None:
                progress(phase, handled, behind[phase])
            if after_id is None:
                break
            after = after_id

    db.write_sync(_record_phase, version=version, phase="complete", count=result.threads + result.secrets)
    return result


def _behind(session: Session, *, version: int) -> dict[str, int]:
    """How many thread keys, and values of each sealed column, are not (yet) under ``version``."""
    counts = {"threads": int(session.scalar(select(func.count()).select_from(Thread)
                                            .where(Thread.key_version != version)) or 0)}
    for sealed in sealed_secrets():
        counts[sealed.name] = _count(session, sealed, sealed.version_is_not(version))
    return counts


def _count(session: Session, sealed: SealedSecrets, where: ColumnElement[bool]) -> int:
    # The version is the blob's first four bytes: counted in SQL, no blob leaves the database.
    return int(session.scalar(select(func.count()).select_from(sealed.model)
                              .where(sealed.column.is_not(None), func.length(sealed.column) > 0, where)) or 0)


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
    session: Session, *, keyring: Keyring, version: int, after: str, limit: int, sealed: SealedSecrets
) -> tuple[int, list[str], str | None]:
    """One batch of one sealed column, keyset-paged by id like the threads."""
    selector = sealed.purpose_from if sealed.purpose_from is not None else literal(None)
    rows = session.execute(
        select(sealed.row_id, sealed.column, selector)
        .where(sealed.row_id > after, sealed.column.is_not(None), sealed.version_is_not(version))
        .order_by(sealed.row_id)
        .limit(limit)
    ).all()
    done, unreadable = 0, []
    for row in rows:
        row_id, blob, chooser = str(row[0]), bytes(row[1]), row[2]
        if not blob:
            continue  # nothing sealed (yet): nothing to move
        try:
            new_blob = keyring.reseal_secret(sealed.purpose_for(chooser), row_id, blob)
        except CryptoError:
            unreadable.append(row_id)
            continue
        # Compare-and-set: a value replaced meanwhile (a user re-enrolled, a notice was sent) is left alone.
        changed = session.execute(
            update(sealed.model)
            .where(sealed.row_id == row_id, sealed.column == blob)
            .values({sealed.column.key: new_blob})
            .execution_options(synchronize_session=False)
        )
        done += changed.rowcount  # type: ignore[attr-defined]
    where = f"{sealed.model.__tablename__}.{sealed.column.key}"
    if done:
        record(session, action="crypto.key.rotate", subject_type="kek", subject_id=str(version), phase="reseal",
               count=done, column=where)
    if unreadable:
        record(session, action="crypto.key.rotate", subject_type="kek", subject_id=str(version), outcome="failure",
               phase="reseal", count=len(unreadable), column=where, rows=unreadable)
    return done, unreadable, (str(rows[-1][0]) if len(rows) == limit else None)


# -- retirement ----------------------------------------------------------------------------------

# What a retired version still does: check the audit MACs it made (checkpoints, head file lines).
RETIRED_KEEPS = ("audit-checkpoint", "audit-head")


class RetiringProvider(KeyProvider, Protocol):
    def retire(self, version: int, *, keep: tuple[str, ...]) -> None: ...


@dataclass
class Retirement:
    version: int


def still_using(session: Session, *, version: int) -> dict[str, int]:
    """What still needs ``version`` to be read: thread keys and every sealed column (rotation moves them all)."""
    threads = int(session.scalar(select(func.count()).select_from(Thread).where(Thread.key_version == version)) or 0)
    using = {"threads": threads}
    for sealed in sealed_secrets():
        using[sealed.name] = _count(session, sealed, sealed.version_is(version))
    return {k: v for k, v in using.items() if v}


def retire_version(db: Database, provider: RetiringProvider, version: int) -> Retirement:
    """Destroy an old key version once nothing live needs it; afterwards, whatever it wrapped, in old
    backups too (e.g. threads purged by retention since), can no longer be opened."""
    if version == provider.active_version():
        raise CryptoError(f"key version {version} is the active one: rotate first")
    using = db.read_sync(still_using, version=version)
    if using:
        what = ", ".join(f"{n} {k}" for k, n in using.items())
        raise CryptoError(f"key version {version} still protects {what}: run `lockbox keys rotate` first")
    provider.retire(version, keep=RETIRED_KEEPS)
    db.write_sync(_record_retire, version=version)
    return Retirement(version)


def _record_retire(session: Session, *, version: int) -> None:
    record(session, action="crypto.key.retire", subject_type="kek", subject_id=str(version))
