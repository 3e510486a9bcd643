"""The batch store on each storage profile: CRUD, compare-and-swap, the catalog lease, and apply.

Its documents are in the profile's `coordination`: objects of the control location on a local
directory and on moto, Redis on the NAVER profile (whose store ignores conditional writes)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from fixtures.clock import FakeClock
from fixtures.sealing import SEALER
from structlog.testing import capture_logs

from ocrbatch.batches.broken import BrokenBatchDocument
from ocrbatch.batches.spec import BatchSpec, parse_spec
from ocrbatch.batches.store import LOCK_KEY, BatchStore
from ocrbatch.coordination.base import Coordination, Versioned
from ocrbatch.errors import BatchConflict, BatchNotFound, BatchRuleViolation
from ocrbatch.locations import Location
from ocrbatch.settings import DomainSettings
from ocrbatch.storage.base import Storage

DOMAINS = {
    "gen": DomainSettings(
        kind="general", invoke_url="http://ocr/general", secret="s1", table_extraction=True
    ),
    "tpl": DomainSettings(kind="template", invoke_url="http://ocr/infer", secret="s2"),
}


def spec(name: str = "forms", **overrides: Any) -> BatchSpec:
    data: dict[str, Any] = {
        "name": name,
        "domain": "tpl",
        "template_ids": [1],
        "input_path": f"s3://data/{name}/in",
        "result_path": f"s3://data/{name}/out",
    }
    data.update(overrides)
    return parse_spec(data)


@pytest.fixture
def control(profile_storage: Storage) -> Location:
    """The control location the store's batches must keep out of."""
    return profile_storage.location


def make_store(coordination: Coordination, control: Location, clock: FakeClock | None = None) -> BatchStore:
    clock = clock or FakeClock()
    return BatchStore(
        coordination, control=control, domains=DOMAINS, clock=clock, sleep=clock.sleep, sealer=SEALER
    )


async def keys(coordination: Coordination) -> list[str]:
    """Every document of the coordination, the catalog's and any other."""
    return [key async for key in coordination.keys("")]


async def test_create_get_list_and_search(coordination: Coordination, control: Location) -> None:
    """A created batch can be found by id, by name (any case), and by searching part of its name."""
    store = make_store(coordination, control)
    receipts = await store.create(spec("영수증-2026", domain="gen", template_ids=None))
    forms = await store.create(spec("申込書フォーム"))
    assert (await store.get(receipts.batch.id)).batch == receipts.batch
    assert (await store.get("申込書フォーム")).batch.id == forms.batch.id
    assert [item.batch.name for item in await store.list_batches()] == ["申込書フォーム", "영수증-2026"]
    assert [item.batch.name for item in await store.list_batches(search="영수")] == ["영수증-2026"]
    assert await store.list_batches(search="nothing") == []
    assert receipts.batch.language == "ko"  # filled from defaults for General domains
    assert receipts.batch.status == "available"
    assert await keys(coordination) == sorted(f"batches/{item.batch.id}.json" for item in (receipts, forms))


async def test_unknown_batch_is_not_found(coordination: Coordination, control: Location) -> None:
    """Ids and names that match nothing raise BatchNotFound, including ones that are not valid keys."""
    store = make_store(coordination, control)
    for ref in ("0123456789abcdef", "no such", "../x", ""):
        with pytest.raises(BatchNotFound):
            await store.get(ref)


async def test_refused_create_writes_nothing(coordination: Coordination, control: Location) -> None:
    """A batch that breaks a rule is refused and the documents are left exactly as they were."""
    store = make_store(coordination, control)
    await store.create(spec("first", domain="gen", template_ids=None))
    before = await keys(coordination)
    with pytest.raises(BatchRuleViolation, match="only one batch per General domain"):
        await store.create(spec("second", domain="gen", template_ids=None))
    assert await keys(coordination) == before


async def test_webhook_secret_is_kept_but_never_shown(coordination: Coordination, control: Location) -> None:
    """The document keeps the webhook secret (the worker signs with it), sealed; the model masks it."""
    store = make_store(coordination, control)
    created = await store.create(spec(webhook={"url": "http://h/x", "secret": "whsec-kept-1234"}))
    document = await coordination.read(f"batches/{created.batch.id}.json")
    assert document is not None
    assert "whsec-kept-1234" not in document.data.decode()
    loaded = await store.get(created.batch.id)
    assert loaded.batch.webhook is not None
    assert loaded.batch.webhook.secret is not None
    assert loaded.batch.webhook.secret.get_secret_value() == "whsec-kept-1234"
    assert "whsec-kept-1234" not in loaded.batch.model_dump_json()


async def test_update_changes_only_the_given_fields(coordination: Coordination, control: Location) -> None:
    """An edit changes the given fields, keeps the others and the id, and moves updated_at."""
    clock = FakeClock()
    store = make_store(coordination, control, clock)
    created = await store.create(spec(webhook={"url": "http://h/x", "secret": "whsec-kept-1234"}))
    clock.now_s += 60
    updated = await store.update(created.batch.name, {"file_format": "xls", "webhook": {"url": "http://h/y"}})
    assert updated.batch.id == created.batch.id
    assert updated.batch.file_format == "xls"
    assert updated.batch.template_ids == [1]
    assert updated.batch.webhook is not None
    assert updated.batch.webhook.url == "http://h/y"
    assert updated.batch.webhook.secret is not None  # a partial webhook edit keeps the secret
    assert updated.batch.updated_at > created.batch.updated_at
    assert updated.etag != created.etag
    removed = await store.update(created.batch.id, {"webhook": None})
    assert removed.batch.webhook is None


async def test_moving_to_a_domain_of_the_other_kind_drops_the_old_options(
    coordination: Coordination, control: Location
) -> None:
    """An edit onto a General domain drops the template ids; back onto Template, the language goes."""
    store = make_store(coordination, control)
    created = await store.create(spec())
    general = (await store.update(created.batch.id, {"domain": "gen"})).batch
    assert (general.template_ids, general.language, general.table_extraction) == (None, "ko", False)
    template = (await store.update(created.batch.id, {"domain": "tpl", "template_ids": [4]})).batch
    assert (template.template_ids, template.language, template.long_image) == ([4], None, None)


async def test_status_change_works_for_a_batch_that_no_longer_passes(
    coordination: Coordination, control: Location
) -> None:
    """Pausing a batch whose domain was removed from the settings still works; editing it is refused."""
    created = await make_store(coordination, control).create(spec())
    without_domain = BatchStore(coordination, control=control, domains={"gen": DOMAINS["gen"]})
    paused = await without_domain.update(created.batch.id, {}, status="paused")
    assert paused.batch.status == "paused"
    with pytest.raises(BatchRuleViolation, match="no OCR domain named 'tpl'"):
        await without_domain.update(created.batch.id, {"file_format": "xls"})


async def test_refused_update_writes_nothing(coordination: Coordination, control: Location) -> None:
    """An edit that breaks a rule is refused; the stored batch is unchanged."""
    store = make_store(coordination, control)
    created = await store.create(spec())
    with pytest.raises(BatchRuleViolation, match="result_path: must not lie inside the input path"):
        await store.update(created.batch.id, {"result_path": "s3://data/forms/in/out"})
    with pytest.raises(BatchRuleViolation, match="name: must be 1-50 characters"):
        await store.update(created.batch.id, {"name": "bad name!"})
    assert (await store.get(created.batch.id)) == created


async def test_concurrent_edits_one_wins_one_conflicts(coordination: Coordination, control: Location) -> None:
    """Two edits made from the same read: exactly one is stored, the other gets BatchConflict."""
    first_store, second_store = make_store(coordination, control), make_store(coordination, control)
    created = await first_store.create(spec())
    results = await asyncio.gather(
        first_store.update(created.batch.id, {"file_format": "xls"}, if_match=created.etag),
        second_store.update(created.batch.id, {"template_ids": [5, 6]}, if_match=created.etag),
        return_exceptions=True,
    )
    conflicts = [result for result in results if isinstance(result, BatchConflict)]
    winners = [result for result in results if not isinstance(result, BaseException)]
    assert len(conflicts) == 1
    assert len(winners) == 1
    assert "was changed by someone else" in str(conflicts[0])
    stored = (await first_store.get(created.batch.id)).batch
    assert stored == winners[0].batch
    # Nothing lost: the loser can read again and apply its change on top of the winner's.
    loser_change = {"template_ids": [5, 6]} if stored.file_format == "xls" else {"file_format": "xls"}
    final = (await second_store.update(created.batch.id, loser_change)).batch
    assert (final.file_format, final.template_ids) == ("xls", [5, 6])


async def test_stale_etag_conflicts_and_changes_nothing(
    coordination: Coordination, control: Location
) -> None:
    """An edit or delete against an etag that is no longer current is refused."""
    store = make_store(coordination, control)
    created = await store.create(spec())
    current = await store.update(created.batch.id, {"file_format": "xls"})
    with pytest.raises(BatchConflict):
        await store.update(created.batch.id, {"template_ids": [9]}, if_match=created.etag)
    with pytest.raises(BatchConflict):
        await store.delete(created.batch.id, if_match=created.etag)
    assert await store.get(created.batch.id) == current


async def test_concurrent_creates_cannot_break_uniqueness(
    coordination: Coordination, control: Location
) -> None:
    """Creates racing with the same name, or on the same General domain, store exactly one batch."""
    stores = [make_store(coordination, control) for _ in range(5)]
    same_name = await asyncio.gather(
        *(
            store.create(spec("dup", input_path=f"s3://data/i{n}", result_path=f"s3://data/o{n}"))
            for n, store in enumerate(stores)
        ),
        return_exceptions=True,
    )
    assert sum(not isinstance(result, BaseException) for result in same_name) == 1
    losers = [result for result in same_name if isinstance(result, BaseException)]
    assert all(isinstance(result, BatchRuleViolation) for result in losers), losers
    general = await asyncio.gather(
        *(store.create(spec(f"g{n}", domain="gen", template_ids=None)) for n, store in enumerate(stores)),
        return_exceptions=True,
    )
    assert sum(not isinstance(result, BaseException) for result in general) == 1
    refused = [result for result in general if isinstance(result, BaseException)]
    assert all(isinstance(result, BatchRuleViolation) for result in refused), refused
    assert len(await stores[0].list_batches()) == 2


async def test_delete_removes_the_definition(coordination: Coordination, control: Location) -> None:
    """Deleting a batch removes its document; it can then not be found, and its name is free again."""
    store = make_store(coordination, control)
    created = await store.create(spec())
    deleted = await store.delete("forms")
    assert deleted.id == created.batch.id
    with pytest.raises(BatchNotFound):
        await store.get(created.batch.id)
    assert await keys(coordination) == []
    await store.create(spec())


async def test_set_status_records_transitions(coordination: Coordination, control: Location) -> None:
    """The worker's status changes are stored with their reason, after an operator's concurrent edit too."""
    store = make_store(coordination, control)
    created = await store.create(spec())
    await store.update(created.batch.id, {"file_format": "xls"})
    errored = await store.set_status(created.batch.id, "error", "0002 Secret key validate failed")
    assert (errored.status, errored.status_reason, errored.file_format) == (
        "error",
        "0002 Secret key validate failed",
        "xls",
    )
    resumed = await store.update(created.batch.id, {}, status="available")
    assert (resumed.batch.status, resumed.batch.status_reason) == ("available", None)


class Interleaved(Coordination):
    """The coordination, where `before_next_write` runs once just before the next replace of a
    batch document reaches it: another writer's change landing between a read and its write."""

    def __init__(self, inner: Coordination) -> None:
        self._inner = inner
        self.backend, self.where = inner.backend, inner.where
        self.before_next_write: Callable[[], Awaitable[object]] | None = None

    async def read(self, key: str) -> Versioned | None:
        return await self._inner.read(key)

    async def create(self, key: str, data: bytes) -> str:
        return await self._inner.create(key, data)

    async def replace(self, key: str, data: bytes, *, version: str) -> str:
        if key.startswith("batches/") and (interloper := self.before_next_write) is not None:
            self.before_next_write = None
            await interloper()
        return await self._inner.replace(key, data, version=version)

    async def delete(self, key: str, *, version: str | None = None) -> None:
        await self._inner.delete(key, version=version)

    def keys(self, prefix: str) -> AsyncIterator[str]:
        return self._inner.keys(prefix)


async def test_an_edit_without_etag_is_applied_over_a_write_between_its_read_and_its_write(
    coordination: Coordination, control: Location
) -> None:
    """A pause or an edit not based on a read the caller names (the console's buttons, the API
    without If-Match) is applied again on the document as it is now when the worker's status
    lands in between, keeping both; with an etag it is refused instead."""
    interleaved = Interleaved(coordination)
    operator, worker = make_store(interleaved, control), make_store(coordination, control)
    created = await operator.create(spec())
    interleaved.before_next_write = lambda: worker.set_status(created.batch.id, "error", "0002")
    paused = await operator.update(created.batch.id, {"file_format": "xls"}, status="paused")
    assert (paused.batch.status, paused.batch.file_format) == ("paused", "xls")
    assert (await operator.get(created.batch.id)) == paused

    interleaved.before_next_write = lambda: worker.set_status(created.batch.id, "error", "0002")
    with pytest.raises(BatchConflict, match="was changed by someone else"):
        await operator.update(created.batch.id, {"template_ids": [7]}, if_match=paused.etag)
    assert (await operator.get(created.batch.id)).batch.template_ids == [1]


async def test_the_workers_running_and_available_never_replace_a_pause_or_an_error(
    coordination: Coordination, control: Location
) -> None:
    """A batch paused by an operator stays paused when the worker marks it running or available,
    even when the pause lands between the worker's read and its write; the worker gets the stored
    batch back, so it sees the pause. An error is still recorded, and stands the same way: one
    recorded meanwhile (a webhook's 410, another replica's 1021) is never undone by a pass's
    "running", which would have the batch called again; only the operator's resume clears it."""
    interleaved = Interleaved(coordination)
    worker, operator = make_store(interleaved, control), make_store(coordination, control)
    created = await worker.create(spec())
    interleaved.before_next_write = lambda: operator.update(created.batch.id, {}, status="paused")
    assert (await worker.set_status(created.batch.id, "running")).status == "paused"
    assert (await worker.set_status(created.batch.id, "available", "webhook note")).status == "paused"
    assert (await worker.get(created.batch.id)).batch.status == "paused"
    errored = await worker.set_status(created.batch.id, "error", "0002 Secret key validate failed")
    assert (errored.status, errored.status_reason) == ("error", "0002 Secret key validate failed")

    await operator.update(created.batch.id, {}, status="available")
    reason = "1021 Not found deploy info"
    interleaved.before_next_write = lambda: operator.set_status(created.batch.id, "error", reason)
    assert (await worker.set_status(created.batch.id, "running")).status_reason == reason
    assert (await worker.set_status(created.batch.id, "available")).status == "error"
    assert (await worker.get(created.batch.id)).batch.status_reason == reason
    resumed = await operator.update(created.batch.id, {}, status="available")
    assert (resumed.batch.status, resumed.batch.status_reason) == ("available", None)
    assert (await worker.set_status(created.batch.id, "running")).status == "running"


async def test_a_corrupt_document_is_a_clear_error(coordination: Coordination, control: Location) -> None:
    """A hand-damaged batch document is listed apart as broken, and reading it fails loudly, naming
    the document."""
    store = make_store(coordination, control)
    await coordination.create("batches/0123456789abcdef.json", b'{"name": 1}')
    assert await store.list_batches() == []
    [broken] = (await store.catalog()).broken
    assert broken.message.startswith(f"{coordination.where.rstrip('/')}/batches/0123456789abcdef.json: ")
    with pytest.raises(
        BrokenBatchDocument, match=r"batches/0123456789abcdef.json: batch document is not valid"
    ):
        await store.get("0123456789abcdef")


async def test_a_broken_document_is_listed_apart_and_logged_once_per_version(
    coordination: Coordination, control: Location
) -> None:
    """Beside a good batch, a document that is not JSON is skipped by listings and shown by
    `catalog` with its id, key and reason; it is logged at error level once per version of it (not
    at every listing), and its repair and its removal once each."""
    store = make_store(coordination, control)
    good = await store.create(spec())
    key = "batches/0badd0c0000000ff.json"
    version = await coordination.create(key, b'{"name": "broken one", "domain": ')
    with capture_logs() as logs:
        for _ in range(3):
            assert [item.batch.id for item in await store.list_batches()] == [good.batch.id]
        catalog = await store.catalog()
        version = await coordination.replace(key, b'{"name": "broken one"}', version=version)
        await store.catalog()
        await store.catalog()
        repaired = good.batch.model_copy(update={"id": "0badd0c0000000ff", "name": "repaired"})
        version = await coordination.replace(key, repaired.model_dump_json().encode(), version=version)
        assert {item.batch.name for item in await store.list_batches()} == {"forms", "repaired"}
        await coordination.replace(key, b"[]", version=version)
        await store.catalog()
        await coordination.delete(key)
        await store.catalog()
    [broken] = catalog.broken
    assert (broken.batch_id, broken.key, broken.name) == ("0badd0c0000000ff", key, None)  # not JSON
    assert broken.reason.startswith("Invalid JSON")
    assert broken.as_dict()["status"] == "broken"
    noted = [(entry["event"], entry["log_level"]) for entry in logs if entry["event"].startswith("batch.doc")]
    assert noted == [
        ("batch.document_broken", "error"),  # not JSON
        ("batch.document_broken", "error"),  # JSON, but required fields are missing
        ("batch.document_repaired", "info"),
        ("batch.document_broken", "error"),  # not an object
        ("batch.document_removed", "info"),
    ]
    assert all(entry["key"] == key for entry in logs if entry["event"].startswith("batch.doc"))


async def test_a_broken_document_is_found_by_id_or_stated_name_and_can_be_deleted(
    coordination: Coordination, control: Location
) -> None:
    """Reading or deleting a broken document by its id or by the name it states raises
    `BrokenBatchDocument` with the reason; a search finds it by that name; `delete_broken` removes
    the document (and only it)."""
    store = make_store(coordination, control)
    good = await store.create(spec())
    await coordination.create("batches/0badd0c0000000ff.json", b'{"name": "receipts", "domain": 7}')
    for ref in ("0badd0c0000000ff", "RECEIPTS"):
        with pytest.raises(BrokenBatchDocument, match=r"0badd0c0000000ff.json: batch document is not valid"):
            await store.get(ref)
    assert [broken.batch_id for broken in (await store.catalog("ceip")).broken] == ["0badd0c0000000ff"]
    assert (await store.catalog("forms")).broken == []
    with pytest.raises(BrokenBatchDocument) as refused:
        await store.delete("0badd0c0000000ff")
    await store.delete_broken(refused.value.broken)
    assert await coordination.read("batches/0badd0c0000000ff.json") is None
    assert [item.batch.id for item in await store.list_batches()] == [good.batch.id]
    with pytest.raises(BatchNotFound):
        await store.get("0badd0c0000000ff")


async def test_apply_is_idempotent_and_checks_the_whole_file_first(
    coordination: Coordination, control: Location
) -> None:
    """apply creates, then reports unchanged; an edit updates; a bad file writes nothing; prune deletes."""
    store = make_store(coordination, control)
    declared = [spec("a"), spec("b", domain="gen", template_ids=None)]
    assert [(c.action, c.name) for c in await store.apply(declared)] == [("create", "a"), ("create", "b")]
    assert [c.action for c in await store.apply(declared)] == ["unchanged", "unchanged"]
    before = {item.batch.name: item for item in await store.list_batches()}

    changed = [spec("a", file_format="xls"), declared[1]]
    assert [c.action for c in await store.apply(changed, dry_run=True)] == ["update", "unchanged"]
    assert {item.batch.name: item for item in await store.list_batches()} == before
    assert [c.action for c in await store.apply(changed)] == ["update", "unchanged"]
    assert (await store.get("a")).batch.id == before["a"].batch.id

    snapshot = await keys(coordination), await store.list_batches()
    bad = [*changed, spec("c", domain="gen", template_ids=None)]
    with pytest.raises(BatchRuleViolation, match="batch 'c': domain: only one batch per General domain"):
        await store.apply(bad)
    with pytest.raises(BatchRuleViolation, match="declared more than once"):
        await store.apply([spec("a"), spec("A")])
    assert (await keys(coordination), await store.list_batches()) == snapshot

    assert [c.action for c in await store.apply([changed[0]])] == ["unchanged", "unchanged"]
    assert [c.action for c in await store.apply([changed[0]], prune=True)] == ["unchanged", "delete"]
    assert [item.batch.name for item in await store.list_batches()] == ["a"]


async def test_catalog_lease_blocks_then_times_out(coordination: Coordination, control: Location) -> None:
    """While another writer holds a live lease, a change waits and then fails with a clear conflict."""
    clock = FakeClock()
    store = make_store(coordination, control, clock)
    await coordination.create(
        LOCK_KEY, json.dumps({"owner": "other", "expires_at": clock.now_s + 3600}).encode()
    )
    with pytest.raises(BatchConflict, match="being changed by another writer"):
        await store.create(spec())
    assert clock.sleeps_s  # it waited (on the injected clock) before giving up
    assert [key async for key in coordination.keys("batches/")] == []


async def test_expired_lease_is_taken_over(coordination: Coordination, control: Location) -> None:
    """A lease left by a crashed writer is taken over once it expires, and released afterwards."""
    clock = FakeClock()
    store = make_store(coordination, control, clock)
    await coordination.create(
        LOCK_KEY, json.dumps({"owner": "crashed", "expires_at": clock.now_s - 1}).encode()
    )
    created = await store.create(spec())
    assert (await store.get(created.batch.id)).batch.name == "forms"
    assert await keys(coordination) == [f"batches/{created.batch.id}.json"]
