"""Walk the audit log in seq order, batch by batch, and name the first entry that breaks the chain.

Besides the chain itself, signed checkpoints and the external head file remember how far the log
went and what it ended in, which is what catches a cut-off tail or a log rewritten end to end.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, Row, Table, func, select
from sqlalchemy.orm import Session

from lockbox.audit.chain import CHECKPOINT_PURPOSE, GENESIS, checkpoint_message, row_hash
from lockbox.audit.headfile import Head
from lockbox.audit.models import AuditCheckpoint, AuditRow
from lockbox.crypto.exceptions import CryptoError
from lockbox.crypto.keys import Keyring

Kind = Literal["altered", "deleted", "inserted", "reordered", "truncated", "bad_checkpoint"]

BATCH = 5000
# How far from its stored seq a moved row is looked for when telling a shift from an edit.
SEARCH = 64

_ROWS: Table = AuditRow.__table__  # type: ignore[assignment]
_CHECKPOINTS: Table = AuditCheckpoint.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Problem:
    seq: int
    kind: Kind
    detail: str  # seqs and counts only: never row contents
    action: str | None = None


@dataclass(frozen=True)
class Report:
    ok: bool
    rows_checked: int
    last_seq: int
    checkpoints_checked: int
    head_seq: int | None
    problem: Problem | None = None

    @property
    def first_bad_seq(self) -> int | None:
        return self.problem.seq if self.problem else None

    @property
    def kind(self) -> Kind | None:
        return self.problem.kind if self.problem else None

    def summary(self) -> str:
        if self.problem is None:
            cps = f"{self.checkpoints_checked} signed checkpoint{'' if self.checkpoints_checked == 1 else 's'}"
            head = "no head file" if self.head_seq is None else f"head file at seq {self.head_seq}"
            return f"audit log intact: {self.rows_checked} rows, {cps}, {head}"
        return (f"audit log NOT intact: first bad entry: seq {self.problem.seq} ({self.problem.kind}): "
                f"{self.problem.detail}; {self.rows_checked} rows verified before it")


def log_size(source: Connection | Session) -> int:
    """The highest seq: the progress bar's total (cheap, from the primary key)."""
    return int(_connection(source).execute(select(func.coalesce(func.max(_ROWS.c.seq), 0))).scalar_one())


def verify(
    connection_or_session: Connection | Session,
    keyring: Keyring,
    head: Head | None,
    *,
    batch_size: int = BATCH,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Check every row's hash, seq continuity and link, every checkpoint's signature, and the head.

    Read ``head`` (HeadFile.latest) before calling: it is written after commit, so read first it can
    never be ahead of the rows this walk sees. Memory stays at one batch whatever the log's size.
    """
    return _Walk(_connection(connection_or_session), keyring, head).run(batch_size, progress)


def _connection(source: Connection | Session) -> Connection:
    if isinstance(source, Session):
        if source.get_bind().dialect.name == "postgresql" and not source.in_transaction():
            # One snapshot for the whole walk: rows and checkpoints committed meanwhile by a running
            # server must not look like a checkpoint beyond the end of the log.
            return source.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        return source.connection()
    return source


def _batches(conn: Connection, table: Table, columns: Sequence[Any], size: int) -> Iterator[Sequence[Row[Any]]]:
    """Keyset pagination on seq: each batch is one indexed range scan, however deep into the log."""
    last: int | None = None
    while True:
        query = select(*columns).order_by(table.c.seq).limit(size)
        if last is not None:
            query = query.where(table.c.seq > last)
        rows = conn.execute(query).all()
        if not rows:
            return
        yield rows
        if len(rows) < size:
            return
        last = rows[-1].seq


class _Walk:
    def __init__(self, conn: Connection, keyring: Keyring, head: Head | None) -> None:
        self.conn = conn
        self.keyring = keyring
        self.head = head
        self.rows_checked = 0
        self.checkpoints_checked = 0
        self.last_seq = 0
        self.last_hash = GENESIS
        # The newest seq whose hash an independent record (checkpoint or head) confirmed.
        self.anchor = 0

    def report(self, problem: Problem | None) -> Report:
        return Report(ok=problem is None, rows_checked=self.rows_checked, last_seq=self.last_seq,
                      checkpoints_checked=self.checkpoints_checked,
                      head_seq=self.head.seq if self.head else None, problem=problem)

    def run(self, batch_size: int, progress: Callable[[int], None] | None) -> Report:
        cp_cols = [_CHECKPOINTS.c.seq, _CHECKPOINTS.c.hash, _CHECKPOINTS.c.key_version, _CHECKPOINTS.c.signature]
        checkpoints = (cp for batch in _batches(self.conn, _CHECKPOINTS, cp_cols, batch_size) for cp in batch)
        cp = next(checkpoints, None)
        for batch in _batches(self.conn, _ROWS, list(_ROWS.c), batch_size):
            for row in batch:
                problem = self.check_row(row)
                while problem is None and cp is not None and cp.seq <= row.seq:
                    problem = self.check_checkpoint(cp, row)
                    cp = next(checkpoints, None)
                if problem is None and self.head is not None and self.head.seq == row.seq:
                    problem = self.check_head(row)
                if problem is not None:
                    return self.report(problem)
                self.rows_checked += 1
                self.last_seq, self.last_hash = row.seq, row.hash
            if progress is not None:
                progress(self.rows_checked)
        return self.report(self.check_tail(cp, checkpoints))

    # -- rows -----------------------------------------------------------------------------------

    def check_row(self, row: Row[Any]) -> Problem | None:
        expected = self.last_seq + 1
        intact = row_hash(row.seq, row, row.prev_hash) == row.hash
        linked = row.prev_hash == self.last_hash
        if intact and linked and row.seq == expected:
            return None
        return self.classify(row, expected, intact)

    def classify(self, row: Row[Any], expected: int, intact: bool) -> Problem:
        """Name what most likely happened, from the rows around the first break."""
        s = row.seq
        if s > expected:
            missing = f"seq {expected}" if s == expected + 1 else f"seqs {expected}..{s - 1}"
            return Problem(expected, "deleted", f"{missing} missing: the log jumps to seq {s}")
        if s < expected:  # only a seq below 1 can sort before the first row
            return Problem(s, "inserted", f"a row with seq {s} sits before the first entry", row.action)
        if intact:
            # The row is as written, but its predecessor is not the row it was chained to: that one
            # was replaced by a row whose hash was recomputed to pass.
            if s == 1:
                return Problem(1, "altered", "the first row does not start from the genesis hash", row.action)
            return Problem(s - 1, "altered",
                           f"row {s - 1} was replaced and its hash recomputed; row {s} still links to the original")
        window = {r.seq: r for r in self.conn.execute(
            select(_ROWS).where(_ROWS.c.seq.between(s - SEARCH, s + SEARCH)).order_by(_ROWS.c.seq))}
        nxt = window.get(s + 1)
        home = next((k for k in _around(s) if row_hash(k, row, row.prev_hash) == row.hash), None)
        if home is not None:
            # The row is intact but numbered as if it stood elsewhere. If its successor moved by the
            # same amount, rows were removed (or forged ones added) and the rest renumbered;
            # otherwise rows changed places.
            shifted = nxt is None or (nxt.prev_hash == row.hash
                                      and row_hash(home + 1, nxt, nxt.prev_hash) == nxt.hash)
            if home < s:
                if shifted:
                    return Problem(home, "inserted",
                                   f"{s - home} row(s) forged at seq {home}; the original row {home} now sits at "
                                   f"seq {s}", window[home].action if home in window else None)
                return Problem(home, "reordered", f"the row written as seq {home} now sits at seq {s}")
            if shifted:
                return Problem(s, "deleted", f"{home - s} row(s) removed at seq {s} and the rest renumbered",
                               row.action)
            return Problem(s, "reordered", f"the row written as seq {home} now sits at seq {s}", row.action)
        for j, other in window.items():
            if j != s and row_hash(j, row, other.prev_hash) == other.hash:
                return Problem(s, "reordered", f"row {s} holds the contents written as row {j}", row.action)
        if nxt is not None and nxt.prev_hash == self.last_hash and row_hash(s, nxt, nxt.prev_hash) == nxt.hash:
            return Problem(s, "inserted", f"row {s} is not part of the chain; the rows after it were renumbered",
                           row.action)
        return Problem(s, "altered", f"row {s} differs from what was written", row.action)

    # -- anchors --------------------------------------------------------------------------------

    def signature_ok(self, cp: Row[Any]) -> Problem | None:
        try:
            _, mac = self.keyring.mac(CHECKPOINT_PURPOSE, checkpoint_message(cp.seq, cp.hash), cp.key_version)
        except CryptoError:
            return Problem(cp.seq, "bad_checkpoint",
                           f"the checkpoint at seq {cp.seq} names key version {cp.key_version}, not in the key file")
        if not hmac.compare_digest(mac, bytes(cp.signature)):
            return Problem(cp.seq, "bad_checkpoint", f"the checkpoint at seq {cp.seq} has a forged signature")
        return None

    def check_checkpoint(self, cp: Row[Any], row: Row[Any]) -> Problem | None:
        problem = self.signature_ok(cp)
        if problem is not None:
            return problem
        if cp.seq != row.seq:  # rows are contiguous here, so this is a seq no row can have
            return Problem(cp.seq, "bad_checkpoint", f"a checkpoint at seq {cp.seq}, where no row can be")
        if cp.hash != row.hash:
            return Problem(cp.seq, "bad_checkpoint",
                           f"rows {self.anchor + 1}..{cp.seq} were rewritten: they no longer end in the hash "
                           "the signed checkpoint recorded", row.action)
        self.checkpoints_checked += 1
        self.anchor = cp.seq
        return None

    def check_head(self, row: Row[Any]) -> Problem | None:
        assert self.head is not None
        if self.head.hash != row.hash:
            return Problem(row.seq, "altered",
                           f"rows {self.anchor + 1}..{row.seq} were rewritten: they no longer end in the hash "
                           "the head file recorded", row.action)
        self.anchor = row.seq
        return None

    def check_tail(self, cp: Row[Any] | None, rest: Iterator[Row[Any]]) -> Problem | None:
        end = self.last_seq + 1
        if self.head is not None and self.head.seq > self.last_seq:
            return Problem(end, "truncated",
                           f"the head file saw the log reach seq {self.head.seq}; it now ends at {self.last_seq}")
        forged: Problem | None = None
        while cp is not None:
            problem = self.signature_ok(cp)
            if problem is None:
                return Problem(end, "truncated",
                               f"a signed checkpoint at seq {cp.seq}; the log now ends at {self.last_seq}")
            forged = forged or problem
            cp = next(rest, None)
        return forged


def _around(seq: int) -> Iterator[int]:
    for distance in range(1, SEARCH + 1):
        if seq - distance >= 1:
            yield seq - distance
        yield seq + distance
