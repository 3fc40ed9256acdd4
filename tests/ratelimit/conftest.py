"""Redis for the rate limit tests (shared with the realtime and scale tests)."""

from tests.scale.conftest import redis_prefix, redis_url

__all__ = ["redis_prefix", "redis_url"]
