"""``lockbox demo``: load a fictional clinic, enrol its users with printed logins, seed threads, then serve.

Demo passwords are derived from usernames and printed, i.e. public; so the demo refuses production
settings and any database that already holds people who are not demo users.
"""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lockbox.audit.service import record
from lockbox.clock import Clock
from lockbox.config import Settings
from lockbox.db import Database, runtime_of
from lockbox.directory.schemas import DirectoryFile, OnCallEntry, parse_directory
from lockbox.directory.service import load_directory
from lockbox.errors import LockboxError
from lockbox.identity import credentials
from lockbox.identity.models import User

TOTP_HINT = "python -c \"import pyotp; print(pyotp.TOTP('SECRET').now())\""
# (pool, username): on call for the current and the next calendar year, so a rerun adds no shifts.
ON_CALL = (("nurse-triage", "dr.grey"), ("results", "dr.house"))
_HASH_THREADS = 4


class DemoRefused(LockboxError):
    code = "demo_refused"
    status = 409


@dataclass(frozen=True)
class Login:
    username: str
    role: str
    display_name: str
    password: str | None  # None: changed since the demo set it, so the demo no longer knows it
    totp_secret: str


@dataclass(frozen=True)
class DemoThread:
    username: str
    subject: str
    body: str
    patient: str | None = None
    to: tuple[str, ...] = ()
    urgent: bool = False


# Fictional messages that show routing (refill, results, scheduling, an emergency) and staff threads.
DEMO_THREADS = (
    DemoThread("pat.jones", "Refill request",
               "Hi, could I get a refill of my lisinopril 10 mg? I have three tablets left."),
    DemoThread("kim.lee", "Question about my lab results",
               "My cholesterol results came in yesterday. Could someone explain what they mean?"),
    DemoThread("raj.patel", "Moving my appointment",
               "Can I move my appointment next Tuesday to the afternoon? Mornings are hard for me."),
    DemoThread("raj.patel", "Chest pain", "I have chest pain since this morning and I cant breathe well."),
    DemoThread("dr.house", "Your blood pressure readings",
               "Could you send me your home blood pressure readings from this week?", patient="pat.jones"),
    DemoThread("dr.house", "Curbside question",
               "Do you have ten minutes this afternoon to look at a rash photo with me?", to=("dr.grey",)),
)


def demo_password(username: str) -> str:
    """Fixed per username so a second ``lockbox demo`` can print it again (zxcvbn scores these 4)."""
    return f"demo-{username}-Juniper-42"


def demo_directory(now: datetime) -> DirectoryFile:
    doc = parse_directory(resources.files(__package__).joinpath("clinic.yaml").read_text("utf-8"))
    start = datetime(now.year, 1, 1, tzinfo=UTC)
    end = datetime(now.year + 2, 1, 1, tzinfo=UTC)
    doc.on_call.extend(OnCallEntry.model_validate({"pool": pool, "username": username, "from": start, "to": end})
                       for pool, username in ON_CALL)
    return doc


def _refuse_foreign_users(session: Session, *, usernames: set[str]) -> None:
    others = session.scalar(select(func.count()).select_from(User).where(User.username.not_in(usernames)))
    if others:
        raise DemoRefused(
            f"this database already holds {others} user(s) who are not demo users; the demo adds accounts "
            "with public passwords, so it only runs on an empty or demo database (set LOCKBOX_DATA_DIR "
            "or LOCKBOX_DATABASE_URL to another one)"
        )


def _unenrolled(session: Session, *, usernames: list[str]) -> list[str]:
    return list(session.scalars(select(User.username).where(User.username.in_(usernames),
                                                             User.enrolled_at.is_(None))))


def _enrol(session: Session, *, password_hashes: dict[str, str]) -> None:
    """What enrolment would do, without the code: a password, a sealed TOTP secret, enrolled now."""
    rt = runtime_of(session)
    now = rt.clock.now()
    users = session.scalars(select(User).where(User.username.in_(password_hashes), User.enrolled_at.is_(None)))
    for user in users:
        user.password_hash = password_hashes[user.username]
        user.totp_secret_sealed = credentials.seal_totp_secret(rt.keyring, user.id, credentials.new_totp_secret())
        user.totp_last_step = 0
        user.enrolled_at = now
        user.enrolment_code_hash = None
        user.enrolment_expires_at = None
        record(session, action="identity.enrolment.complete", subject_type="user", subject_id=user.id,
               method="demo")


@dataclass(frozen=True)
class _Account:
    username: str
    role: str
    display_name: str
    password_hash: str | None
    totp_secret: str


def _accounts(session: Session, *, usernames: list[str]) -> list[_Account]:
    keyring = runtime_of(session).keyring
    users = {u.username: u for u in session.scalars(select(User).where(User.username.in_(usernames)))}
    return [
        _Account(u.username, u.role, u.display_name, u.password_hash,
                 credentials.open_totp_secret(keyring, u.id, u.totp_secret_sealed))
        for u in (users[name] for name in usernames)
        if u.totp_secret_sealed is not None
    ]


def _thread_count(session: Session) -> int:
    from lockbox.messaging.models import Thread

    return session.scalar(select(func.count()).select_from(Thread)) or 0


def _create_thread(session: Session, *, thread: DemoThread) -> Any:
    from lockbox.access.actor import Actor
    from lockbox.identity.roles import Role
    from lockbox.messaging.schemas import ThreadCreate
    from lockbox.messaging.service import create_thread

    user = session.scalars(select(User).where(User.username == thread.username)).one()
    actor = Actor(user_id=user.id, username=user.username, role=Role(user.role), display_name=user.display_name)
    data = ThreadCreate(subject=thread.subject, body=thread.body, patient=thread.patient, to=list(thread.to),
                        urgent=thread.urgent, confirm_recipients=True)
    return create_thread(session, actor=actor, data=data)


def seed_threads(db: Database) -> list[str]:
    """Seed the demo threads once (when there are none); returns notes about anything skipped."""
    needed = ("lockbox.messaging.schemas", "lockbox.messaging.service")
    try:
        for module in needed:
            importlib.import_module(module)
    except ImportError as exc:
        # Only "not written yet" is expected; a broken import inside messaging must still surface.
        if exc.name not in needed:
            raise
        return ["messaging is not available in this build yet: no demo threads were seeded"]
    if db.read_sync(_thread_count):
        return []
    notes = []
    for thread in DEMO_THREADS:
        try:
            db.write_sync(_create_thread, thread=thread)
        except LockboxError as exc:
            notes.append(f"demo thread {thread.subject!r} by {thread.username} was refused: {exc.code}")
    return notes


def seed_demo(settings: Settings, *, clock: Clock | None = None, console: Console | None = None) -> list[Login]:
    """Create or update the demo clinic in ``settings``' database and return every demo login.

    Idempotent: users who already enrolled keep their password and TOTP secret.
    """
    from lockbox.app import build_database

    if settings.env == "production":
        raise DemoRefused("the demo does not run with LOCKBOX_ENV=production: its passwords are public")
    db = build_database(settings, clock=clock)
    try:
        db.migrate()
        doc = demo_directory(db.runtime.clock.now())
        usernames = [s.username for s in doc.staff] + [p.username for p in doc.patients]
        db.read_sync(_refuse_foreign_users, usernames=set(usernames))
        db.write_sync(load_directory, doc=doc)
        # argon2 is deliberately slow (~0.1 s, 64 MiB each): hash outside the writer, so it never holds
        # the write lock meanwhile, and a few at a time (argon2 releases the GIL) so the demo starts quickly.
        fresh = db.read_sync(_unenrolled, usernames=usernames)
        with ThreadPoolExecutor(max_workers=_HASH_THREADS) as pool:
            hashes = pool.map(lambda u: credentials.hash_password(demo_password(u)), fresh)
            db.write_sync(_enrol, password_hashes=dict(zip(fresh, hashes, strict=True)))
            accounts = db.read_sync(_accounts, usernames=usernames)
            # Someone may have changed a demo password since: then the demo no longer knows it.
            known = pool.map(lambda a: a.username in fresh or credentials.verify_password(
                a.password_hash, demo_password(a.username)), accounts)
            logins = [Login(a.username, a.role, a.display_name, demo_password(a.username) if ok else None,
                            a.totp_secret) for a, ok in zip(accounts, known, strict=True)]
        for note in seed_threads(db):
            (console or Console(stderr=True)).print(f"note: {note}", markup=False, highlight=False)
        return logins
    finally:
        db.close()


def print_logins(logins: list[Login], console: Console, url: str) -> None:
    table = Table(title="Lockbox demo logins (public: never use them for real data)")
    for column in ("username", "role", "password", "TOTP secret"):
        table.add_column(column, no_wrap=True)
    for login in logins:
        table.add_row(login.username, login.role, login.password or "(changed since the demo set it)",
                      login.totp_secret)
    # Rich would shorten cells to fit a narrow terminal or a pipe (80 columns), and a cut secret is
    # useless: let the terminal wrap the lines instead.
    natural = Measurement.get(console, console.options.update_width(1000), table).maximum
    width = console.width
    console.width = max(width, natural)
    try:
        console.print(table)
    finally:
        console.width = width
    console.print("Sign in with a code from an authenticator app holding the TOTP secret, or:", highlight=False)
    console.print(f"    {TOTP_HINT}", markup=False, highlight=False)
    console.print(f"Serving the demo clinic at {url}", markup=False, highlight=False)


def run_demo(host: str, port: int) -> None:
    """Seed the demo clinic (settings from the environment), print its logins and serve it."""
    import uvicorn

    from lockbox.app import create_app
    from lockbox.config import load_settings

    settings = load_settings()
    console = Console()
    try:
        logins = seed_demo(settings, console=console)
    except LockboxError as exc:
        Console(stderr=True).print(f"error: {exc.detail}", markup=False, highlight=False)
        raise SystemExit(2) from None
    print_logins(logins, console, f"http://{host}:{port}/")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", access_log=False)
