"""The coordination backend `[coordination]` asks for, and what the control path's store can do.

- `redis`: documents in Redis (the store's capabilities do not matter for coordination).
- `storage`, conditional writes probed or stated: documents in the control location.
- `storage` without them: the control location with plain writes, for a single writer only
  (`single_writer.py`); the worker takes that role or refuses to process.
"""

from __future__ import annotations

from ocrbatch.coordination.base import Coordination
from ocrbatch.coordination.redis import open_redis_coordination
from ocrbatch.coordination.storage import StorageCoordination
from ocrbatch.locations import Location
from ocrbatch.settings import Settings
from ocrbatch.storage.factory import StorageFactory


async def open_coordination(settings: Settings, storages: StorageFactory) -> Coordination:
    """The configured backend; closed with `storages`. Probes the control path's endpoint."""
    control = Location.parse(settings.storage.control_path)
    endpoint = await storages.capabilities(control)
    if settings.coordination.backend == "redis" and settings.coordination.url is not None:
        coordination: Coordination = open_redis_coordination(
            settings.coordination.url.get_secret_value(), settings.coordination.key_prefix
        )
        storages.close_with(coordination.aclose)
        return coordination
    storage = await storages.open(control, create=True, private=True)  # documents hold secrets
    return StorageCoordination(storage, single_writer=endpoint.conditional_writes is not True)
