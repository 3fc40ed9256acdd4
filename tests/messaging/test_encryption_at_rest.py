"""No subject, body or attachment byte reaches storage in plaintext, and sealed blobs stay in their row."""

from __future__ import annotations

import glob
import secrets
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update

from lockbox.crypto.exceptions import DecryptionFailed
from lockbox.db import Database
from lockbox.messaging.models import Message, Thread
from tests.clinic import Clinic
from tests.factories import Api

PNG = b"\x89PNG\r\n\x1a\n"


def _all_cells(db: Database) -> bytes:
    """Every value of every table, as bytes (works the same on SQLite and PostgreSQL)."""
    from lockbox.db.all_models import metadata

    def _dump(session):  # type: ignore[no-untyped-def]
        out = bytearray()
        for table in metadata.sorted_tables:
            for row in session.execute(select(table)):
                for value in row:
                    out += value if isinstance(value, bytes) else str(value).encode()
        return bytes(out)

    return db.read_sync(_dump)


def test_marker_is_nowhere_in_storage(client: TestClient, clinic: Clinic, db: Database, backend: str) -> None:
    marker = "MARKER" + secrets.token_hex(8)
    patient = Api(client, clinic.patient)
    tid = patient.post("/threads", json={"subject": f"subject {marker}", "body": f"body {marker}"}).json()["id"]
    patient.post(f"/threads/{tid}/messages", json={"body": f"reply {marker}"})
    patient.post(f"/threads/{tid}/attachments",
                 files={"file": (f"{marker}.png", PNG + marker.encode() * 4, "image/png")}, data={"body": marker})
    detail = Api(client, clinic.nurse).get(f"/threads/{tid}").json()
    assert marker in detail["subject"] and all(marker in m["body"] for m in detail["messages"])
    assert marker.encode() not in _all_cells(db)
    if backend == "sqlite":
        db.write_sync(lambda s: None)  # everything committed
        data_dir = client.app.state.lockbox.settings.data_dir  # type: ignore[attr-defined]
        files = glob.glob(f"{data_dir}/**", recursive=True)
        for path in files:
            if not Path(path).is_file():
                continue
            raw = Path(path).read_bytes()
            assert marker.encode() not in raw, path


def test_body_moved_to_another_row_fails_to_open(client: TestClient, clinic: Clinic, db: Database) -> None:
    patient = Api(client, clinic.patient)
    tid = patient.post("/threads", json={"subject": "one", "body": "first"}).json()["id"]
    patient.post(f"/threads/{tid}/messages", json={"body": "second"})

    def _swap(session):  # type: ignore[no-untyped-def]
        rows = session.execute(select(Message.id, Message.body_sealed).where(Message.thread_id == tid)
                               .order_by(Message.seq)).all()
        session.execute(update(Message).where(Message.id == rows[1].id).values(body_sealed=rows[0].body_sealed)
                        .execution_options(synchronize_session=False))

    db.write_sync(_swap)
    r = Api(client, clinic.nurse).get(f"/threads/{tid}")
    assert r.status_code == 500 and r.json()["error"] == "integrity_error"
    assert "first" not in r.text


def test_subject_moved_between_threads_fails(client: TestClient, clinic: Clinic, db: Database) -> None:
    patient = Api(client, clinic.patient)
    a = patient.post("/threads", json={"subject": "alpha", "body": "x"}).json()["id"]
    b = patient.post("/threads", json={"subject": "beta", "body": "y"}).json()["id"]

    def _move(session):  # type: ignore[no-untyped-def]
        sealed = session.scalar(select(Thread.subject_sealed).where(Thread.id == a))
        session.execute(update(Thread).where(Thread.id == b).values(subject_sealed=sealed)
                        .execution_options(synchronize_session=False))

    db.write_sync(_move)
    from lockbox.messaging.sealing import ThreadCipher

    def _open(session):  # type: ignore[no-untyped-def]
        t = session.get(Thread, b)
        cipher = ThreadCipher.open(db.runtime.keyring, t.id, t.key_version, t.data_key_wrapped)
        return cipher.open_subject(t.subject_sealed)

    with pytest.raises(DecryptionFailed):
        db.read_sync(_open)


def test_thread_keys_are_distinct_and_wrapped(client: TestClient, clinic: Clinic, db: Database) -> None:
    patient = Api(client, clinic.patient)
    for i in range(3):
        patient.post("/threads", json={"subject": f"s{i}", "body": "b"})
    wrapped = db.read_sync(lambda s: list(s.scalars(text("SELECT data_key_wrapped FROM threads"))))
    assert len({bytes(w) for w in wrapped}) == 3
    assert all(len(w) == 1 + 12 + 32 + 16 for w in wrapped)  # sealed 256-bit keys, never bare
