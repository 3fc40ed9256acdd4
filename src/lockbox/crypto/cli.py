"""``lockbox keys …``: rotate the key-encryption key and re-wrap every data key under it."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

COMMAND = "keys"
EXIT_INCOMPLETE = 1
EXIT_UNABLE = 2

cli = typer.Typer(help="Key-encryption keys: rotation and usage.", no_args_is_help=True)


@cli.callback()
def _group() -> None:
    """Key-encryption keys: rotation and usage."""


@cli.command("rotate")
def rotate(
    batch_size: int = typer.Option(500, min=1, help="Thread keys or secrets moved per committed batch."),
    retire_old: bool = typer.Option(False, "--retire-old",
                                    help="Then retire every old version (see `lockbox keys retire`)."),
) -> None:
    """Add a new key version; re-wrap every thread's data key and re-seal every sealed secret under it.

    Sealed secrets: TOTP secrets, legal-hold reasons, the gateway's recipient addresses and unsent
    links and codes.

    Safe to stop and run again: a run that finds rows still on an older version finishes that
    rotation instead of starting another. Old versions stay in the key file (old audit checkpoints
    and backups need them). Exit 1 if some keys could not be unwrapped.
    """
    from lockbox.app import build_database
    from lockbox.config import load_settings
    from lockbox.crypto.exceptions import KeyFileError
    from lockbox.crypto.service import rotate_keys

    settings = load_settings()
    if settings.key_provider == "file" and not settings.resolved_key_file.exists():
        typer.echo(f"error: no key file at {settings.resolved_key_file}", err=True)
        raise typer.Exit(EXIT_UNABLE)
    try:
        db = build_database(settings)
    except KeyFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_UNABLE) from None
    provider = db.runtime.keyring.provider
    if not hasattr(provider, "add_version"):
        db.close()
        typer.echo("error: this key provider rotates its own keys", err=True)
        raise typer.Exit(EXIT_UNABLE)
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      console=Console(stderr=True)) as bar:
            tasks: dict[str, TaskID] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    label = "re-wrapping thread keys" if phase == "threads" else f"re-sealing {phase}"
                    tasks[phase] = bar.add_task(label, total=total)
                bar.update(tasks[phase], completed=done, total=max(total, done))

            result = rotate_keys(db, provider, progress, batch_size=batch_size)  # type: ignore[arg-type]
    finally:
        db.close()
    how = "finished the interrupted rotation to" if result.resumed else "rotated to"
    each = ", ".join(f"{n} {name}" for name, n in result.resealed.items())
    typer.echo(f"{how} key version {result.version}: {result.threads} thread keys re-wrapped, "
               f"{result.secrets} secrets re-sealed" + (f" ({each})" if each else ""))
    if result.unreadable:
        typer.echo(f"warning: {len(result.unreadable)} keys could not be unwrapped and stay on their old "
                   f"version: {' '.join(result.unreadable)}", err=True)
        raise typer.Exit(EXIT_INCOMPLETE)
    if retire_old:
        retire(None)


@cli.command("status")
def status() -> None:
    """The key versions in the key file, the active one, and how many seals each has made."""
    from lockbox.app import build_database
    from lockbox.config import load_settings
    from lockbox.crypto import aead
    from lockbox.crypto.keys import LocalKeyFile
    from lockbox.crypto.service import seals

    settings = load_settings()
    if not settings.resolved_key_file.exists():
        typer.echo(f"error: no key file at {settings.resolved_key_file}", err=True)
        raise typer.Exit(EXIT_UNABLE)
    provider = LocalKeyFile(settings.resolved_key_file, create=False)
    db = build_database(settings)
    try:
        for version in provider.versions():
            used = db.read_sync(seals, key_version=version)
            mark = " (active)" if version == provider.active_version() else ""
            typer.echo(f"key version {version}{mark}: {used} seals, {used / aead.SEAL_LIMIT:.6%} of its budget")
    finally:
        db.close()


@cli.command("retire")
def retire(versions: list[int] | None = typer.Argument(None, help="Versions to retire (default: every old one).")
           ) -> None:
    """Destroy old key versions once rotation has moved everything off them.

    Afterwards nothing they wrapped opens again, in this database or in any backup made before: this is
    what finally shreds threads purged by retention from old backups. Audit checkpoints they signed
    stay verifiable. Refuses (exit 2) while a thread key or any sealed secret still uses a version.
    """
    from lockbox.app import build_database
    from lockbox.config import load_settings
    from lockbox.crypto.exceptions import CryptoError
    from lockbox.crypto.keys import LocalKeyFile
    from lockbox.crypto.service import retire_version

    settings = load_settings()
    if settings.key_provider != "file" or not settings.resolved_key_file.exists():
        typer.echo("error: retire works on the key file; in Vault, raise the transit key's min_decryption_version",
                   err=True)
        raise typer.Exit(EXIT_UNABLE)
    db = build_database(settings)
    try:
        provider = db.runtime.keyring.provider
        assert isinstance(provider, LocalKeyFile)
        targets = versions or [v for v in provider.versions() if v != provider.active_version()]
        for version in targets:
            try:
                retire_version(db, provider, version)
            except CryptoError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(EXIT_UNABLE) from None
            typer.echo(f"retired key version {version}")
        if not targets:
            typer.echo("no old key versions to retire")
    finally:
        db.close()
