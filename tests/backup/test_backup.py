"""Backups taken while messages are being written restore into a fresh deployment with every message
readable and the audit chain intact; a tampered, truncated or wrongly keyed archive is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from lockbox.app import build_database, create_app
from lockbox.audit.service import verify_chain
from lockbox.backup.service import BackupError, backup, restore
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.messaging.models import Message
from tests.clinic import Clinic
from tests.conftest import PG_ADMIN_DSN
from tests.factories import auth, make_user

PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def backup_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"backup_passphrase": PASSPHRASE})


@pytest.fixture
def fresh(backup_settings: Settings, backend: str, tmp_path: Path) -> Iterator[Settings]:
    """An empty deployment to restore into, holding only the key file (restored from its own backup)."""
    data = tmp_path / "restored"
    data.mkdir(mode=0o700)
    shutil.copy2(backup_settings.resolved_key_file, data / "lockbox.key")
    if backend == "sqlite":
        yield _with(backup_settings, data_dir=data, database_url=None)
        return
    name = f"lockbox_test_restore_{os.getpid()}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = backup_settings.resolved_database_url.rsplit("/", 1)[0] + "/" + name
    yield _with(backup_settings, data_dir=data, database_url=url)
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _with(settings: Settings, **changes: object) -> Settings:
    """A copy with other storage (model_copy would keep the cached resolved database URL)."""
    return Settings(**{**settings.model_dump(), **changes})


def _messages(db: Database) -> int:
    return db.read_sync(lambda s: s.scalar(select(func.count()).select_from(Message)) or 0)


def test_backup_during_writes_restores_readable_with_a_verifying_chain(
        client: TestClient, clinic: Clinic, db: Database, backup_settings: Settings, fresh: Settings,
        clock: FrozenClock, tmp_path: Path) -> None:
    patient = clinic.api(client, clinic.patient)
    thread_id = patient.post("/threads", json={"subject": "Knee", "body": "My knee hurts on stairs."}).json()["id"]
    stop = threading.Event()
    sent: list[int] = []

    def keep_writing() -> None:
        while not stop.is_set():
            r = patient.post(f"/threads/{thread_id}/messages", json={"body": f"update {len(sent)}"})
            assert r.status_code == 201, r.text
            sent.append(r.status_code)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        while len(sent) < 5:  # writing is under way
            stop.wait(0.01)
        archive = tmp_path / "clinic.lbx"
        manifest = backup(backup_settings, archive)
        during = len(sent)
        while len(sent) < during + 5:  # and it kept going while the archive was written
            stop.wait(0.01)
    finally:
        stop.set()
        writer.join(timeout=30)
    assert manifest.audit_seq and manifest.key_versions == [1]
    raw = archive.read_bytes()
    assert b"My knee" not in raw and b"SQLite format" not in raw and b"PGDMP" not in raw  # sealed
    assert os.stat(archive).st_mode & 0o077 == 0

    restored = restore(fresh, archive)
    assert restored.restored
    app = create_app(fresh, clock=clock, migrate=False)
    with TestClient(app, base_url="https://testserver") as c:
        r = c.get(f"/api/v1/threads/{thread_id}", headers=auth(clinic.patient))
        assert r.status_code == 200, r.text
        bodies = [m["body"] for m in r.json()["messages"]]
        assert bodies[0] == "My knee hurts on stairs."
        # A consistent snapshot: the messages acknowledged before the backup began, in order, and none torn.
        assert len(bodies) - 1 >= 5 and bodies[1:] == [f"update {i}" for i in range(len(bodies) - 1)]
        restored_db = app.state.lockbox.db
        report = restored_db.read_sync(verify_chain)
        assert report.ok, report.summary()
        assert report.head_seq is not None and report.last_seq >= manifest.audit_seq
    assert _messages(db) > len(bodies)  # the live database went on past the snapshot


def test_restore_refuses_a_non_empty_target_without_force(standalone_db: Database, backup_settings: Settings,
                                                          fresh: Settings, tmp_path: Path) -> None:
    make_user(standalone_db, "physician", sign_in=False)
    archive = tmp_path / "a.lbx"
    backup(backup_settings, archive)
    # A deployment whose server started once (schema, no data) holds nothing to lose.
    started = build_database(fresh)
    started.migrate()
    started.close()
    assert restore(fresh, archive).restored
    with pytest.raises(BackupError, match="not empty"):
        restore(backup_settings, archive)
    assert restore(backup_settings, archive, force=True).restored
    with pytest.raises(BackupError, match="already exists"):
        backup(backup_settings, archive)


def test_tampered_truncated_or_wrongly_keyed_archives_are_refused(standalone_db: Database, backup_settings: Settings,
                                                                  fresh: Settings, tmp_path: Path) -> None:
    archive = tmp_path / "a.lbx"
    backup(backup_settings, archive)
    data = bytearray(archive.read_bytes())
    tampered = tmp_path / "tampered.lbx"
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    with pytest.raises(BackupError, match="integrity"):
        restore(fresh, tampered)
    truncated = tmp_path / "truncated.lbx"
    truncated.write_bytes(archive.read_bytes()[:-40])
    with pytest.raises(BackupError, match=r"truncated|integrity"):
        restore(fresh, truncated)
    with pytest.raises(BackupError, match="integrity"):
        restore(_with(fresh, backup_passphrase="another long passphrase"), archive)
    # Nothing was restored by any of them.
    assert restore(fresh, archive, check_only=True).restored is False
    target = fresh.resolved_database_url
    if target.startswith("sqlite"):
        assert not (fresh.data_dir / "lockbox.db").exists()


def test_restore_needs_the_key_file_that_made_the_backup(standalone_db: Database, backup_settings: Settings,
                                                         tmp_path: Path) -> None:
    archive = tmp_path / "a.lbx"
    backup(backup_settings, archive)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    target = _with(backup_settings, data_dir=elsewhere, database_url=None)
    with pytest.raises(BackupError, match="key file"):
        restore(target, archive)  # no key file at all
    build_database(target).close()  # a new, different key file
    with pytest.raises(BackupError, match="another key file"):
        restore(target, archive)


def test_backup_and_restore_commands(standalone_db: Database, settings: Settings, tmp_path: Path) -> None:
    make_user(standalone_db, "nurse", sign_in=False)
    key = tmp_path / "backup.key"
    from lockbox.backup.archive import new_key_file

    new_key_file(key)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LOCKBOX_")},
           "LOCKBOX_DATA_DIR": str(settings.data_dir), "LOCKBOX_DATABASE_URL": settings.resolved_database_url,
           "LOCKBOX_BACKUP_KEY_FILE": str(key)}

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lockbox.cli", *args], env={**env, **extra},
                              capture_output=True, text=True, timeout=120, check=False)

    archive = tmp_path / "cli.lbx"
    done = cli("backup", str(archive))
    assert done.returncode == 0, done.stderr
    assert "backup written to" in done.stdout
    checked = cli("restore", "--check-only", str(archive))
    assert checked.returncode == 0 and "archive intact" in checked.stdout, checked.stderr
    refused = cli("restore", str(archive))
    assert refused.returncode == 2 and "not empty" in refused.stderr
    no_key = cli("backup", str(tmp_path / "other.lbx"), LOCKBOX_BACKUP_KEY_FILE="")
    assert no_key.returncode != 0
