"""``lockbox fhir …``: match accounts to the EHR's records, report mismatches, record staff identifiers,
confirm a link a person checked, and export the audit trail and consents as FHIR NDJSON (or push them)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import typer

from lockbox.db import Database

if TYPE_CHECKING:
    from lockbox.fhir.client import FhirClient

cli = typer.Typer(help="EHR integration over HL7 FHIR R4.", no_args_is_help=True)
PUSH_BATCH = 100


@cli.callback()
def _group() -> None:
    """EHR integration over HL7 FHIR R4."""


@contextmanager
def _database(*, needs_ehr: bool) -> Iterator[Database]:
    from lockbox.app import build_database
    from lockbox.config import load_settings
    from lockbox.fhir.runtime import close_all

    settings = load_settings()
    if needs_ehr and not settings.fhir_base_url:
        typer.echo("error: set LOCKBOX_FHIR_BASE_URL to the EHR's FHIR R4 base URL", err=True)
        raise typer.Exit(2)
    db = build_database(settings)
    db.migrate()
    try:
        yield db
    finally:
        close_all()
        db.close()


def _fail_on_fhir(fn: Callable[[], Any]) -> Any:
    from lockbox.errors import LockboxError

    try:
        return fn()
    except LockboxError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from None


def _print_links(db: Database, *, problems_only: bool) -> int:
    from lockbox.fhir import service

    rows = db.read_sync(service.link_report, problems_only=problems_only)
    for row in rows:
        typer.echo(row.model_dump_json())
    return sum(1 for r in rows if r.status != "linked")


@cli.command("match")
def match_command(
    problems_only: bool = typer.Option(False, "--problems-only", help="Print only accounts that are not linked."),
) -> None:
    """Match every patient (by MRN) and every staff member with an identifier (by NPI …) to the EHR.

    Prints one JSON object per account with its link status; exit 1 when any is not linked.
    Mismatches are never guessed: resolve them in the EHR, or confirm with `lockbox fhir link`.
    """
    from lockbox.fhir.tasks import match_everyone

    with _database(needs_ehr=True) as db:
        counts = _fail_on_fhir(lambda: match_everyone(db))
        problems = _print_links(db, problems_only=problems_only)
    typer.echo("matched: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), err=True)
    if problems:
        raise typer.Exit(1)


@cli.command("links")
def links_command(
    problems_only: bool = typer.Option(False, "--problems-only", help="Print only accounts that are not linked."),
) -> None:
    """The stored link statuses (no call to the EHR); exit 1 when any account is not linked."""
    with _database(needs_ehr=False) as db:
        problems = _print_links(db, problems_only=problems_only)
    if problems:
        raise typer.Exit(1)


@cli.command("staff-id")
def staff_id_command(username: str, identifier: str) -> None:
    """Record the identifier (LOCKBOX_FHIR_STAFF_IDENTIFIER_SYSTEM, NPI by default) a staff member matches by."""
    from lockbox.fhir import service

    with _database(needs_ehr=False) as db:
        _fail_on_fhir(lambda: db.write_sync(service.set_staff_identifier, username=username, identifier=identifier))
    typer.echo(f"recorded; run `lockbox fhir match` to match {username}", err=True)


@cli.command("link")
def link_command(username: str, fhir_id: str) -> None:
    """Confirm, after checking by hand, that USERNAME is the EHR's Patient (or Practitioner) FHIR_ID."""
    from lockbox.fhir import service

    with _database(needs_ehr=False) as db:
        _fail_on_fhir(lambda: db.write_sync(service.confirm_link, username=username, fhir_id=fhir_id))
    typer.echo("linked", err=True)


@contextmanager
def _output(path: Path | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        typer.echo(f"error: cannot create {path}: {exc.strerror}", err=True)
        raise typer.Exit(2) from None
    with os.fdopen(fd, "w") as fh:
        yield fh


def _push(db: Database, resources: Iterable[dict[str, Any]]) -> int:
    from lockbox.fhir.export import push_entries
    from lockbox.fhir.runtime import runtime_for

    rt = runtime_for(db.runtime.settings)
    items = list(resources)
    for start in range(0, len(items), PUSH_BATCH):
        bundle = push_entries(items[start:start + PUSH_BATCH])

        def send(client: FhirClient, bundle: dict[str, Any] = bundle) -> Coroutine[Any, Any, dict[str, Any]]:
            return client.transaction(bundle)

        _fail_on_fhir(lambda: rt.call(send))
    return len(items)


def _export(kind: str, produce: Callable[..., Iterator[dict[str, Any]]], output: Path | None, push: bool,
            **kwargs: Any) -> None:
    from lockbox.audit.service import record

    with _database(needs_ehr=push) as db:
        if push:
            resources = db.read_sync(lambda s: list(produce(s, **kwargs)))
            count = _push(db, resources)
            action = "fhir.export.push"
        else:
            def write(session: Any, out: TextIO) -> int:
                n = 0
                for res in produce(session, **kwargs):
                    out.write(json.dumps(res, separators=(",", ":"), ensure_ascii=False) + "\n")
                    n += 1
                return n

            with _output(output) as out:
                count = _fail_on_fhir(lambda: db.read_sync(write, out=out))
            action = "fhir.export.export"
        db.write_sync(lambda s: record(s, action=action, subject_type="fhir", subject_id=kind, rows=count))
    typer.echo(f"{'pushed' if push else 'exported'} {count} {kind} resources", err=True)


@cli.command("export-audit")
def export_audit_command(
    since: datetime | None = typer.Option(None, help="From this time (UTC), e.g. 2026-01-01."),
    until: datetime | None = typer.Option(None, help="Before this time (UTC)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="NDJSON file (created 0600); default stdout."),
    push: bool = typer.Option(False, "--push", help="Send to the EHR (transaction Bundles) instead of writing."),
) -> None:
    """The audit trail as FHIR AuditEvent resources, one per line (Bulk Data NDJSON). Itself audited."""
    from lockbox.fhir.export import audit_events

    since_utc = _utc(since)
    until_utc = _utc(until)
    _export("AuditEvent", audit_events, output, push, since=since_utc, until=until_utc)


@cli.command("export-consent")
def export_consent_command(
    output: Path | None = typer.Option(None, "--output", "-o", help="NDJSON file (created 0600); default stdout."),
    push: bool = typer.Option(False, "--push", help="Send to the EHR (transaction Bundles) instead of writing."),
) -> None:
    """Every consent record as a FHIR Consent resource, one per line (Bulk Data NDJSON). Itself audited."""
    from lockbox.fhir.export import consents

    _export("Consent", consents, output, push)


def _utc(value: datetime | None) -> datetime | None:
    from datetime import UTC

    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
