"""Several real processes on one PostgreSQL database and one Redis: the fixtures they share."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from lockbox.config import Settings
from tests.conftest import IN_CI, _truncate_pg
from tests.serverproc import RedisServer

REDIS_URL = os.environ.get("LOCKBOX_TEST_REDIS", "redis://127.0.0.1:6379/0")
_prefixes = itertools.count(1)


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        reason = f"Redis not reachable at {REDIS_URL}: {type(exc).__name__}"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: Redis is required)")
        pytest.skip(reason)
    return REDIS_URL


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A channel and key space of this test's own: other runs may share the Redis."""
    prefix = f"lockbox-test-{os.getpid()}-{next(_prefixes)}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass


@pytest.fixture
def pg_settings(pg_url: str, tmp_path: Path) -> Settings:
    """Settings on a clean PostgreSQL database, for seeding before the processes start."""
    _truncate_pg(pg_url)
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    return Settings(env="test", data_dir=data_dir, database_url=pg_url, smtp_gateway_port=0)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may stop and restart."""
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server not installed (CI=true: it is required)")
        pytest.skip("redis-server not installed")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
