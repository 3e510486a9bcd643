"""Batch edits by remote callers (the HTTP API and the web console): beyond the batch rules every
caller follows, input and result paths must lie inside `[api] allowed_locations`, and no
`webhook.secret_file` (which names a file on the server) is accepted."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from ocrbatch.batches.broken import BrokenBatch, BrokenBatchDocument
from ocrbatch.batches.spec import Batch, BatchStatus, parse_spec
from ocrbatch.batches.store import BatchStore, StoredBatch
from ocrbatch.errors import BatchRuleViolation
from ocrbatch.locations import Location

log = structlog.get_logger("ocrbatch.batches")


class LocationGate:
    """The locations the API may give batches: inside one of `allowed` (S3 prefixes or
    directories), or a 422 naming the field. Local paths are compared after symlinks are resolved."""

    FIELDS = ("input_path", "result_path")

    def __init__(self, allowed: Sequence[str]) -> None:
        self._texts = list(allowed)
        self._allowed = [Location.parse(text) for text in allowed]

    def check(self, body: Mapping[str, Any]) -> None:
        """Refuse every path field of `body` outside the allowed locations."""
        refused = self.violations(body)
        if refused:
            raise BatchRuleViolation(refused)

    def violations(self, body: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(field, rule) for each path field outside the allowed locations (bad paths are left to
        the batch rules, which name them)."""
        refused: list[tuple[str, str]] = []
        for field in self.FIELDS:
            value = body.get(field)
            if not isinstance(value, str):
                continue
            try:
                location = Location.parse(value)
            except ValueError:
                continue
            if not any(allowed.contains(location) for allowed in self._allowed):
                refused.append((field, self._rule()))
        return refused

    def _rule(self) -> str:
        if not self._allowed:
            return "no location is open to the API until api.allowed_locations lists some"
        return f"is outside the locations open to the API (api.allowed_locations: {', '.join(self._texts)})"


def refuse_secret_files(body: Mapping[str, Any]) -> None:
    """`secret_file` reads a file on the server: fine from the CLI, not for remote callers."""
    webhook = body.get("webhook")
    if isinstance(webhook, Mapping) and "secret_file" in webhook:
        raise BatchRuleViolation([("webhook.secret_file", "is not accepted over the API; send secret")])


class RemoteEdits:
    """Creating, editing and deleting batches for remote callers: the checks above, then the
    store's rules, then `on_batch_changed` (the worker, inside `serve`) hears of the change."""

    def __init__(
        self,
        store: BatchStore,
        gate: LocationGate,
        *,
        on_batch_changed: Callable[[Batch], None] | None = None,
    ) -> None:
        self.store = store
        self.gate = gate
        self._on_batch_changed = on_batch_changed

    async def create(self, body: Mapping[str, Any], *, via: str) -> StoredBatch:
        """A new batch; refused with every violation the gate and the spec's rules find at once."""
        refuse_secret_files(body)
        refused = self.gate.violations(body)
        try:
            spec = parse_spec(dict(body))
        except BatchRuleViolation as exc:
            raise BatchRuleViolation(refused + exc.violations) from None
        if refused:
            raise BatchRuleViolation(refused)
        created = await self.store.create(spec)
        log.info("batch.created", batch_id=created.batch.id, via=via)
        self._changed(created.batch)
        return created

    async def update(
        self,
        ref: str,
        changes: Mapping[str, Any],
        *,
        via: str,
        if_match: str | None = None,
        status: BatchStatus | None = None,
    ) -> StoredBatch:
        refuse_secret_files(changes)
        self.gate.check(changes)
        updated = await self.store.update(ref, changes, if_match=if_match, status=status)
        log.info("batch.edited", batch_id=updated.batch.id, fields=sorted(changes), status=status, via=via)
        self._changed(updated.batch)
        return updated

    async def delete(self, ref: str, *, via: str, if_match: str | None = None) -> Batch | BrokenBatch:
        """Delete the batch's definition (never its results); a broken document is deleted as it
        was read (unconditionally: a caller's `if_match` names a valid batch's etag)."""
        try:
            deleted = await self.store.delete(ref, if_match=if_match)
        except BrokenBatchDocument as refused:
            await self.store.delete_broken(refused.broken)
            log.info("batch.deleted", batch_id=refused.broken.batch_id, key=refused.broken.key, via=via)
            return refused.broken
        log.info("batch.deleted", batch_id=deleted.id, via=via)
        return deleted

    def _changed(self, batch: Batch) -> None:
        if self._on_batch_changed is not None:
            self._on_batch_changed(batch)
