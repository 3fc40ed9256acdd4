"""``lockbox retention …``: show policies, purge what is due now, and place or release legal holds."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer

from lockbox.crypto.exceptions import KeyFileError
from lockbox.errors import LockboxError

cli = typer.Typer(help="Retention policies, purges and legal holds.", no_args_is_help=True)

EXIT_INVALID = 2
T = TypeVar("T")


@cli.callback()
def _group() -> None:
    """Retention policies, purges and legal holds."""


@contextmanager
def _database() -> Iterator[Any]:
    from lockbox.app import build_database
    from lockbox.config import load_settings

    try:
        db = build_database(load_settings())
    except KeyFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_INVALID) from None
    try:
        db.migrate()
        yield db
    finally:
        db.close()


def _run(fn: Callable[[Any], T]) -> T:
    with _database() as db:
        try:
            return fn(db)
        except LockboxError as exc:
            typer.echo(f"error: {exc.detail}", err=True)
            raise typer.Exit(EXIT_INVALID) from None


def _hold_json(hold: Any) -> str:
    return json.dumps({"id": hold.id, "subject_type": hold.subject_type, "subject_id": hold.subject_id,
                       "reason": hold.reason, "placed_at": hold.placed_at.isoformat(),
                       "released_at": hold.released_at.isoformat() if hold.released_at else None})


@cli.command("policies")
def show_policies() -> None:
    """The retention policy per thread kind (days; 0 keeps forever)."""
    from lockbox.config import load_settings
    from lockbox.retention.service import policies

    try:
        rules = policies(load_settings())
    except LockboxError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(EXIT_INVALID) from None
    for p in rules.values():
        typer.echo(json.dumps({"kind": p.kind, "days": p.days, "after": p.after}))


@cli.command("run")
def run(dry_run: bool = typer.Option(False, "--dry-run", help="List what is due, held or not; purge nothing.")
        ) -> None:
    """Purge every thread past its policy now (the worker also does this periodically)."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from lockbox.retention.service import due_threads, policies, sweep

    def go(db: Any) -> None:
        rules = policies(db.runtime.settings)
        if dry_run:
            due = db.read_sync(due_threads, rules=rules, limit=1_000_000)
            held = db.read_sync(due_threads, rules=rules, limit=1_000_000, held=True)
            typer.echo(json.dumps({"due": len(due), "held": len(held)}))
            return
        total = 0
        with Progress(SpinnerColumn(), TextColumn("purged {task.completed} threads"),
                      console=Console(stderr=True)) as bar:
            task = bar.add_task("purge", total=None)
            while True:
                result = db.write_sync(sweep, rules=rules, limit=db.runtime.settings.retention_batch)
                total += len(result.purged)
                bar.update(task, completed=total)
                if not result.more:
                    break
        held = db.read_sync(due_threads, rules=rules, limit=1_000_000, held=True)
        typer.echo(json.dumps({"purged": total, "held": len(held)}))

    _run(go)


@cli.command("hold")
def hold(
    reason: str = typer.Option(..., help="Why (a matter or request number; no patient details)."),
    patient: str | None = typer.Option(None, help="Patient username: holds all their threads."),
    thread: str | None = typer.Option(None, help="Thread id."),
) -> None:
    """Place a legal hold; prints it as JSON."""
    from lockbox.retention.service import place_hold

    typer.echo(_hold_json(_run(lambda db: db.write_sync(place_hold, actor=None, patient=patient, thread_id=thread,
                                                        reason=reason))))


@cli.command("release")
def release(hold_id: str = typer.Argument(..., help="The hold's id.")) -> None:
    """Release a legal hold; its threads fall under their policy again."""
    from lockbox.retention.service import release_hold

    typer.echo(_hold_json(_run(lambda db: db.write_sync(release_hold, actor=None, hold_id=hold_id))))


@cli.command("holds")
def holds(released: bool = typer.Option(False, help="Include released holds.")) -> None:
    """List legal holds, one JSON object per line."""
    from lockbox.retention.service import list_holds

    for h in _run(lambda db: db.read_sync(list_holds, actor=None, include_released=released)):
        typer.echo(_hold_json(h))
