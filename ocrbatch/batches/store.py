"""The batch catalog: one JSON document per batch, in the coordination backend (by default the
control location's objects, or Redis).

Concurrency, without any database of our own:
- every document is written with a precondition (create, or replace at the version that was
  read), so an edit based on a stale read fails with `BatchConflict` instead of overwriting;
- changes that must look at all batches (unique names, one batch per General domain, paths)
  run under a short lease on `locks/catalog.json`, taken with a create and taken over with a
  replace once expired, so two writers cannot both pass the checks.

A document that does not parse as a batch is *broken* (`broken.py`): listings skip it, reading it
by id raises `BrokenBatchDocument`, and `delete_broken` removes it.

Webhook secrets, and webhook URLs with credentials, are sealed in the documents with the
`[security]` keys (`sealing.py`); without a key, a batch holding one is refused.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from ocrbatch.batches.apply import PlannedChange, plan_apply, plan_violations, spec_dump
from ocrbatch.batches.broken import BrokenBatch, BrokenBatchDocument, BrokenLog, read_document
from ocrbatch.batches.sealing import Sealer
from ocrbatch.batches.spec import (
    Batch,
    BatchSpec,
    BatchStatus,
    batch_violations,
    check_batch,
    name_key,
    parse_spec,
    resolve_defaults,
    webhook_secrets,
)
from ocrbatch.coordination.base import Coordination
from ocrbatch.coordination.factory import open_coordination
from ocrbatch.coordination.leases import Leases, new_owner
from ocrbatch.errors import BatchConflict, BatchNotFound, BatchRuleViolation, PreconditionFailed
from ocrbatch.locations import Location
from ocrbatch.logs import learn_secrets
from ocrbatch.outbound import OutboundPolicy, OutboundRefused
from ocrbatch.settings import DomainSettings, Settings
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.types import Sleep

BATCH_PREFIX = "batches/"
LOCK_KEY = "locks/catalog.json"
_STALE_ATTEMPTS = 10
_T = TypeVar("_T")
# The worker's transitions of a batch it runs never replace a status that stops the batch, which
# only an operator clears: a pause, or an error recorded meanwhile (by a webhook's 410, by another
# replica's pass). A batch in either is never run, so such a status is newer than the pass.
_PASS_STATUSES: frozenset[BatchStatus] = frozenset({"running", "available"})
_STOPPING_STATUSES: frozenset[BatchStatus] = frozenset({"paused", "error"})


@dataclass(frozen=True)
class StoredBatch:
    """A batch with the etag of the document it was read from (for compare-and-swap)."""

    batch: Batch
    etag: str


@dataclass(frozen=True)
class Catalog:
    """Every batch document: the valid batches (sorted by name) and the broken ones (by key)."""

    batches: list[StoredBatch]
    broken: list[BrokenBatch]


class BatchStore:
    """Create, read, edit and delete batches, enforcing every rule of `check_batch`."""

    def __init__(
        self,
        coordination: Coordination,
        *,
        control: Location,
        domains: Mapping[str, DomainSettings],
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        lease_s: float = 30.0,
        lock_wait_s: float = 10.0,
        sealer: Sealer | None = None,
        outbound: OutboundPolicy | None = None,
    ) -> None:
        """`sealer` seals webhook secrets in the documents and opens them; without it a batch
        holding one is refused (and a sealed document reads as broken). `outbound` judges each
        new webhook URL: one whose host is, or resolves only to, a refused address is refused."""
        self._outbound = outbound
        self._coordination = coordination
        self._control = control
        self._domains = domains
        self._sealer = sealer
        self._can_seal = sealer is not None
        self._clock = clock
        self._sleep = sleep
        self._lease_s = lease_s
        self._lock_wait_s = lock_wait_s
        self._leases = Leases(coordination, owner=new_owner(), clock=clock)
        self._broken = BrokenLog()

    @property
    def control(self) -> Location:
        """The control location: batches may not read from or write to it."""
        return self._control

    @property
    def coordination(self) -> Coordination:
        return self._coordination

    # -- reading --------------------------------------------------------------------------

    async def list_batches(self, search: str | None = None) -> list[StoredBatch]:
        """All valid batches sorted by name; `search` keeps those whose name contains it (any
        case/width). Broken documents are left out (see `catalog`)."""
        return (await self.catalog(search)).batches

    async def catalog(self, search: str | None = None) -> Catalog:
        """Every batch document, valid or broken; `search` filters both by name (a broken document
        is matched by the name it states, if any)."""
        keys = [key async for key in self._coordination.keys(BATCH_PREFIX) if key.endswith(".json")]
        found = await asyncio.gather(*(self._read_key(key) for key in keys))
        self._broken.forget_missing(keys)
        batches = [item for item in found if isinstance(item, StoredBatch)]
        broken = [item for item in found if isinstance(item, BrokenBatch)]
        if search:
            needle = name_key(search)
            batches = [item for item in batches if needle in name_key(item.batch.name)]
            broken = [item for item in broken if item.name is not None and needle in name_key(item.name)]
        return Catalog(
            sorted(batches, key=lambda item: (name_key(item.batch.name), item.batch.id)),
            sorted(broken, key=lambda item: item.key),
        )

    async def get(self, ref: str) -> StoredBatch:
        """The batch whose id or name is `ref`; `BatchNotFound` otherwise, `BrokenBatchDocument`
        when its document is not a valid batch."""
        by_id = await self._read_key(_doc_key(ref))
        if isinstance(by_id, BrokenBatch):
            raise BrokenBatchDocument(by_id)
        if by_id is not None:
            return by_id
        wanted = name_key(ref)
        catalog = await self.catalog()
        for item in catalog.batches:
            if name_key(item.batch.name) == wanted:
                return item
        for broken in catalog.broken:
            if broken.name is not None and name_key(broken.name) == wanted:
                raise BrokenBatchDocument(broken)
        raise BatchNotFound(f"no batch has the id or name {ref!r}")

    async def _read_key(self, key: str) -> StoredBatch | BrokenBatch | None:
        try:
            stored = await self._coordination.read(key)
        except ValueError:  # not a valid key, so no such batch
            return None
        found: StoredBatch | BrokenBatch | None = None
        if stored is not None:
            where = self._coordination.where
            read = read_document(stored, key=key, where=where, sealer=self._sealer)
            found = StoredBatch(read, stored.version) if isinstance(read, Batch) else read
        self._broken.note(key, found)
        return found

    # -- changing -------------------------------------------------------------------------

    async def create(self, spec: BatchSpec) -> StoredBatch:
        """Store a new batch after checking it against every other batch."""
        await self._check_webhook_url(spec)
        async with self._catalog_lock():
            current = await self.list_batches()
            batch = self._new_batch(spec)
            self._check(batch, [item.batch for item in current])
            return await self._write(batch, etag=None)

    async def update(
        self,
        ref: str,
        changes: Mapping[str, Any],
        *,
        if_match: str | None = None,
        status: BatchStatus | None = None,
    ) -> StoredBatch:
        """Apply `changes` (spec fields) to the batch as read now, or as of etag `if_match`.

        Fails with `BatchConflict` when the document changed after the `if_match` read, so a
        concurrent edit is never silently overwritten. Without `if_match` the change is applied
        again on the document as it is now when another write (say, the worker's status) lands
        between this read and this write.
        """
        if if_match is not None:
            return await self._update_once(ref, changes, if_match=if_match, status=status)
        return await self._until_written(
            lambda: self._update_once(ref, changes, if_match=None, status=status)
        )

    async def _update_once(
        self, ref: str, changes: Mapping[str, Any], *, if_match: str | None, status: BatchStatus | None
    ) -> StoredBatch:
        base = await self.get(ref)
        etag = if_match or base.etag
        spec = parse_spec(self._merge(base.batch, changes))
        await self._check_webhook_url(spec, base.batch)
        async with self._catalog_lock():
            others = [item.batch for item in await self.list_batches() if item.batch.id != base.batch.id]
            batch = self._updated_batch(base.batch, spec, status=status)
            # A status-only change (pause, resume) must work even for a batch that no longer
            # passes the rules (say, its domain was removed), so only changed specs are checked.
            if spec_dump(batch.spec()) != spec_dump(base.batch.spec()):
                self._check(batch, others)
            return await self._write(batch, etag=etag)

    async def _until_written(self, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """`attempt` (a read, a change, a conditional write) made again, a bounded number of
        times, while another writer's change lands between its read and its write."""
        for _ in range(_STALE_ATTEMPTS - 1):
            try:
                return await attempt()
            except _StaleRead:
                continue
        return await attempt()

    async def _check_webhook_url(self, spec: BatchSpec, base: Batch | None = None) -> None:
        """Refuse a webhook URL the outbound policy refuses, when it is new (the address is
        checked again at every delivery, so DNS cannot move it afterwards)."""
        webhook = spec.webhook
        if self._outbound is None or webhook is None:
            return
        if base is not None and base.webhook is not None and base.webhook.url == webhook.url:
            return
        try:
            await self._outbound.check_url(webhook.url)
        except OutboundRefused as refused:
            raise BatchRuleViolation([("webhook.url", str(refused))]) from None

    def _merge(self, base: Batch, changes: Mapping[str, Any]) -> dict[str, Any]:
        """The batch's spec fields with `changes` applied, as plain data for validation."""
        merged = base.spec().model_dump(mode="json", context={"reveal_secrets": True})
        old_domain, new_domain = self._domains.get(base.domain), self._domains.get(changes.get("domain", ""))
        if old_domain and new_domain and old_domain.kind != new_domain.kind:
            # Moving to a domain of the other kind: the old kind's options do not carry over.
            for field in ("language", "table_extraction", "long_image", "template_ids"):
                merged.pop(field, None)
        for field, value in changes.items():
            # A partial webhook (say, only a new URL) keeps the rest of the current webhook.
            if field == "webhook" and isinstance(value, Mapping) and isinstance(merged.get("webhook"), dict):
                merged["webhook"] = {**merged["webhook"], **value}
            else:
                merged[field] = value
        return merged

    async def delete(self, ref: str, *, if_match: str | None = None) -> Batch:
        """Remove the batch's definition (its results are never touched). A broken document raises
        `BrokenBatchDocument`, which `delete_broken` removes."""
        base = await self.get(ref)
        try:
            await self._coordination.delete(_doc_key(base.batch.id), version=if_match or base.etag)
        except PreconditionFailed:
            raise BatchConflict(_conflict_message(base.batch)) from None
        return base.batch

    async def delete_broken(self, broken: BrokenBatch) -> None:
        """Remove a broken document, if it is still the version that was read."""
        try:
            await self._coordination.delete(broken.key, version=broken.version)
        except PreconditionFailed:
            raise BatchConflict(
                f"{broken.document} was changed since it was read; read it again and retry"
            ) from None
        self._broken.note(broken.key, None)

    async def set_status(self, batch_id: str, status: BatchStatus, reason: str | None = None) -> Batch:
        """Record the worker's status transition, retried on concurrent edits; returns the batch as
        stored. "running" and "available" never replace "paused" or "error" (set meanwhile by an
        operator, a webhook or another replica), which the returned batch then shows."""
        return await self._until_written(lambda: self._set_status_once(batch_id, status, reason))

    async def _set_status_once(self, batch_id: str, status: BatchStatus, reason: str | None) -> Batch:
        base = await self.get(batch_id)
        if base.batch.status in _STOPPING_STATUSES and status in _PASS_STATUSES:
            return base.batch
        batch = base.batch.model_copy(
            update={"status": status, "status_reason": reason, "updated_at": self._now()}
        )
        return (await self._write(batch, etag=base.etag)).batch

    async def apply(
        self, specs: list[BatchSpec], *, prune: bool = False, dry_run: bool = False
    ) -> list[PlannedChange]:
        """Make the catalog hold exactly these batches (matched by name); idempotent.

        The whole result is checked before anything is written, so a refused file changes
        nothing. With `prune`, batches missing from the file are deleted.
        """
        seen: dict[str, str] = {}
        for spec in specs:
            if (key := name_key(spec.name)) in seen:
                raise BatchRuleViolation([("name", f"{spec.name!r} is declared more than once in the file")])
            seen[key] = spec.name
        for spec in specs:
            await self._check_webhook_url(spec)
        async with self._catalog_lock():
            current = [(item.batch, item.etag) for item in await self.list_batches()]
            plan = plan_apply(
                specs,
                current,
                prune=prune,
                new_batch=self._new_batch,
                updated_batch=self._updated_batch,
                resolve=self._resolve,
            )
            problems = plan_violations(plan, self._violations)
            if problems:
                raise BatchRuleViolation(problems)
            if not dry_run:
                for step in plan:
                    if step.change.action == "delete":
                        await self._coordination.delete(_doc_key(step.change.batch_id), version=step.etag)
                    elif step.batch is not None and step.change.action in ("create", "update"):
                        await self._write(step.batch, etag=step.etag)
            return [step.change for step in plan]

    # -- internals ------------------------------------------------------------------------

    def _resolve(self, spec: BatchSpec) -> BatchSpec:
        domain = self._domains.get(spec.domain)
        return resolve_defaults(spec, domain) if domain is not None else spec

    def _new_batch(self, spec: BatchSpec) -> Batch:
        now = self._now()
        fields = self._resolve(spec).model_dump(context={"reveal_secrets": True})
        return Batch.model_validate(
            {**fields, "id": secrets.token_hex(8), "created_at": now, "updated_at": now}
        )

    def _updated_batch(self, base: Batch, spec: BatchSpec, *, status: BatchStatus | None = None) -> Batch:
        fields = self._resolve(spec).model_dump()
        update: dict[str, Any] = {**fields, "updated_at": self._now()}
        if status is not None:
            update |= {"status": status, "status_reason": None}
        return Batch.model_validate({**base.model_dump(), **update})

    def _check(self, candidate: Batch, others: list[Batch]) -> None:
        check_batch(candidate, others, domains=self._domains, control=self.control, can_seal=self._can_seal)

    def _violations(self, candidate: Batch, others: list[Batch]) -> list[tuple[str, str]]:
        return batch_violations(
            candidate, others, domains=self._domains, control=self.control, can_seal=self._can_seal
        )

    async def _write(self, batch: Batch, *, etag: str | None) -> StoredBatch:
        # Secrets sealed; without a key they can only be there for a status change of a document
        # that kept them in clear (from before sealing), and they stay so, as they were.
        context = {"reveal_secrets": True, "sealer": self._sealer}
        body = batch.model_dump_json(indent=2, context=context).encode()
        key = _doc_key(batch.id)
        try:
            if etag is None:
                version = await self._coordination.create(key, body)
            else:
                version = await self._coordination.replace(key, body, version=etag)
        except PreconditionFailed:
            raise _StaleRead(_conflict_message(batch)) from None
        learn_secrets(webhook_secrets(batch.webhook))
        return StoredBatch(batch, version)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    @asynccontextmanager
    async def _catalog_lock(self) -> AsyncIterator[None]:
        etag = await self._acquire_lock()
        try:
            yield
        finally:
            await self._leases.release(LOCK_KEY, etag)

    async def _acquire_lock(self) -> str:
        deadline = self._clock() + self._lock_wait_s
        delay_s = 0.02
        while (etag := await self._leases.take(LOCK_KEY, self._lease_s)) is None:
            if self._clock() >= deadline:
                raise BatchConflict(
                    "the batch catalog is being changed by another writer; try again in a moment"
                )
            await self._sleep(random.uniform(0, delay_s))
            delay_s = min(delay_s * 2, 0.5)
        return etag


class _StaleRead(BatchConflict):
    """The document changed between the read an edit was based on and its write."""


def _doc_key(batch_id: str) -> str:
    return f"{BATCH_PREFIX}{batch_id}.json"


def _conflict_message(batch: Batch) -> str:
    return f"batch {batch.name!r} was changed by someone else since it was read; read it again and retry"


@asynccontextmanager
async def open_batch_store(settings: Settings) -> AsyncIterator[BatchStore]:
    """The batch store at the configured control path, with storage of its own."""
    async with StorageFactory(settings.storage) as storages:
        yield await batch_store_in(settings, storages)


async def batch_store_in(settings: Settings, storages: StorageFactory) -> BatchStore:
    """The batch store in the configured coordination backend (a local control directory is
    created; the control path's endpoint is probed)."""
    control = Location.parse(settings.storage.control_path)
    return BatchStore(
        await open_coordination(settings, storages),
        control=control,
        domains=settings.domains,
        sealer=Sealer.from_settings(settings.security),
        outbound=OutboundPolicy(settings.webhook.allow_networks),
    )
