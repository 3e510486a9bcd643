"""A complete setup for worker tests: moto S3 bucket, emulator, settings, and helpers to inspect results."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocrbatch.batches.spec import parse_spec
from ocrbatch.batches.store import batch_store_in
from ocrbatch.emulator.server import Emulator
from ocrbatch.locations import Location
from ocrbatch.settings import Settings, StorageSettings
from ocrbatch.storage.base import Storage
from ocrbatch.storage.factory import StorageFactory

MakeSetup = Callable[..., Awaitable["WorkerSetup"]]  # the `make_worker_setup` fixture

FAST_WORKER = {
    "max_attempts": 8,
    "backoff_initial_s": 0.005,
    "backoff_max_s": 0.05,
    "quota_pause_s": 0.05,
    "progress_interval_s": 0.2,
    "report_interval_s": 0.5,
    "shutdown_grace_s": 10,
    "poll_interval_s": 0.2,
}


@dataclass
class WorkerSetup:
    """Everything one worker test needs, on one fresh bucket."""

    bucket: str
    emulator: Emulator
    storage_settings: StorageSettings
    inputs: Storage
    results: Storage

    def settings(self, *, domains: dict[str, Any] | None = None, **worker: Any) -> Settings:
        emulator = self.emulator
        default_domains = {
            "receipts": {
                "kind": "general",
                "invoke_url": emulator.url + "/general",
                "secret": emulator.settings.general_secret.get_secret_value(),
                "max_concurrent_calls": emulator.settings.max_concurrent_calls,
                "table_extraction": True,
                "request_timeout_s": 30,
            },
            "forms": {
                "kind": "template",
                "invoke_url": emulator.url + "/infer",
                "secret": emulator.settings.template_secret.get_secret_value(),
                "max_concurrent_calls": emulator.settings.max_concurrent_calls,
                "request_timeout_s": 30,
            },
        }
        return Settings(
            storage={
                **self.storage_settings.model_dump(mode="python"),
                "control_path": f"s3://{self.bucket}/control",
            },
            domains=domains if domains is not None else default_domains,
            worker={**FAST_WORKER, **worker},
            logging={"format": "json", "level": "info"},
        )

    def location(self, prefix: str) -> Location:
        return Location.parse(f"s3://{self.bucket}/{prefix}")

    def batch_spec(self, **fields: object) -> dict[str, object]:
        """A General batch "receipts" reading `in/` and writing `out/` of the bucket, with `fields`."""
        return {
            "name": "receipts",
            "domain": "receipts",
            "input_path": f"s3://{self.bucket}/in",
            "result_path": f"s3://{self.bucket}/out",
            **fields,
        }


async def create_batch(setup: WorkerSetup, settings: Settings, **fields: object) -> str:
    """Create the setup's batch (`WorkerSetup.batch_spec`, with `fields`); returns its id."""
    async with StorageFactory(settings.storage) as storages:
        store = await batch_store_in(settings, storages)
        return (await store.create(parse_spec(setup.batch_spec(**fields)))).batch.id


async def keys(storage: Storage, prefix: str = "") -> list[str]:
    return [info.key async for info in storage.list(prefix)]


async def read_json(storage: Storage, key: str) -> Any:
    return json.loads((await storage.read(key)).data)


def unique_bucket() -> str:
    return f"worker-{uuid.uuid4().hex[:16]}"


def with_domain(settings: Settings, name: str, **changes: Any) -> Settings:
    """`settings` with domain `name` changed, validated like any setting (secrets become SecretStr)."""
    current = settings.domains[name].model_dump()
    current.update(changes)
    domain = type(settings.domains[name]).model_validate(current)
    return settings.model_copy(update={"domains": {**settings.domains, name: domain}})


def write_config(setup: WorkerSetup, path: Path, **worker: Any) -> Path:
    """A TOML settings file for a worker process pointing at this setup's bucket and emulator."""
    storage = setup.storage_settings
    emulator = setup.emulator
    assert storage.access_key_id is not None
    assert storage.secret_access_key is not None
    worker_settings = {**FAST_WORKER, **worker}
    lines = [
        "[storage]",
        f'endpoint_url = "{storage.endpoint_url}"',
        f'access_key_id = "{storage.access_key_id.get_secret_value()}"',
        f'secret_access_key = "{storage.secret_access_key.get_secret_value()}"',
        'addressing_style = "path"',
        f'control_path = "s3://{setup.bucket}/control"',
        "[domains.receipts]",
        'kind = "general"',
        f'invoke_url = "{emulator.url}/general"',
        f'secret = "{emulator.settings.general_secret.get_secret_value()}"',
        f"max_concurrent_calls = {emulator.settings.max_concurrent_calls}",
        "[worker]",
        *(f"{key} = {value}" for key, value in worker_settings.items()),
        "[logging]",
        'format = "json"',
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
