"""Seal budgets per key-encryption key, and key rotation: re-wrapped thread keys, resumable, audited."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lockbox.audit.models import AuditRow
from lockbox.audit.service import verify_chain
from lockbox.config import Settings
from lockbox.crypto import aead
from lockbox.crypto.exceptions import KeyExhausted
from lockbox.crypto.keys import Keyring, LocalKeyFile
from lockbox.crypto.models import KeyUsage
from lockbox.crypto.service import count_seal, rotate_keys, seals
from lockbox.db import Database, new_id, runtime_of
from lockbox.identity import credentials
from lockbox.identity.models import User
from lockbox.messaging.models import Message, Thread
from tests.factories import Person, make_user

# -- seal budget -------------------------------------------------------------------------------


def test_count_seal_counts_per_version(standalone_db: Database) -> None:
    db = standalone_db
    assert db.write_sync(count_seal, key_version=1) == 1
    assert db.write_sync(count_seal, key_version=1, n=5) == 6
    assert db.write_sync(count_seal, key_version=2, n=3) == 3
    assert db.read_sync(seals, key_version=1) == 6
    assert db.read_sync(seals, key_version=3) == 0


def test_count_seal_refuses_to_reach_the_limit_and_counts_nothing(
    standalone_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = standalone_db
    monkeypatch.setattr(aead, "SEAL_LIMIT", 5)
    assert db.write_sync(count_seal, key_version=1, n=4) == 4
    with pytest.raises(KeyExhausted, match="keys rotate"):
        db.write_sync(count_seal, key_version=1)
    with pytest.raises(KeyExhausted):
        db.write_sync(count_seal, key_version=2, n=5)
    assert db.read_sync(seals, key_version=1) == 4
    assert db.read_sync(lambda s: s.get(KeyUsage, 2)) is None
    # A new version has a budget of its own.
    assert db.write_sync(count_seal, key_version=2, n=4) == 4


def test_exhausted_key_rolls_back_the_unit_that_wrapped_it(
    standalone_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = standalone_db
    owner = make_user(db, "physician", sign_in=False)
    monkeypatch.setattr(aead, "SEAL_LIMIT", 2)
    db.write_sync(_thread, owner_id=owner.id, body=b"first")
    with pytest.raises(KeyExhausted):
        db.write_sync(_thread, owner_id=owner.id, body=b"second")
    assert db.read_sync(lambda s: len(s.scalars(select(Thread.id)).all())) == 1


# -- rotation ----------------------------------------------------------------------------------


@dataclass
class Made:
    thread_id: str
    message_id: str
    body: bytes
    version: int
    wrapped: bytes


def _thread(session: Session, *, owner_id: str, body: bytes) -> Made:
    """A thread as the messaging service makes one: a wrapped data key, a sealed message."""
    rt = runtime_of(session)
    tid, mid = new_id(), new_id()
    key, version, wrapped = rt.keyring.new_data_key(f"thread:{tid}")
    count_seal(session, key_version=version)
    now = rt.clock.now()
    session.add(Thread(id=tid, kind="staff", created_by=owner_id, created_at=now, last_message_at=now,
                       subject_sealed=aead.seal(key, b"subject", aead.aad_for("thread-subject", tid)),
                       data_key_wrapped=wrapped, key_version=version))
    session.flush()
    session.add(Message(id=mid, thread_id=tid, seq=1, sender_id=owner_id, created_at=now,
                        body_sealed=aead.seal(key, body, aead.aad_for("message-body", tid, mid))))
    return Made(tid, mid, body, version, wrapped)


def _read_body(db: Database, made: Made) -> bytes:
    def read(session: Session) -> bytes:
        thread = session.get_one(Thread, made.thread_id)
        key = runtime_of(session).keyring.unwrap_data_key(f"thread:{thread.id}", thread.key_version,
                                                          thread.data_key_wrapped)
        blob = session.get_one(Message, made.message_id).body_sealed
        return aead.open_sealed(key, blob, aead.aad_for("message-body", made.thread_id, made.message_id))

    return db.read_sync(read)


def _versions(db: Database) -> dict[str, tuple[int, bytes]]:
    return db.read_sync(lambda s: {r.id: (r.key_version, r.data_key_wrapped)
                                   for r in s.execute(select(Thread.id, Thread.key_version, Thread.data_key_wrapped))})


@pytest.fixture
def owner(standalone_db: Database) -> Person:
    return make_user(standalone_db, "physician", sign_in=False)


@pytest.fixture
def threads(standalone_db: Database, owner: Person) -> list[Made]:
    return [standalone_db.write_sync(_thread, owner_id=owner.id, body=f"body {i}".encode()) for i in range(7)]


def _provider(db: Database) -> LocalKeyFile:
    provider = db.runtime.keyring.provider
    assert isinstance(provider, LocalKeyFile)
    return provider


def test_rotation_rewraps_every_thread_and_old_keys_still_open(
    standalone_db: Database, threads: list[Made], owner: Person
) -> None:
    db = standalone_db
    calls: list[tuple[str, int, int]] = []
    result = rotate_keys(db, _provider(db), lambda *a: calls.append(a), batch_size=3)
    assert (result.version, result.resumed, result.threads, result.unreadable) == (2, False, 7, [])
    after = _versions(db)
    for made in threads:
        version, wrapped = after[made.thread_id]
        assert version == 2 and wrapped != made.wrapped
        assert _read_body(db, made) == made.body
        # The old wrapping still opens (backups made before the rotation stay readable).
        old = db.runtime.keyring.unwrap_data_key(f"thread:{made.thread_id}", made.version, made.wrapped)
        assert old == db.runtime.keyring.unwrap_data_key(f"thread:{made.thread_id}", 2, wrapped)
    assert [c for c in calls if c[0] == "threads"] == [("threads", 3, 7), ("threads", 6, 7), ("threads", 7, 7)]
    assert db.read_sync(seals, key_version=2) == 7


def test_rotation_reseals_totp_secrets(standalone_db: Database, owner: Person) -> None:
    db = standalone_db
    rotate_keys(db, _provider(db), None)
    sealed = db.read_sync(lambda s: s.get_one(User, owner.id).totp_secret_sealed)
    assert sealed is not None and Keyring.secret_version(sealed) == 2
    assert credentials.open_totp_secret(db.runtime.keyring, owner.id, sealed) == owner.totp_secret


def test_interrupted_rotation_is_finished_by_the_next_run(standalone_db: Database, threads: list[Made]) -> None:
    db = standalone_db

    def stop_after_first_batch(phase: str, done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rotate_keys(db, _provider(db), stop_after_first_batch, batch_size=3)
    midway = _versions(db)
    done_first = {tid for tid, (v, _) in midway.items() if v == 2}
    assert len(done_first) == 3

    result = rotate_keys(db, _provider(db), None, batch_size=3)
    assert (result.version, result.resumed, result.threads) == (2, True, 4)
    assert _provider(db).versions() == [1, 2]  # no extra version for the resumed run
    final = _versions(db)
    assert all(v == 2 for v, _ in final.values())
    # Threads the first run finished were left alone.
    assert all(final[tid] == midway[tid] for tid in done_first)
    for made in threads:
        assert _read_body(db, made) == made.body


def test_a_finished_rotation_leaves_nothing_to_resume(standalone_db: Database, threads: list[Made]) -> None:
    db = standalone_db
    rotate_keys(db, _provider(db), None, batch_size=3)
    before = _versions(db)
    from lockbox.crypto.service import _rewrap_threads

    keyring = db.runtime.keyring
    assert db.write_sync(_rewrap_threads, keyring=keyring, version=2, after="", limit=100) == (0, [], None)
    assert _versions(db) == before
    # Rotating again is a new rotation, under a new version.
    assert rotate_keys(db, _provider(db), None).version == 3
    assert all(v == 3 for v, _ in _versions(db).values())


def test_rotation_is_audited_and_the_chain_stays_intact(standalone_db: Database, threads: list[Made]) -> None:
    db = standalone_db
    rotate_keys(db, _provider(db), None, batch_size=3)
    rows = db.read_sync(lambda s: s.execute(select(AuditRow.action, AuditRow.subject_id, AuditRow.details)
                                            .where(AuditRow.action == "crypto.key.rotate")
                                            .order_by(AuditRow.seq)).all())
    phases = [(r.details["phase"], r.details["count"]) for r in rows]
    assert phases == [("new_version", 0), ("rewrap", 3), ("rewrap", 3), ("rewrap", 1), ("reseal", 1),
                      ("complete", 8)]
    assert {r.subject_id for r in rows} == {"2"}
    report = db.read_sync(verify_chain)
    assert report.ok, report.summary()


def test_an_unreadable_key_is_reported_and_the_rest_rotated(standalone_db: Database, threads: list[Made]) -> None:
    db = standalone_db
    broken = threads[2].thread_id
    db.write_sync(lambda s: s.execute(update(Thread).where(Thread.id == broken)
                                      .values(data_key_wrapped=threads[3].wrapped)))
    result = rotate_keys(db, _provider(db), None, batch_size=2)
    assert result.unreadable == [broken] and result.threads == 6
    versions = _versions(db)
    assert versions[broken][0] == 1
    assert all(v == 2 for tid, (v, _) in versions.items() if tid != broken)
    failures = db.read_sync(lambda s: s.scalars(select(AuditRow.details).where(AuditRow.outcome == "failure")).all())
    assert failures == [{"phase": "rewrap", "count": 1, "threads": [broken]}]


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOCKBOX_DATA_DIR": str(settings.data_dir),
           "LOCKBOX_DATABASE_URL": settings.resolved_database_url}
    return subprocess.run([sys.executable, "-m", "lockbox.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_keys_rotate_command(standalone_db: Database, threads: list[Made], settings: Settings) -> None:
    db = standalone_db
    done = _cli(settings, "keys", "rotate", "--batch-size", "4")
    assert done.returncode == 0, done.stderr
    assert "rotated to key version 2: 7 thread keys re-wrapped" in done.stdout
    assert all(v == 2 for v, _ in _versions(db).values())
    # The open database (a running server) reads keys wrapped under the version it never loaded.
    for made in threads:
        assert _read_body(db, made) == made.body
    status = _cli(settings, "keys", "status")
    assert status.returncode == 0, status.stderr
    assert "key version 2 (active): 7 seals" in status.stdout


def test_keys_rotate_refuses_without_a_key_file(tmp_path: os.PathLike[str], settings: Settings) -> None:
    empty = settings.model_copy(update={"data_dir": settings.data_dir.parent / "elsewhere"})
    done = _cli(empty, "keys", "rotate")
    assert done.returncode == 2 and "no key file" in done.stderr
    assert not (empty.data_dir / "lockbox.key").exists()
