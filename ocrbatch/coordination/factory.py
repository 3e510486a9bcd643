"""The coordination backend `[coordination]` asks for, and what the control path's store can do.

- `redis`: documents in Redis (the store's capabilities do not matter for coordination).
- `storage`, conditional writes probed or stated: documents in the control location.
- `storage` without them: the control location with plain writes, for a single writer only
  (`single_writer.py`); the worker takes that role or refuses to process.

With Redis, `shared_slots` makes each domain's call slots totals over every replica. The Redis
modules are imported only then: a worker that coordinates in storage never loads redis-py.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, cast

from ocrbatch.coordination.base import Coordination
from ocrbatch.coordination.storage import StorageCoordination
from ocrbatch.locations import Location
from ocrbatch.settings import DomainSettings, Settings
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.types import Sleep

if TYPE_CHECKING:
    from ocrbatch.coordination.redis import RedisCoordination
    from ocrbatch.coordination.slots import SharedSlots


async def open_coordination(settings: Settings, storages: StorageFactory) -> Coordination:
    """The configured backend; closed with `storages`. Probes the control path's endpoint."""
    control = Location.parse(settings.storage.control_path)
    endpoint = await storages.capabilities(control)
    if settings.coordination.backend == "redis" and settings.coordination.url is not None:
        redis_backend = importlib.import_module("ocrbatch.coordination.redis")
        coordination: Coordination = redis_backend.open_redis_coordination(
            settings.coordination.url.get_secret_value(), settings.coordination.key_prefix
        )
        storages.close_with(coordination.aclose)
        return coordination
    storage = await storages.open(control, create=True, private=True)  # documents hold secrets
    return StorageCoordination(storage, single_writer=endpoint.conditional_writes is not True)


def shared_slots(
    coordination: Coordination, name: str, domain: DomainSettings, *, lease_s: float, sleep: Sleep
) -> SharedSlots | None:
    """With Redis coordination, domain `name`'s limits as totals over every replica; else None."""
    if coordination.backend != "redis":
        return None
    redis_coordination = cast("RedisCoordination", coordination)  # by its backend
    slots = importlib.import_module("ocrbatch.coordination.slots")
    shared: SharedSlots = slots.SharedSlots(
        redis_coordination.client,
        key_prefix=redis_coordination.key_prefix,
        domain=name,
        max_concurrent_calls=domain.max_concurrent_calls,
        calls_per_second=domain.calls_per_second,
        lease_s=lease_s,
        sleep=sleep,
        where=coordination.where,
    )
    return shared
