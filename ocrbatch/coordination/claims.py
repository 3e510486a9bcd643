"""Item claims: one worker at a time per input, across tasks, processes and replicas.

Before an item is read and sent to the API, its worker takes a claim: a lease in the coordination
backend under `claims/{batch id}/{digest of the key}.json`. Another worker (a second replica
reconciling the same batch, an SQS message delivered twice) finds the claim held and leaves the
item alone. Claims are renewed while held and released when the item is settled. A worker that was
killed leaves claims that expire after `ttl_s`; on the same host they are taken over at once when
their process is gone (a restarted worker, or a restarted container, where it was pid 1 again).

A worker that knows it is alone needs no shared claims: `run --once` asks `work_alone`, which
takes the `_alone` lease first and then looks for any other registered worker. Seeing none, it
keeps its item claims in memory (about four storage requests fewer per item) until it shares;
seeing one, it gives the lease back. Every other worker registers first and then checks that
lease (`check_alone_elsewhere`, at start and at each pass): while a live worker holds it, every
item claim is refused, so its items are left to the lone worker, "claimed elsewhere". With both
orders fixed, one of the two always sees the other, so two workers never process unclaimed.

The lone worker keeps looking for newcomers (`share_when_joined`, every `ALONE_CHECK_S`). Once one
registers, it claims its items from then on in the shared documents, moves the claims it holds
there too, and only then gives the `_alone` lease back; the newcomer (`wait_until_shared`) then
takes part, and its claims and checks see whatever the lone worker did.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from ocrbatch.coordination.base import Coordination
from ocrbatch.coordination.leases import Leases, new_owner
from ocrbatch.coordination.memory import MemoryCoordination
from ocrbatch.errors import StorageError
from ocrbatch.types import Sleep, sleep_unless

log = structlog.get_logger("ocrbatch.claims")
CLAIM_PREFIX = "claims/"
WORKERS = "_workers"  # the pseudo-batch under which each running worker claims its own owner id
ALONE = "_alone"  # the pseudo-batch of the one lease a worker holds while it works alone
ALONE_CHECK_S = 2.0  # how often a lone worker looks for newcomers, and a newcomer for the lease
# This process's identity in claims: a restart that gets the same pid (pid 1 in a container) differs.
_PROCESS = new_owner()


def about_this_process(host: str) -> dict[str, Any]:
    """What a lease says about its holder, so `process_gone` can tell when it is dead."""
    return {"host": host, "pid": os.getpid(), "process": _PROCESS}


def process_gone(holder: Mapping[str, Any], *, host: str) -> bool:
    """True when a lease's holder is known to be gone: it ran on this host, and its pid is now
    ours (we are its restart) or belongs to no process."""
    pid = holder.get("pid")
    if holder.get("host") != host or not isinstance(pid, int) or holder.get("process") == _PROCESS:
        return False
    if pid == os.getpid():
        return True  # our pid, another process: the one we replace
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # a process of another user has this pid
    return False


def _always_shared(lease_key: str) -> bool:
    """Registrations and the `_alone` lease are shared even while item claims are in memory."""
    return lease_key.startswith((f"{CLAIM_PREFIX}{WORKERS}/", f"{CLAIM_PREFIX}{ALONE}/"))


def claim_key(batch_id: str, key: str) -> str:
    """Where the claim on input `key` of a batch lives in the control storage."""
    return f"{CLAIM_PREFIX}{batch_id}/{hashlib.sha256(key.encode()).hexdigest()[:40]}.json"


class ItemClaims:
    """This process's claims; `keep_alive` renews them every third of their lifetime."""

    def __init__(
        self,
        coordination: Coordination,
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._host = socket.gethostname()
        self._coordination = coordination
        self._leases = Leases(
            coordination,
            owner=new_owner(),
            clock=clock,
            about_owner=about_this_process(self._host),
            holder_dead=self._holder_dead,
        )
        self._item_leases = self._leases  # in memory while working alone
        self._clock = clock
        self.ttl_s = ttl_s
        self._sleep = sleep
        self._held: dict[str, str] = {}  # claim key -> etag
        self.lost = 0  # claims that expired before renewal and were taken over
        self.alone = False  # this worker holds the `_alone` lease: its item claims are in memory
        self._moving: set[str] = set()  # claims being copied to the shared documents (`_share`)
        self.alone_elsewhere = False  # another live worker holds it: no item claim is taken

    @property
    def owner(self) -> str:
        return self._leases.owner

    @property
    def held(self) -> int:
        return len(self._held)

    def _holder_dead(self, claim: Mapping[str, Any]) -> bool:
        return process_gone(claim, host=self._host)

    async def register(self) -> None:
        """Announce this worker as alive (renewed with its claims) until `unregister`: others then
        leave what it has in progress alone, such as its webhook items not yet in a chunk."""
        if not await self.take(WORKERS, self.owner):
            raise RuntimeError("this worker's owner id is already registered")  # ids are random

    async def unregister(self) -> None:
        """Give up the registration, and the `_alone` lease if held (two documents: at once)."""
        releases = [self.release(WORKERS, self.owner)]
        if self.alone:
            releases.append(self.release(ALONE, ALONE))
        await asyncio.gather(*releases)

    async def work_alone(self) -> bool:
        """Take the `_alone` lease and keep item claims in memory, unless another worker is
        registered (or holds the lease); True when this worker is now alone. Call it once, after
        `register`, before any item is claimed, and only where nothing else of this process works
        beside the pass (`run --once`). On the control storage's documents, and in memory (a single
        writer's claims, already there); with Redis, item claims cost no storage request, and
        replicas started together should share the work."""
        if self.alone:
            return True
        if self._coordination.backend == "memory":  # a single writer's: no other worker can exist
            self.alone = True
            return True
        if self._coordination.backend != "storage":
            return False
        if any(not _always_shared(lease_key) for lease_key in self._held):
            raise RuntimeError("work_alone() comes before any item is claimed")
        lease_key = claim_key(ALONE, ALONE)
        etag = await self._leases.take(lease_key, self.ttl_s)
        if etag is None:
            await self.check_alone_elsewhere()  # another worker's: its items are left to it
            return False
        self._held[lease_key] = etag
        if await self._others_registered():
            await self.release(ALONE, ALONE)
            return False
        self.alone = True
        self._item_leases = Leases(
            MemoryCoordination(),
            owner=self.owner,
            clock=self._clock,
        )
        log.info("claims.working_alone", owner=self.owner)
        return True

    async def check_alone_elsewhere(self) -> bool:
        """Whether another live worker works alone now (and item claims are refused meanwhile)."""
        if self.alone:
            return False
        try:
            elsewhere = await self._leases.held(claim_key(ALONE, ALONE))
        except StorageError as exc:  # unknown: no shared claim is safe until it is known
            log.warning("claims.alone_lease_unknown", error=str(exc))
            elsewhere = True
        if elsewhere and not self.alone_elsewhere:
            log.warning("claims.another_worker_alone", reason="its items are left to it until it shares")
        self.alone_elsewhere = elsewhere
        return elsewhere

    async def share_when_joined(self, *, interval_s: float = ALONE_CHECK_S) -> None:
        """While alone, look for another registered worker every `interval_s`; once one appears,
        share: item claims go to the shared documents from now on, the ones held move there, and
        the `_alone` lease is given back. Returns then (or when not alone); cancel to stop."""
        while self.alone:
            await self._sleep(interval_s)
            try:
                joined = await self._others_registered()
            except StorageError as exc:  # looked for again next time
                log.warning("claims.newcomers_unknown", error=str(exc))
                continue
            if joined:
                await self._share()

    async def _share(self) -> None:
        """Stop working alone: new claims are shared at once, then each held one is copied to the
        shared documents (none of which another worker can hold while the `_alone` lease is held),
        then the lease goes. A claim released meanwhile has its copy released too."""
        in_memory = {key: etag for key, etag in self._held.items() if etag and not _always_shared(key)}
        self._moving = set(in_memory)  # not renewed meanwhile: their etags are not the shared ones yet
        self._item_leases, self.alone = self._leases, False
        for lease_key, memory_etag in in_memory.items():
            try:
                shared = await self._leases.take(lease_key, self.ttl_s)
            except StorageError as exc:  # the item finishes unshared; its result is checked by others
                log.warning("claims.not_shared", claim=lease_key, error=str(exc))
                continue
            finally:
                self._moving.discard(lease_key)
            if shared is None:
                log.error("claims.not_shared", claim=lease_key, reason="held by another worker")
            elif self._held.get(lease_key) == memory_etag:
                self._held[lease_key] = shared
            else:  # settled while being copied
                with contextlib.suppress(StorageError):
                    await self._leases.release(lease_key, shared)
        await self.release(ALONE, ALONE)
        log.info("claims.sharing", owner=self.owner, moved=len(in_memory))

    async def wait_until_shared(self, stopping: asyncio.Event, *, timeout_s: float) -> bool:
        """While another worker works alone, wait (up to `timeout_s`, or until `stopping`) for it
        to share, which it does once it sees this worker registered; True when it did."""
        deadline_s = self._clock() + timeout_s
        while await self.check_alone_elsewhere():
            if stopping.is_set() or self._clock() >= deadline_s:
                return False
            await sleep_unless(stopping, self._sleep, ALONE_CHECK_S)
        return True

    async def _others_registered(self) -> bool:
        own = claim_key(WORKERS, self.owner)
        async for key in self._coordination.keys(f"{CLAIM_PREFIX}{WORKERS}/"):
            if key != own and await self._leases.held(key):
                return True
        return False

    def _leases_of(self, lease_key: str) -> Leases:
        return self._leases if _always_shared(lease_key) else self._item_leases

    async def worker_alive(self, owner: str) -> bool:
        """Whether the worker `owner` is registered and alive (its registration neither expired nor
        left by a process of this host that is gone)."""
        if owner == self.owner:
            return True
        try:
            return await self._leases.held(claim_key(WORKERS, owner))
        except StorageError as exc:
            log.warning("claim.worker_unknown", owner=owner, error=str(exc))
            return True  # when in doubt, leave its work alone

    async def take(self, batch_id: str, key: str) -> bool:
        """True if this process now holds the item; False while another task or worker does."""
        lease_key = claim_key(batch_id, key)
        if lease_key in self._held:
            return False
        if self.alone_elsewhere and not _always_shared(lease_key):
            return False  # the lone worker may be processing it without a shared claim
        self._held[lease_key] = ""  # reserved for this task while the write is under way
        try:
            etag = await self._leases_of(lease_key).take(lease_key, self.ttl_s)
        finally:
            if self._held.get(lease_key) == "":
                del self._held[lease_key]
        if etag is not None:
            self._held[lease_key] = etag
        return etag is not None

    async def release(self, batch_id: str, key: str) -> None:
        """Give the item up: it is settled, or left for the next pass."""
        lease_key = claim_key(batch_id, key)
        etag = self._held.pop(lease_key, None)
        if etag:
            try:
                await self._leases_of(lease_key).release(lease_key, etag)
            except StorageError as exc:  # it expires on its own
                log.warning("claim.not_released", key=key, error=str(exc))

    async def renew_all(self) -> None:
        """Extend every claim held; one that was taken over meanwhile is counted as lost."""
        for lease_key, etag in list(self._held.items()):
            if not etag or lease_key in self._moving:
                continue
            leases = self._leases_of(lease_key)
            try:
                renewed = await leases.renew(lease_key, etag, self.ttl_s)
            except StorageError as exc:
                log.warning("claim.not_renewed", claim=lease_key, error=str(exc))
                continue
            if self._held.get(lease_key) != etag:  # released while renewing: the renewal must go too
                if renewed is not None:
                    try:
                        await leases.release(lease_key, renewed)
                    except StorageError as exc:  # it expires on its own; the renewals go on
                        log.warning("claim.not_released", claim=lease_key, error=str(exc))
                continue
            if renewed is None:
                self.lost += 1
                del self._held[lease_key]
                log.warning("claim.lost", claim=lease_key)
            else:
                self._held[lease_key] = renewed

    async def keep_alive(self) -> None:
        """Renew held claims every `ttl_s / 3`, until cancelled."""
        while True:
            await self._sleep(self.ttl_s / 3)
            await self.renew_all()
