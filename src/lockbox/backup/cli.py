"""``lockbox backup PATH`` and ``lockbox restore PATH``: top-level commands, with Rich progress."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn

EXIT_FAILED = 2

_LABELS = {"snapshot": "snapshot of the database", "archive": "encrypting the archive",
           "check": "checking the archive"}


@contextmanager
def _progress() -> Iterator[object]:
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  console=Console(stderr=True), transient=False) as bar:
        tasks: dict[str, TaskID] = {}

        def report(phase: str, done: int, total: int | None) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(_LABELS.get(phase, phase), total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield report


def backup(path: Path = typer.Argument(..., help="Archive to write (must not exist).", dir_okay=False)) -> None:
    """Write an encrypted, integrity-checked archive of the database while the server runs.

    The archive key comes from LOCKBOX_BACKUP_PASSPHRASE or LOCKBOX_BACKUP_KEY_FILE, never from the data
    key file, which is NOT in the archive: back it up separately (docs/operations.md).
    """
    from lockbox.backup.service import BackupError
    from lockbox.backup.service import backup as run_backup
    from lockbox.config import load_settings

    try:
        with _progress() as report:
            manifest = run_backup(load_settings(), path, report)  # type: ignore[arg-type]
    except BackupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    typer.echo(f"backup written to {path}: {manifest.dialect} database of {manifest.database_bytes} bytes, audit "
               f"log to seq {manifest.audit_seq}, needs key versions {manifest.key_versions} from the key file")


def restore(
    path: Path = typer.Argument(..., help="Archive written by `lockbox backup`.", dir_okay=False),
    force: bool = typer.Option(False, "--force", help="Replace a database that is not empty."),
    check_only: bool = typer.Option(False, "--check-only", help="Check the archive and the key file; change nothing."),
) -> None:
    """Check an archive whole, then restore it into the configured data dir or database (server stopped)."""
    from lockbox.backup.service import BackupError
    from lockbox.backup.service import restore as run_restore
    from lockbox.config import load_settings

    try:
        with _progress() as report:
            result = run_restore(load_settings(), path, force=force, check_only=check_only,
                                 progress=report)  # type: ignore[arg-type]
    except BackupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    m = result.manifest
    if not result.restored:
        typer.echo(f"archive intact: {m.dialect} database from {m.created_at}, audit log to seq {m.audit_seq}; "
                   "the key file matches")
        return
    typer.echo(f"restored the {m.dialect} database from {m.created_at} (audit log to seq {m.audit_seq}); "
               "run `lockbox audit verify` next")
    if result.head_moved_to:
        typer.echo(f"the previous audit head file was kept as {result.head_moved_to}")
