"""``lockbox directory …``: load the clinic's directory file; prints one JSON line per user it created."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lockbox.crypto.exceptions import KeyFileError
from lockbox.errors import LockboxError

cli = typer.Typer(help="The clinic's directory: locations, care teams, pools, staff and patients.",
                  no_args_is_help=True)

EXIT_INVALID = 2


@cli.callback()
def _group() -> None:
    """The clinic's directory: locations, care teams, pools, staff and patients."""


@cli.command("load")
def load(
    file: Path = typer.Argument(..., help="Directory YAML file (see docs/ARCHITECTURE.md section 5).",
                                dir_okay=False),
) -> None:
    """Idempotently load FILE; prints {"username", "role", "enrolment_code"} for each user it created.

    On any error nothing is loaded, the error goes to stderr and the exit status is 2.
    """
    from lockbox.app import build_database
    from lockbox.config import load_settings
    from lockbox.directory.schemas import read_directory_file
    from lockbox.directory.service import load_directory

    try:
        # The file is checked before the database is touched, so a typo never creates a data dir.
        doc = read_directory_file(file)
        db = build_database(load_settings())
        try:
            db.migrate()
            created = db.write_sync(load_directory, doc=doc)
        finally:
            db.close()
    except (LockboxError, KeyFileError) as exc:
        typer.echo(f"error: {exc.detail if isinstance(exc, LockboxError) else exc}", err=True)
        raise typer.Exit(EXIT_INVALID) from None
    for user in created:
        typer.echo(json.dumps({"username": user.username, "role": user.role,
                               "enrolment_code": user.enrolment_code}))
