"""``lockbox directory load`` end to end, as an operator runs it: a subprocess against a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from lockbox.config import Settings
from lockbox.db import Database
from lockbox.identity.enrolment import hash_code
from lockbox.identity.models import User

from .sample import SAMPLE, SAMPLE_USERS, census

pytestmark = pytest.mark.slow
LOCKBOX = Path(sys.executable).with_name("lockbox")


def run(settings: Settings, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKBOX_")}
    env |= {"LOCKBOX_DATA_DIR": str(settings.data_dir), "LOCKBOX_DATABASE_URL": settings.resolved_database_url}
    # cwd: a directory without a lockbox.toml, so only the environment configures the command.
    return subprocess.run([str(LOCKBOX), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def code_hashes(db: Database) -> dict[str, str | None]:
    def _read(session: Session) -> dict[str, str | None]:
        return {u.username: u.enrolment_code_hash for u in session.scalars(select(User))}

    return db.read_sync(_read)


def test_load_prints_one_json_line_per_created_user_then_nothing(
    settings: Settings, standalone_db: Database, tmp_path: Path
) -> None:
    (tmp_path / "clinic.yaml").write_text(SAMPLE)

    first = run(settings, tmp_path, "directory", "load", "clinic.yaml")

    assert first.returncode == 0, first.stderr
    printed = [json.loads(line) for line in first.stdout.splitlines()]
    assert [p["username"] for p in printed] == SAMPLE_USERS
    assert all(set(p) == {"username", "role", "enrolment_code"} for p in printed)
    assert printed[0]["role"] == "physician" and printed[-1]["role"] == "patient"
    # Each printed code is the one the database will accept for that user.
    assert code_hashes(standalone_db) == {p["username"]: hash_code(p["enrolment_code"]) for p in printed}

    again = run(settings, tmp_path, "directory", "load", "clinic.yaml")
    assert (again.returncode, again.stdout) == (0, "")
    assert code_hashes(standalone_db) == {p["username"]: hash_code(p["enrolment_code"]) for p in printed}


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("pcp: dr.house, care_team: team-a", "pcp: dr.who, care_team: team-a",
         "error: patients[0] (pat.jones): pcp 'dr.who' is not a staff member (line 19)\n"),
        ("role: billing", "role: janitor", "error: staff[4].role: Input should be a staff role: "),
        ("  - {id: north, name: North Clinic}", "  - {id: north, name: North Clinic",
         "error: line 5, column 11: expected ',' or '}', but got ':' (while parsing a flow mapping)\n"),
    ],
)
def test_a_bad_file_exits_2_and_loads_nothing(
    settings: Settings, standalone_db: Database, tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in SAMPLE
    (tmp_path / "clinic.yaml").write_text(SAMPLE.replace(old, new))
    before = census(standalone_db)

    result = run(settings, tmp_path, "directory", "load", "clinic.yaml")

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.stderr
    assert census(standalone_db) == before


def test_a_missing_file_exits_2(settings: Settings, tmp_path: Path) -> None:
    result = run(settings, tmp_path, "directory", "load", "nowhere.yaml")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("error: cannot read nowhere.yaml")
