"""``lockbox keys rotate`` SIGKILLed mid-way and run again: every message stays readable; then the old
version is retired: it opens nothing any more, and the audit checkpoints it signed still verify."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lockbox.audit.service import verify_chain
from lockbox.config import Settings
from lockbox.crypto.exceptions import CryptoError, KeyFileError
from lockbox.crypto.keys import LocalKeyFile
from lockbox.crypto.service import retire_version
from lockbox.db import Database
from lockbox.messaging.models import Thread
from tests.crypto.test_rotation import Made, _read_body, _thread
from tests.factories import make_user

THREADS = 600


def _many(session: Session, *, owner_id: str, n: int) -> list[Made]:
    return [_thread(session, owner_id=owner_id, body=f"note {i}".encode()) for i in range(n)]


def _on(db: Database, version: int) -> int:
    return db.read_sync(lambda s: s.scalar(select(func.count()).select_from(Thread)
                                           .where(Thread.key_version == version)) or 0)


def _cli(settings: Settings, *args: str) -> list[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LOCKBOX_")},
           "LOCKBOX_DATA_DIR": str(settings.data_dir), "LOCKBOX_DATABASE_URL": settings.resolved_database_url}
    return [sys.executable, "-m", "lockbox.cli", *args], env  # type: ignore[return-value]


def test_rotation_killed_midway_resumes_then_the_old_key_is_retired(standalone_db: Database,
                                                                    settings: Settings) -> None:
    db = standalone_db
    owner = make_user(db, "physician", sign_in=False)
    made = db.write_sync(_many, owner_id=owner.id, n=THREADS)
    args, env = _cli(settings, "keys", "rotate", "--batch-size", "1")  # one commit per thread: slow enough

    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _on(db, 2) == 0:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "rotation never started"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    midway = _on(db, 2)
    assert 0 < midway < THREADS, f"rotation was not caught mid-way ({midway} of {THREADS})"
    # Half-rotated, everything reads (the running "server" here is this process's open database).
    for m in made[:: THREADS // 20]:
        assert _read_body(db, m) == m.body

    # Run again, and once everything is on the new version, retire the old one.
    args, env = _cli(settings, "keys", "rotate", "--batch-size", "200", "--retire-old")
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "finished the interrupted rotation to key version 2" in done.stdout
    assert "retired key version 1" in done.stdout
    assert _on(db, 2) == THREADS and _on(db, 1) == 0
    for m in made:
        assert _read_body(db, m) == m.body
    provider = db.runtime.keyring.provider
    assert isinstance(provider, LocalKeyFile)
    assert provider.versions() == [2] and provider.retired_versions() == [1]
    # What version 1 wrapped (the rows as they were, as an old backup holds them) no longer opens.
    with pytest.raises(KeyFileError, match="retired"):
        provider.unwrap(1, made[0].wrapped, b"")
    for m in made[:: THREADS // 20]:
        assert _read_body(db, m) == m.body
    report = db.read_sync(verify_chain)
    assert report.ok and report.checkpoints_checked > 0, report.summary()


def test_retire_refuses_while_a_version_is_still_in_use(standalone_db: Database) -> None:
    db = standalone_db
    owner = make_user(db, "physician", sign_in=False)
    db.write_sync(_many, owner_id=owner.id, n=3)
    provider = db.runtime.keyring.provider
    assert isinstance(provider, LocalKeyFile)
    provider.add_version()  # a rotation that re-wrapped nothing yet
    with pytest.raises(CryptoError, match="still protects 3 threads, 1 totp secrets"):
        retire_version(db, provider, 1)
    with pytest.raises(CryptoError, match="active"):
        retire_version(db, provider, 2)
    assert provider.versions() == [1, 2] and provider.retired_versions() == []
