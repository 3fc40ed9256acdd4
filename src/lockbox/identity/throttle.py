"""Sign-in throttling: consecutive failures per account and per client address earn a growing lock.

Counters live in the database (``auth_throttle``) so every process sees the same state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from lockbox.identity.models import AuthThrottle


@dataclass(frozen=True)
class Policy:
    threshold: int  # failures allowed before the first lock
    base_lock_s: int  # the first lock; each further failure doubles it
    max_lock_s: int
    # Consecutive failures after which only account recovery (a new enrolment code) unlocks.
    suspend_after: int | None = None

    def lock_s(self, failures: int) -> int:
        if failures < self.threshold:
            return 0
        return int(min(self.base_lock_s * 2 ** min(failures - self.threshold, 20), self.max_lock_s))


# NIST SP 800-63B 5.2.2 allows at most 100 consecutive failures per account. Five are free, the next
# locks last 30 s, 1, 2, 4 and 8 min (930 s), then every failure costs a 15 min lock, so failure 100
# comes after 930 s + 90 x 900 s, about 23 hours of steady guessing (with TOTP, each guess also needs
# a 1-in-333,333 code). Only then does the account wait for a person: the ordinary back-off always
# expires on its own, and an alert reached the security officer at the fifth failure.
ACCOUNT = Policy(threshold=5, base_lock_s=30, max_lock_s=15 * 60, suspend_after=100)
# Many people can share one address (a clinic's NAT), so it tolerates more and is never suspended.
ADDRESS = Policy(threshold=20, base_lock_s=30, max_lock_s=15 * 60)


@dataclass(frozen=True)
class Lock:
    retry_after_s: int
    suspended: bool = False


@dataclass(frozen=True)
class Failure:
    failures: int
    first_lock: bool  # this failure started the first lock of a burst
    suspended: bool  # this failure suspended the account


def account_key(user_id: str) -> str:
    return f"user:{user_id}"


def address_key(client_addr: str) -> str:
    return f"addr:{client_addr[:64]}"


def lock_of(session: Session, keys: list[tuple[str, Policy]], now: datetime) -> Lock | None:
    """The longest lock among ``keys`` at ``now``, or None when every key may try."""
    found: Lock | None = None
    for key, policy in keys:
        row = session.get(AuthThrottle, key)
        if row is None:
            continue
        if policy.suspend_after is not None and row.failures >= policy.suspend_after:
            return Lock(policy.max_lock_s, suspended=True)
        if row.locked_until is not None and row.locked_until > now:
            wait = math.ceil((row.locked_until - now).total_seconds())
            if found is None or wait > found.retry_after_s:
                found = Lock(wait)
    return found


def record_failure(session: Session, key: str, policy: Policy, now: datetime) -> Failure:
    # Insert-or-ignore then lock the row: concurrent processes count every failure exactly once.
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(insert(AuthThrottle).values(key=key, failures=0).on_conflict_do_nothing())
    row = session.get(AuthThrottle, key, with_for_update=True, populate_existing=True)
    assert row is not None
    row.failures += 1
    row.last_failure_at = now
    lock_s = policy.lock_s(row.failures)
    if lock_s:
        row.locked_until = now + timedelta(seconds=lock_s)
    suspended = policy.suspend_after is not None and row.failures == policy.suspend_after
    return Failure(row.failures, first_lock=row.failures == policy.threshold, suspended=suspended)


def reset(session: Session, *keys: str) -> None:
    session.execute(delete(AuthThrottle).where(AuthThrottle.key.in_(keys)))


# How long a counter outlives its last failure. An account's counter keeps counting towards the
# 100-failure ceiling for a month of quiet (guessing slower than that is no online attack), an address's
# for a day (it is never suspended; its locks last at most 15 minutes). A suspended account keeps its row
# until recovery. Without this, every name an attacker tries would leave a row behind for good.
ACCOUNT_QUIET = timedelta(days=30)
ADDRESS_QUIET = timedelta(days=1)


def prune(session: Session, now: datetime, *, limit: int = 5000) -> int:
    """Forget up to ``limit`` counters quiet for long enough and no longer locking anything; returns how many."""
    assert ACCOUNT.suspend_after is not None
    stale = or_(
        and_(AuthThrottle.key.like("user:%"), AuthThrottle.last_failure_at < now - ACCOUNT_QUIET,
             AuthThrottle.failures < ACCOUNT.suspend_after),
        and_(AuthThrottle.key.like("addr:%"), AuthThrottle.last_failure_at < now - ADDRESS_QUIET),
    )
    free = or_(AuthThrottle.locked_until.is_(None), AuthThrottle.locked_until <= now)
    keys = list(session.scalars(select(AuthThrottle.key).where(stale, free).limit(limit)))
    if keys:
        session.execute(delete(AuthThrottle).where(AuthThrottle.key.in_(keys)))
    return len(keys)
