"""Online backup and checked restore.

A backup signs the audit head into the database, copies the audit head file, snapshots the database
while the server keeps writing (SQLite's online backup API in one step, so a busy writer cannot
restart it forever; ``pg_dump`` on PostgreSQL, itself a consistent snapshot) and streams the lot into
an encrypted archive. The key file is never in the archive: without it the archive's messages cannot
be read, which is why it is backed up separately (docs/operations.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from lockbox.backup.archive import ArchiveError, BackupKey, OpeningReader, SealingWriter
from lockbox.config import Settings

Progress = Callable[[str, int, int | None], None]
MANIFEST, HEAD, DATABASE = "manifest.json", "audit-head.jsonl", "database"
KEY_CHECK = "backup-key-check"


class BackupError(Exception):
    """A backup or restore that cannot proceed; the message says why and what to do, without data."""


@dataclass(frozen=True)
class Manifest:
    format: int
    created_at: str
    dialect: str
    revision: str | None
    database_sha256: str
    database_bytes: int
    audit_seq: int | None
    # KEK versions the data needs (threads' wrapped keys, the active one), and a MAC proving which key
    # file made the backup: a restore with another key file is refused before it overwrites anything.
    key_versions: list[int]
    key_check_version: int
    key_check: str


def backup_key(settings: Settings) -> BackupKey:
    try:
        return BackupKey(passphrase=settings.backup_passphrase, key_file=settings.backup_key_file)
    except ArchiveError as exc:
        raise BackupError(str(exc)) from None


def _noop(phase: str, done: int, total: int | None) -> None:
    return None


# -- backup --------------------------------------------------------------------------------------


def backup(settings: Settings, path: Path, progress: Progress = _noop) -> Manifest:
    """Write an encrypted archive of the database to ``path`` (which must not exist) while it serves."""
    from lockbox.app import build_database
    from lockbox.audit.chain import checkpoint_head
    from lockbox.crypto.exceptions import KeyFileError

    key = backup_key(settings)
    if path.exists():
        raise BackupError(f"{path} already exists; choose a new file name")
    if not settings.resolved_key_file.exists() and settings.key_provider == "file":
        raise BackupError(f"no key file at {settings.resolved_key_file}: nothing to back up here")
    try:
        db = build_database(settings)
    except KeyFileError as exc:
        raise BackupError(str(exc)) from None
    tmp = settings.data_dir / f".backup-{secrets.token_hex(8)}.tmp"
    try:
        progress("snapshot", 0, None)
        # Sign the head first, then copy the head file, then snapshot: the copy can then never be
        # ahead of the snapshot, and the snapshot ends in a signed checkpoint.
        audit_seq = db.write_sync(checkpoint_head)
        head = settings.audit_head_file.read_bytes() if settings.audit_head_file.exists() else b""
        if db.dialect == "sqlite":
            _sqlite_snapshot(db.url, tmp)
        else:
            _pg_dump(db.url, tmp)
        keyring = db.runtime.keyring
        active = keyring.provider.active_version()
        versions = sorted(set(db.read_sync(_thread_key_versions)) | {active})
        revision = db.read_sync(_revision)
        dialect = db.dialect
    finally:
        db.close()
    try:
        digest, size = _sha256(tmp)
        _, check = keyring.mac(KEY_CHECK, digest.encode(), version=active)
        manifest = Manifest(format=1, created_at=datetime.now(UTC).isoformat(), dialect=dialect, revision=revision,
                            database_sha256=digest, database_bytes=size, audit_seq=audit_seq, key_versions=versions,
                            key_check_version=active, key_check=check.hex())
        _write_archive(path, key, manifest, head, tmp, progress)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


def _thread_key_versions(session: Any) -> list[int]:
    from sqlalchemy import select

    from lockbox.messaging.models import Thread

    return [int(v) for v in session.scalars(select(Thread.key_version).distinct())]


def _revision(session: Any) -> str | None:
    return session.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


def _sqlite_snapshot(url: str, target: Path) -> None:
    source_path = make_url(url).database
    assert source_path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    src = sqlite3.connect(source_path, timeout=30)
    dst = sqlite3.connect(target)
    try:
        # One step: a consistent snapshot under WAL that never blocks the server's writer; a stepwise
        # copy restarts whenever the server commits and might never finish on a busy clinic.
        src.backup(dst, pages=-1)
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        dst.close()
        src.close()


def _pg_env(url: str) -> tuple[str, dict[str, str]]:
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)  # not on the command line, where ps would show it
    plain = parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    return plain, env


def _major(version_text: str) -> int:
    match = re.search(r"(\d+)(?:\.\d+)?", version_text)
    if not match:
        raise BackupError(f"cannot read a version from {version_text!r}")
    return int(match.group(1))


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise BackupError(f"{name} is not installed (Debian: apt-get install postgresql-client)")
    return found


def _check_pg_tool(tool: str, url: str) -> None:
    """pg_dump reads older servers but not newer ones: refuse a mismatch before it half-works."""
    # An argument list, no shell; the tool is the one on PATH (S603).
    client = _major(subprocess.run([tool, "--version"], capture_output=True, text=True, check=True).stdout)  # noqa: S603
    import psycopg

    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)) as conn:
        server_num = int(conn.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
    server = server_num // 10000
    if client < server:
        raise BackupError(f"{Path(tool).name} is version {client} but the server is PostgreSQL {server}; install "
                          f"the client of version {server} or newer")


def _pg_dump(url: str, target: Path) -> None:
    tool = _tool("pg_dump")
    _check_pg_tool(tool, url)
    plain, env = _pg_env(url)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    done = subprocess.run(  # noqa: S603
        [tool, "--format=custom", "--no-owner", "--no-privileges", "--file", str(target), "--dbname", plain],
        env=env, capture_output=True, text=True, errors="replace", check=False)
    if done.returncode != 0:
        # pg_dump's stderr names objects, not rows: safe to pass on, and the operator needs it.
        raise BackupError(f"pg_dump failed: {done.stderr.strip()[:500]}")


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def _write_archive(path: Path, key: BackupKey, manifest: Manifest, head: bytes, database: Path,
                   progress: Progress) -> None:
    total = manifest.database_bytes + len(head)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    ok = False
    try:
        with os.fdopen(fd, "wb") as out:
            writer = SealingWriter(out, key)
            with tarfile.open(fileobj=writer, mode="w|") as tar:  # type: ignore[call-overload]
                _add_bytes(tar, MANIFEST, json.dumps(asdict(manifest), indent=1).encode())
                _add_bytes(tar, HEAD, head)
                info = tarfile.TarInfo(DATABASE)
                info.size = manifest.database_bytes
                info.mode = 0o600
                with open(database, "rb") as fh:
                    tar.addfile(info, _Counting(fh, lambda n: progress("archive", n, total)))
            writer.close()
            out.flush()
            os.fsync(out.fileno())
        ok = True
    finally:
        if not ok:
            path.unlink(missing_ok=True)
    progress("archive", total, total)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


class _Counting:
    def __init__(self, fh: Any, report: Callable[[int], None]) -> None:
        self.fh = fh
        self.report = report
        self.done = 0

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.fh.read(n)
        self.done += len(data)
        self.report(self.done)
        return data


# -- restore -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Restored:
    manifest: Manifest
    restored: bool  # False for --check-only
    head_moved_to: Path | None = None


def restore(settings: Settings, path: Path, *, force: bool = False, check_only: bool = False,
            progress: Progress = _noop) -> Restored:
    """Check the archive whole (integrity, checksum, key file) and only then replace the database.

    The server must be stopped. A non-empty target is refused unless ``force``.
    """
    key = backup_key(settings)
    if not path.is_file():
        raise BackupError(f"no archive at {path}")
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = settings.data_dir / f".restore-{secrets.token_hex(8)}.tmp"
    try:
        manifest, head = _read_archive(path, key, tmp, progress)
        _check_keys(settings, manifest)
        dialect = make_url(settings.resolved_database_url).get_backend_name()
        if dialect != manifest.dialect:
            raise BackupError(f"this archive holds a {manifest.dialect} database; the target is {dialect}")
        if check_only:
            return Restored(manifest, restored=False)
        if not force and not _target_empty(settings):
            raise BackupError("the target database is not empty; pass --force to replace it")
        if dialect == "sqlite":
            _sqlite_restore(settings, tmp)
        else:
            _pg_restore(settings.resolved_database_url, tmp)
        moved = _restore_head(settings, head)
        return Restored(manifest, restored=True, head_moved_to=moved)
    finally:
        tmp.unlink(missing_ok=True)


def _read_archive(path: Path, key: BackupKey, target: Path, progress: Progress) -> tuple[Manifest, bytes]:
    total = path.stat().st_size
    with open(path, "rb") as src:
        try:
            reader = OpeningReader(src, key)
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                members = iter(tar)
                manifest = _manifest(_member_bytes(tar, next(members, None), MANIFEST))
                head = _member_bytes(tar, next(members, None), HEAD)
                member = next(members, None)
                if member is None or member.name != DATABASE or not member.isfile():
                    raise BackupError("the archive does not hold a database")
                extracted = tar.extractfile(member)
                assert extracted is not None
                h = hashlib.sha256()
                size = 0
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    while block := extracted.read(1 << 20):
                        h.update(block)
                        out.write(block)
                        size += len(block)
                        progress("check", reader.read_bytes, total)
                    out.flush()
                    os.fsync(out.fileno())
                if next(members, None) is not None:
                    raise BackupError("the archive holds unexpected extra entries")
            reader.read()  # the final chunk, and nothing after it
        except ArchiveError as exc:
            raise BackupError(str(exc)) from None
        except tarfile.TarError:
            raise BackupError("the archive's contents are damaged") from None
    if (h.hexdigest(), size) != (manifest.database_sha256, manifest.database_bytes):
        raise BackupError("the database in the archive does not match its checksum")
    progress("check", total, total)
    return manifest, head


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo | None, name: str) -> bytes:
    if member is None or member.name != name or not member.isfile() or member.size > 64 << 20:
        raise BackupError(f"the archive does not start with its {name}")
    fh = tar.extractfile(member)
    assert fh is not None
    return fh.read()


def _manifest(raw: bytes) -> Manifest:
    try:
        doc = json.loads(raw)
        manifest = Manifest(**doc)
    except (ValueError, TypeError):
        raise BackupError("the archive's manifest is damaged") from None
    if manifest.format != 1:
        raise BackupError(f"archive format {manifest.format} is not supported by this version")
    return manifest


def _check_keys(settings: Settings, manifest: Manifest) -> None:
    """The key file must be the one (or a later rotation of the one) that made the backup."""
    import hmac

    from lockbox.crypto.exceptions import CryptoError, KeyFileError
    from lockbox.crypto.keys import Keyring, LocalKeyFile

    if settings.key_provider != "file":
        return
    try:
        provider = LocalKeyFile(settings.resolved_key_file, create=False)
    except KeyFileError as exc:
        raise BackupError(f"{exc}: restore the key file from its own backup first") from None
    missing = [v for v in manifest.key_versions if v not in provider.versions()]
    if missing:
        raise BackupError(f"the key file lacks key version(s) {missing} this backup needs; restore the key file "
                          "that was in use when the backup was made")
    try:
        _, mac = Keyring(provider).mac(KEY_CHECK, manifest.database_sha256.encode(), version=manifest.key_check_version)
    except CryptoError:
        raise BackupError("the key file cannot check this backup") from None
    if not hmac.compare_digest(mac.hex(), manifest.key_check):
        raise BackupError("this backup was made with another key file; its messages could not be read")


def _target_empty(settings: Settings) -> bool:
    """No schema, or a schema without a single user, thread or audit row (a server started once on an
    empty data dir): nothing a restore could destroy."""
    from sqlalchemy import create_engine, inspect

    url = settings.resolved_database_url
    if make_url(url).get_backend_name() == "sqlite":
        db_path = Path(make_url(url).database or "")
        if not db_path.exists() or db_path.stat().st_size == 0:
            return True
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            present = set(inspect(conn).get_table_names())
            for table in ("users", "threads", "audit_log"):
                if table in present and conn.execute(text(f"SELECT 1 FROM {table} LIMIT 1")).first():  # noqa: S608
                    return False
            return True
    finally:
        engine.dispose()


def _sqlite_restore(settings: Settings, tmp: Path) -> None:
    db_path = Path(make_url(settings.resolved_database_url).database or "")
    db_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # A stale WAL beside the new file would be replayed into it.
    for suffix in ("-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    os.chmod(tmp, 0o600)
    os.replace(tmp, db_path)
    fd = os.open(db_path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pg_restore(url: str, dump: Path) -> None:
    import psycopg

    tool = _tool("pg_restore")
    _check_pg_tool(tool, url)
    plain, env = _pg_env(url)
    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
                         autocommit=True) as conn:
        # A clean slate: tables of a newer schema must not survive beside the restored ones.
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")
    done = subprocess.run([tool, "--no-owner", "--no-privileges", "--single-transaction",  # noqa: S603
                           "--exit-on-error",
                           "--dbname", plain, str(dump)], env=env, capture_output=True, text=True, errors="replace",
                          check=False)
    if done.returncode != 0:
        raise BackupError(f"pg_restore failed: {done.stderr.strip()[:500]}")


def _restore_head(settings: Settings, head: bytes) -> Path | None:
    """The head file travels with its database; a newer one (of the replaced database) is kept aside."""
    target = settings.audit_head_file
    moved = None
    if target.exists():
        moved = target.with_name(f"{target.name}.before-restore-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
        os.replace(target, moved)
    if head:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(head)
    return moved
