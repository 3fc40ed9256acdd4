"""Tampering with the audit log through SQL is found: the first bad seq and what was done to it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, delete, insert, select, update

from lockbox.audit.chain import CHECKPOINT_PURPOSE, checkpoint_message, row_hash
from lockbox.audit.headfile import Head, HeadFile
from lockbox.audit.service import verify_chain
from lockbox.audit.verify import Report, verify
from lockbox.db import Database
from tests.audit.conftest import CHECKPOINTS, ENTRIES, ROWS, drop_rows, rehash_from, renumber, row, tamper


def check(db: Database, *, batch_size: int = 5000, head: Head | bool | None = True) -> Report:
    def run(session):  # type: ignore[no-untyped-def]
        keyring = db.runtime.keyring
        latest = HeadFile(db.runtime.settings.audit_head_file, keyring).latest() if head is True else head
        return verify(session, keyring, latest or None, batch_size=batch_size)

    return db.read_sync(run)


def bad(report: Report) -> tuple[int | None, str | None]:
    return report.first_bad_seq, report.kind


@pytest.mark.parametrize("batch_size", [1, 7, 50, 5000])
def test_intact_log_verifies(log: Database, batch_size: int) -> None:
    report = check(log, batch_size=batch_size)
    assert report.ok, report.summary()
    assert (report.rows_checked, report.last_seq, report.checkpoints_checked, report.head_seq) == (60, 60, 1, 60)
    assert report.summary().startswith("audit log intact: 60 rows")


def test_the_service_entry_point_reads_the_head_file(log: Database) -> None:
    report = log.read_sync(verify_chain)
    assert report.ok and report.head_seq == ENTRIES


def test_empty_log_verifies(standalone_db: Database) -> None:
    report = check(standalone_db)
    assert report.ok and report.rows_checked == 0 and report.head_seq is None


def test_changed_details_are_altered(log: Database, raw: Engine) -> None:
    tamper(raw, lambda c: c.execute(update(ROWS).where(ROWS.c.seq == 17).values(details={"n": 99})))
    report = check(log)
    assert bad(report) == (17, "altered")
    assert report.rows_checked == 16
    assert "first bad entry: seq 17 (altered)" in report.summary()


def test_changed_action_is_altered(log: Database, raw: Engine) -> None:
    tamper(raw, lambda c: c.execute(update(ROWS).where(ROWS.c.seq == 1).values(action="test.thing.vanish")))
    assert bad(check(log)) == (1, "altered")


@pytest.mark.parametrize("column", ["actor_id", "subject_id", "outcome", "prev_hash", "hash"])
def test_any_changed_column_is_altered(log: Database, raw: Engine, column: str) -> None:
    value = "f" * 64 if column.endswith("hash") else "forged"
    tamper(raw, lambda c: c.execute(update(ROWS).where(ROWS.c.seq == 33).values({column: value})))
    assert bad(check(log)) == (33, "altered")


def test_changed_and_rehashed_row_is_altered_even_though_its_own_hash_checks(log: Database, raw: Engine) -> None:
    def forge(conn: Connection) -> None:
        r = row(conn, 17)
        r["details"] = {"n": 99}
        conn.execute(update(ROWS).where(ROWS.c.seq == 17).values(details=r["details"],
                                                                 hash=row_hash(17, _Obj(r), r["prev_hash"])))

    tamper(raw, forge)
    assert bad(check(log)) == (17, "altered")


def test_deleted_middle_row(log: Database, raw: Engine) -> None:
    tamper(raw, lambda c: drop_rows(c, 23))
    report = check(log)
    assert bad(report) == (23, "deleted")
    assert report.rows_checked == 22


def test_deleted_run_of_rows_names_the_first(log: Database, raw: Engine) -> None:
    tamper(raw, lambda c: drop_rows(c, 23, 24, 25))
    report = check(log)
    assert bad(report) == (23, "deleted")
    assert report.problem is not None and "23..25" in report.problem.detail


def test_deleted_first_row(log: Database, raw: Engine) -> None:
    tamper(raw, lambda c: drop_rows(c, 1))
    assert bad(check(log)) == (1, "deleted")


def test_deleted_and_renumbered_rows(log: Database, raw: Engine) -> None:
    def cover_up(conn: Connection) -> None:
        drop_rows(conn, 23, 24)
        renumber(conn, above=24, by=-2)

    tamper(raw, cover_up)
    assert bad(check(log)) == (23, "deleted")


def test_forged_row_inserted_with_a_recomputed_hash(log: Database, raw: Engine) -> None:
    def forge(conn: Connection) -> None:
        template = row(conn, 30)
        renumber(conn, above=30, by=1)
        forged = {**template, "seq": 31, "actor_id": "intruder", "prev_hash": template["hash"]}
        forged["hash"] = row_hash(31, _Obj(forged), template["hash"])
        conn.execute(insert(ROWS).values(forged))

    tamper(raw, forge)
    report = check(log)
    assert bad(report) == (31, "inserted")
    assert report.rows_checked == 31  # the forged row itself chains; what follows it does not


def test_forged_row_inserted_with_a_junk_hash(log: Database, raw: Engine) -> None:
    def forge(conn: Connection) -> None:
        template = row(conn, 30)
        renumber(conn, above=30, by=1)
        conn.execute(insert(ROWS).values({**template, "seq": 31, "actor_id": "intruder", "hash": "e" * 64}))

    tamper(raw, forge)
    assert bad(check(log)) == (31, "inserted")


def _swap_seq(conn: Connection, a: int, b: int) -> None:
    conn.execute(update(ROWS).where(ROWS.c.seq == a).values(seq=-1))
    conn.execute(update(ROWS).where(ROWS.c.seq == b).values(seq=a))
    conn.execute(update(ROWS).where(ROWS.c.seq == -1).values(seq=b))


@pytest.mark.parametrize(("a", "b"), [(12, 15), (12, 13), (1, 2), (59, 60)])
def test_swapped_rows_are_reordered(log: Database, raw: Engine, a: int, b: int) -> None:
    tamper(raw, lambda c: _swap_seq(c, a, b))
    assert bad(check(log)) == (a, "reordered")


def test_swapped_contents_are_reordered(log: Database, raw: Engine) -> None:
    content = ["at", "actor_id", "session_id", "action", "subject_type", "subject_id", "outcome", "details"]

    def swap(conn: Connection) -> None:
        r12, r15 = row(conn, 12), row(conn, 15)
        conn.execute(update(ROWS).where(ROWS.c.seq == 12).values({k: r15[k] for k in content}))
        conn.execute(update(ROWS).where(ROWS.c.seq == 15).values({k: r12[k] for k in content}))

    tamper(raw, swap)
    assert bad(check(log)) == (12, "reordered")


def test_cut_tail_with_its_checkpoint_is_truncated(log: Database, raw: Engine) -> None:
    tamper(raw, lambda c: drop_rows(c, *range(46, 61)))
    # Without the head file, the signed checkpoint at 50 alone proves the log went further.
    report = check(log, head=None)
    assert bad(report) == (46, "truncated")
    assert report.rows_checked == 45
    assert bad(check(log)) == (46, "truncated")


def test_cut_tail_and_checkpoint_are_caught_by_the_head_file(log: Database, raw: Engine) -> None:
    def cut(conn: Connection) -> None:
        drop_rows(conn, *range(46, 61))
        conn.execute(delete(CHECKPOINTS))

    tamper(raw, cut)
    assert bad(check(log)) == (46, "truncated")


def test_cut_tail_after_the_last_checkpoint_is_caught_by_the_head_file(log: Database, raw: Engine) -> None:
    tamper(raw, lambda c: drop_rows(c, 58, 59, 60))
    assert bad(check(log)) == (58, "truncated")


def test_rewritten_chain_disagrees_with_the_signed_checkpoint(log: Database, raw: Engine) -> None:
    def rewrite(conn: Connection) -> None:
        conn.execute(update(ROWS).where(ROWS.c.seq == 10).values(details={"n": 99}))
        rehash_from(conn, 10)

    tamper(raw, rewrite)
    report = check(log)
    assert bad(report) == (50, "bad_checkpoint")
    assert report.problem is not None and "rows 1..50 were rewritten" in report.problem.detail


def test_rewritten_chain_after_the_checkpoint_disagrees_with_the_head_file(log: Database, raw: Engine) -> None:
    def rewrite(conn: Connection) -> None:
        conn.execute(update(ROWS).where(ROWS.c.seq == 55).values(actor_id="someone-else"))
        rehash_from(conn, 55)

    tamper(raw, rewrite)
    report = check(log)
    assert bad(report) == (60, "altered")
    assert report.problem is not None and "rows 51..60" in report.problem.detail


def test_forged_checkpoint_signature(log: Database, raw: Engine) -> None:
    tamper(raw, lambda c: c.execute(update(CHECKPOINTS).where(CHECKPOINTS.c.seq == 50).values(signature=b"x" * 32)))
    assert bad(check(log)) == (50, "bad_checkpoint")


def test_planted_checkpoint_without_the_key(log: Database, raw: Engine) -> None:
    def plant(conn: Connection) -> None:
        h = row(conn, 30)["hash"]
        conn.execute(insert(CHECKPOINTS).values(seq=30, hash=h, at=row(conn, 30)["at"], key_version=1,
                                                signature=b"\x00" * 32))

    tamper(raw, plant)
    assert bad(check(log)) == (30, "bad_checkpoint")


def test_checkpoint_under_an_unknown_key_version(log: Database, raw: Engine) -> None:
    tamper(raw, lambda c: c.execute(update(CHECKPOINTS).values(key_version=7)))
    report = check(log)
    assert bad(report) == (50, "bad_checkpoint")
    assert report.problem is not None and "key version 7" in report.problem.detail


def test_a_genuine_checkpoint_beyond_the_end_still_counts(log: Database, raw: Engine) -> None:
    """A checkpoint is signed with the key: copying its row does not forge a later one."""

    def plant(conn: Connection) -> None:
        cp = dict(conn.execute(select(CHECKPOINTS)).mappings().one())
        conn.execute(insert(CHECKPOINTS).values({**cp, "seq": 500}))

    tamper(raw, plant)
    assert bad(check(log)) == (500, "bad_checkpoint")


def test_forged_head_lines_are_ignored(log: Database) -> None:
    path = log.runtime.settings.audit_head_file
    with open(path, "a") as fh:
        fh.write(json.dumps({"seq": 1000, "hash": "0" * 64, "key_version": 1,
                             "mac": base64.b64encode(b"x" * 32).decode()}) + "\n")
        fh.write("{torn line\n")
    report = check(log)
    assert report.ok and report.head_seq == ENTRIES


def test_head_file_proves_rows_existed_in_an_empty_log(log: Database, raw: Engine) -> None:
    tamper(raw, lambda c: (c.execute(delete(ROWS)), c.execute(delete(CHECKPOINTS))))
    assert bad(check(log)) == (1, "truncated")


def test_checkpoint_mac_is_the_keyrings(log: Database) -> None:
    """The test's idea of a valid checkpoint matches the writer's, so the forgery tests mean something."""

    def get(session):  # type: ignore[no-untyped-def]
        return session.execute(select(CHECKPOINTS)).one()

    cp = log.read_sync(get)
    _, mac = log.runtime.keyring.mac(CHECKPOINT_PURPOSE, checkpoint_message(cp.seq, cp.hash), cp.key_version)
    assert bytes(cp.signature) == mac and cp.seq == 50


class _Obj:
    def __init__(self, d: dict[str, object]) -> None:
        self.__dict__.update(d)


def test_a_checkpoint_of_the_head_proves_a_later_cut_without_the_head_file(log: Database, raw: Engine) -> None:
    from lockbox.audit.chain import checkpoint_head

    assert log.write_sync(checkpoint_head) == ENTRIES
    assert log.write_sync(checkpoint_head) == ENTRIES  # idempotent
    report = check(log)
    assert report.ok and report.checkpoints_checked == 2
    tamper(raw, lambda c: drop_rows(c, 59, 60))
    assert bad(check(log, head=None)) == (59, "truncated")


def test_the_head_file_rotates_and_the_newest_head_survives_rotation(tmp_path: Path, log: Database) -> None:
    keyring = log.runtime.keyring
    heads = tmp_path / "heads"
    heads.mkdir()
    head = HeadFile(heads / "audit-head.jsonl", keyring, max_bytes=400, generations=2)
    for seq in range(1, 31):
        head.write(seq, f"{seq:064x}")
        assert head.latest() == Head(seq, f"{seq:064x}")  # right after a rotation too
    files = {p.name for p in heads.iterdir()}
    assert {"audit-head.jsonl.1", "audit-head.jsonl.2"} <= files <= {"audit-head.jsonl", "audit-head.jsonl.1",
                                                                     "audit-head.jsonl.2"}
    assert all(p.stat().st_size < 400 + 200 for p in heads.iterdir())  # bounded: at most a line over
    # The newest generation without a valid line (torn by a crash) falls back to the one before.
    (heads / "audit-head.jsonl").write_text('{"seq": 99, "hash": "torn"\n')
    assert head.latest() is not None and head.latest().seq < 31  # type: ignore[union-attr]
