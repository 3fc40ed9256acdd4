"""``lockbox audit verify`` and ``export`` as an operator runs them: a separate process on the data dir."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine, select, update

from lockbox.audit.models import AuditRow
from lockbox.config import Settings
from lockbox.db import Database
from tests.audit.conftest import ROWS, tamper


def lockbox(settings: Settings, *args: str, data_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOCKBOX_DATA_DIR": str(data_dir or settings.data_dir),
           "LOCKBOX_DATABASE_URL": settings.resolved_database_url}
    return subprocess.run([sys.executable, "-m", "lockbox.cli", "audit", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_verify_exits_0_on_an_intact_log(log: Database, settings: Settings) -> None:
    done = lockbox(settings, "verify")
    assert done.returncode == 0, done.stderr
    assert "audit log intact: 60 rows, 1 signed checkpoint, head file at seq 60" in done.stdout


def test_verify_exits_1_with_the_first_bad_entry(log: Database, settings: Settings, raw: Engine) -> None:
    tamper(raw, lambda c: c.execute(update(ROWS).where(ROWS.c.seq.in_([17, 40])).values(details={"n": -1})))
    done = lockbox(settings, "verify", "--batch-size", "10")
    assert done.returncode == 1
    assert "first bad entry: seq 17 (altered)" in done.stdout
    assert '"n"' not in done.stdout and "-1" not in done.stdout  # row contents are never printed


def test_verify_exits_1_on_a_truncated_log(log: Database, settings: Settings, raw: Engine) -> None:
    tamper(raw, lambda c: c.execute(ROWS.delete().where(ROWS.c.seq > 57)))
    done = lockbox(settings, "verify")
    assert done.returncode == 1
    assert "first bad entry: seq 58 (truncated)" in done.stdout


def test_verify_without_a_key_file_creates_nothing_and_exits_2(settings: Settings, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    done = lockbox(settings, "verify", data_dir=elsewhere)
    assert done.returncode == 2
    assert "no key file" in done.stderr
    assert not elsewhere.exists()


def test_export_writes_json_lines_and_is_audited(log: Database, settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    done = lockbox(settings, "export", "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["seq"] for d in lines] == list(range(1, 61))
    assert lines[16]["details"] == {"n": 16} and lines[16]["action"] == "test.thing.happen"
    assert set(lines[0]) == {"seq", "at", "actor_id", "session_id", "action", "subject_type", "subject_id",
                             "outcome", "details", "hash"}
    last = log.read_sync(lambda s: s.execute(select(AuditRow.action, AuditRow.details)
                                             .order_by(AuditRow.seq.desc()).limit(1)).one())
    assert (last.action, last.details) == ("audit.log.export", {"rows": 60})
    # Never overwrites an existing file.
    again = lockbox(settings, "export", "--output", str(out))
    assert again.returncode == 2 and "cannot create" in again.stderr


def test_export_time_window(log: Database, settings: Settings) -> None:
    done = lockbox(settings, "export", "--since", "2000-01-01", "--until", "2000-01-02")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    everything = lockbox(settings, "export", "--since", "2000-01-01")
    lines = [json.loads(line) for line in everything.stdout.splitlines()]
    # The 60 entries, then the first (empty) export's own audit row.
    assert [d["seq"] for d in lines] == list(range(1, 62))
    assert lines[-1]["action"] == "audit.log.export" and lines[-1]["details"] == {"rows": 0}
