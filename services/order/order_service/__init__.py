"""The order service."""

# First, so that every later `import redis` in this package finds redis-py already loaded
# without OpenTelemetry's metrics SDK (see meshkit.redis_client).
from meshkit import redis_client as _redis_client  # noqa: F401
