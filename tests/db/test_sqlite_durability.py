"""SQLite is opened the way durability needs: WAL, synchronous=FULL, foreign keys on, files private."""

from __future__ import annotations

import os
import stat

import pytest
from sqlalchemy import text

from lockbox.config import Settings
from lockbox.db import Database


def test_pragmas_and_file_modes(standalone_db: Database, settings: Settings, backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite pragmas: nothing to check on PostgreSQL")
    with standalone_db.write_engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    standalone_db.migrate()
    db_file = settings.data_dir / "lockbox.db"
    assert stat.S_IMODE(os.stat(db_file).st_mode) == 0o600
    key_file = settings.resolved_key_file
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
