"""Test storage on both backends: a real SQLite file and a real PostgreSQL database, migrated once.

Every storage test runs twice (``backend`` is parametrised). PostgreSQL may be skipped with a
reason only where none is reachable, and never when ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from lockbox.app import build_database, create_app
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.db import Database, uow
from lockbox.db.all_models import metadata

pytest_plugins = ["tests.clinic"]

PG_ADMIN_DSN = os.environ.get("LOCKBOX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"

# Every unit of work the suite runs crosses to the writer process and back, as in a server: its arguments,
# outcome and after-commit callbacks are pickled and read again, so what could not travel fails here.
uow.CHECK_CROSSING = True


def _pg_reachable() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3):
            return None
    except Exception as exc:  # any failure to connect is "unreachable"
        return f"PostgreSQL not reachable at {PG_ADMIN_DSN}: {type(exc).__name__}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", ["sqlite", "postgresql"], scope="session")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    reason = _pg_reachable()
    if reason:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: PostgreSQL is required)")
        pytest.skip(reason)
    name = f"lockbox_test_{_worker()}_{os.getpid()}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        # Databases left by runs that were killed before their teardown (their process is gone).
        for (stale,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'lockbox_test_%'"):
            pid = stale.rsplit("_", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                conn.execute(f'DROP DATABASE IF EXISTS "{stale}" WITH (FORCE)')
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    url = f"postgresql+psycopg://{base.split('://', 1)[1]}/{name}"
    _migrate(url)
    yield url
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "lockbox.db"
    _migrate(f"sqlite:///{path}")
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


def _migrate(url: str) -> None:
    from alembic import command

    from lockbox.db.engine import alembic_config

    command.upgrade(alembic_config(url), "head")


def _truncate_pg(url: str) -> None:
    engine = create_engine(url)
    names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def database_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    if backend == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        _truncate_pg(url)
        return url
    template: Path = request.getfixturevalue("sqlite_template")
    target = tmp_path / "data" / "lockbox.db"
    target.parent.mkdir(mode=0o700)
    shutil.copy(template, target)
    return f"sqlite:///{target}"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True, mode=0o700)
    return Settings(env="test", data_dir=data_dir, database_url=database_url, smtp_gateway_port=0,
                    audit_checkpoint_every=50)


@pytest.fixture
def app(settings: Settings, clock: FrozenClock):  # type: ignore[no-untyped-def]
    return create_app(settings, clock=clock, migrate=False)


@pytest.fixture
def client(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app, base_url="https://testserver") as c:
        yield c


@pytest.fixture
def db(app) -> Database:  # type: ignore[no-untyped-def]
    """The running app's database, for factories and for looking behind the API."""
    return app.state.lockbox.db  # type: ignore[no-any-return]


Events = list[tuple[list[str], dict[str, Any]]]


@pytest.fixture
def events(db: Database) -> Events:
    """Every real-time event the app publishes, with its audience, in order (the hub still delivers them)."""
    seen: Events = []
    original = db.runtime.publish

    def _spy(users, event):  # type: ignore[no-untyped-def]
        seen.append((list(users), event))
        original(users, event)

    db.runtime.publish = _spy
    return seen


@pytest.fixture
def standalone_db(settings: Settings, clock: FrozenClock) -> Iterator[Database]:
    """A database without the HTTP app (CLI-style use)."""
    database = build_database(settings, clock=clock)
    yield database
    database.close()
