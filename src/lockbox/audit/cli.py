"""``lockbox audit …``: verify the hash chain (exit 0 intact, 1 tampered, 2 unable) and export rows."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TextIO

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from lockbox.db import Database

cli = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)

EXIT_TAMPERED = 1
EXIT_UNABLE = 2
# Below this many rows the check takes about a second: no progress bar.
PROGRESS_FROM = 50_000


@cli.callback()
def _group() -> None:
    """The tamper-evident audit log."""


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_UNABLE)


@contextmanager
def _database() -> Iterator[Database]:
    from lockbox.app import build_database
    from lockbox.config import load_settings
    from lockbox.crypto.exceptions import KeyFileError

    settings = load_settings()
    # build_database would create a fresh key file, against which every checkpoint looks forged.
    if not settings.resolved_key_file.exists():
        raise _fail(f"no key file at {settings.resolved_key_file}: set LOCKBOX_DATA_DIR or LOCKBOX_KEY_FILE")
    try:
        db = build_database(settings)
    except KeyFileError as exc:
        raise _fail(str(exc)) from None
    try:
        yield db
    except SQLAlchemyError as exc:
        raise _fail(f"cannot read the audit log ({type(exc).__name__}); is the database migrated?") from None
    finally:
        db.close()


@cli.command("verify")
def verify_command(
    batch_size: int = typer.Option(5000, min=10, help="Rows read per query."),
) -> None:
    """Check every row's hash and link, the signed checkpoints and the head file.

    Exit 0 when the chain is intact; 1 with the first bad entry (seq and kind) when it is not.
    """
    from lockbox.audit.headfile import HeadFile
    from lockbox.audit.verify import Report, log_size, verify
    from lockbox.db.uow import runtime_of

    def run(session: Session) -> Report:
        rt = runtime_of(session)
        head = HeadFile(rt.settings.audit_head_file, rt.keyring).latest()
        total = log_size(session)
        with Progress(TextColumn("verifying audit log"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=Console(stderr=True), transient=True, disable=total < PROGRESS_FROM) as bar:
            task = bar.add_task("verify", total=total)
            return verify(session, rt.keyring, head, batch_size=batch_size,
                          progress=lambda n: bar.update(task, completed=n))

    with _database() as db:
        report = db.read_sync(run)
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(EXIT_TAMPERED)


@cli.command("export")
def export_command(
    since: datetime | None = typer.Option(None, help="From this time (UTC), e.g. 2026-01-01 or 2026-01-01T08:00:00."),
    until: datetime | None = typer.Option(None, help="Before this time (UTC)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="File to write (created 0600); default stdout."),
) -> None:
    """Write audit rows, oldest first, as JSON lines (identifiers only). The export is itself audited."""
    from lockbox.audit.service import export_log, record

    def run(session: Session, out: TextIO) -> int:
        return export_log(session, out=out, since=since, until=until)

    with _database() as db:
        if output is None:
            count = db.read_sync(run, out=sys.stdout)
        else:
            try:
                fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as exc:
                raise _fail(f"cannot create {output}: {exc.strerror}") from None
            with os.fdopen(fd, "w") as fh:
                count = db.read_sync(run, out=fh)
        db.write_sync(lambda s: record(s, action="audit.log.export", rows=count))
    typer.echo(f"exported {count} audit rows", err=True)
