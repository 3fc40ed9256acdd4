"""Redis for the realtime tests: the shared one, and a private one a test may restart."""

from tests.scale.conftest import private_redis, redis_prefix, redis_url

__all__ = ["private_redis", "redis_prefix", "redis_url"]
