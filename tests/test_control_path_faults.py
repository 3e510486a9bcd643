"""The service survives its control path: broken batch documents, control-storage outages, and SQS
messages that announce what cannot be processed.

The control storage is made to fail by pointing the control path at moto through `S3Proxy` and
setting its `down` switch; batches whose data must stay reachable meanwhile read and write local
directories. Outages here last a moment, with retries configured fast: the 60 s outage of the
acceptance runs the same code path (the pass loop's backoff, capped at `control_backoff_max_s`).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aioboto3
import aiohttp
import pytest
from fixtures.api import StartApi
from fixtures.api import spec as api_spec
from fixtures.clock import FakeClock
from fixtures.process import TOKEN, ServeProcess, start_ocrbatch
from fixtures.samples import png
from fixtures.waits import within
from fixtures.worker import FAST_WORKER, MakeSetup, WorkerSetup, create_batch
from structlog.testing import capture_logs

from bench.s3_proxy import Down, StartS3Proxy
from ocrbatch.batches.spec import parse_spec
from ocrbatch.batches.store import BatchStore, batch_store_in
from ocrbatch.clova.client import open_ocr_session
from ocrbatch.coordination.claims import ItemClaims
from ocrbatch.coordination.storage import StorageCoordination
from ocrbatch.errors import StorageError
from ocrbatch.metrics import WorkerMetrics
from ocrbatch.service.sqs import SqsConsumer
from ocrbatch.settings import Settings, SqsSettings, StorageSettings
from ocrbatch.storage.factory import StorageFactory
from ocrbatch.webhooks.delivery import open_webhook_session
from ocrbatch.worker.worker import Worker

BROKEN_ID = "0badd0c0000000ff"
BROKEN_KEY = f"batches/{BROKEN_ID}.json"
PROGRESS_S = 1000.0  # the progress ticker's wait in the in-process tests: it never ends on its own
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Storage failures end after one attempt (botocore's own retries would only slow the tests down).
ONE_ATTEMPT = {"OCRBATCH_STORAGE__MAX_ATTEMPTS": "1"}


def _config(
    setup: WorkerSetup,
    path: Path,
    *,
    endpoint_url: str | None = None,
    domains: tuple[str, ...] = ("receipts",),
    sqs: Mapping[str, object] | None = None,
    **worker: object,
) -> Path:
    """A `serve` settings file: the setup's bucket (reached at `endpoint_url`, moto by default) as
    the control path, General domains of these names on the setup's emulator, the API on port 0."""
    storage, emulator = setup.storage_settings, setup.emulator
    assert storage.access_key_id is not None
    assert storage.secret_access_key is not None
    lines = [
        "[storage]",
        f'endpoint_url = "{endpoint_url or storage.endpoint_url}"',
        f'access_key_id = "{storage.access_key_id.get_secret_value()}"',
        f'secret_access_key = "{storage.secret_access_key.get_secret_value()}"',
        'addressing_style = "path"',
        f'control_path = "s3://{setup.bucket}/control"',
    ]
    for name in domains:
        lines += [
            f"[domains.{name}]",
            'kind = "general"',
            f'invoke_url = "{emulator.url}/general"',
            f'secret = "{emulator.settings.general_secret.get_secret_value()}"',
        ]
    lines += [
        "[worker]",
        *(f"{key} = {json.dumps(value)}" for key, value in {**FAST_WORKER, **worker}.items()),
    ]
    lines += ["[logging]", 'format = "json"', "[api]", "port = 0", f'token = "{TOKEN}"']
    if sqs is not None:
        lines += ["[sqs]", *(f"{key} = {json.dumps(value)}" for key, value in sqs.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _settings(setup: WorkerSetup, *domains: str, endpoint_url: str | None = None, **worker: Any) -> Settings:
    """In-process settings like `_config`'s: moto, or the store at `endpoint_url`, one attempt per
    storage request."""
    general = {
        "kind": "general",
        "invoke_url": setup.emulator.url + "/general",
        "secret": setup.emulator.settings.general_secret.get_secret_value(),
    }
    settings = setup.settings(domains=dict.fromkeys(domains or ("receipts",), general), **worker)
    storage = settings.storage.model_copy(
        update={"endpoint_url": endpoint_url or settings.storage.endpoint_url, "max_attempts": 1}
    )
    return settings.model_copy(update={"storage": storage})


async def _local_batch(settings: Settings, name: str, domain: str, root: Path) -> str:
    """A batch reading `root/in` and writing `root/out` (local directories); returns its id."""
    (root / "in").mkdir(parents=True)
    async with StorageFactory(settings.storage) as storages:
        store = await batch_store_in(settings, storages)
        spec = {
            "name": name,
            "domain": domain,
            "input_path": str(root / "in"),
            "result_path": str(root / "out"),
        }
        return (await store.create(parse_spec(spec))).batch.id


async def _write_control(setup: WorkerSetup, key: str, data: bytes) -> None:
    async with StorageFactory(setup.storage_settings) as storages:
        control = await storages.open(setup.location("control"))
        await control.write(key, data)


async def _get(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.get(url, **kwargs) as response:
        return response.status, await response.json()


async def _ready_again(http: aiohttp.ClientSession, url: str, timeout_s: float = 30) -> dict[str, Any]:
    """The body of the first /readyz that answers 200; the test fails if none does in time."""

    async def poll() -> dict[str, Any]:
        while True:
            status, body = await _get(http, url + "/readyz")
            if status == 200:
                return dict(body)
            await asyncio.sleep(0.05)  # nothing to wait on but its answers

    return await within(poll(), timeout_s, "/readyz did not answer 200 again")


# -- broken batch documents -------------------------------------------------------------------


async def test_serve_stays_up_beside_a_broken_batch_document(
    make_worker_setup: MakeSetup, serve_process: ServeProcess, tmp_path: Path
) -> None:
    """A batch document that is not JSON beside a good batch: serve stays up and the good batch's
    inputs get results, pass after pass; the broken document is logged at error level with its key
    once (not at every pass); /readyz is 503 naming it; `batch list` and the API's list show it as
    broken; reading it over the API is 409 with the reason; deleted over the API, /readyz is 200."""
    setup = await make_worker_setup()
    good_id = await create_batch(setup, setup.settings())
    await _write_control(setup, BROKEN_KEY, b'{"name": "half written", "domain": ')
    await setup.inputs.write("first.png", png(200, 100))
    config = _config(setup, tmp_path / "ocrbatch.toml")
    async with serve_process(config) as served, aiohttp.ClientSession() as http:
        url = served.url
        await served.wait_for_log("item.done", key="first.png", outcome="succeeded")
        logged = await served.wait_for_log("batch.document_broken")
        assert (logged["level"], logged["key"], logged["batch_id"]) == ("error", BROKEN_KEY, BROKEN_ID)
        status, ready = await _get(http, url + "/readyz")
        assert status == 503
        assert ready["status"] == "not_ready"
        assert BROKEN_KEY in ready["error"]["message"]
        assert [broken["id"] for broken in ready["broken_batches"]] == [BROKEN_ID]
        await setup.inputs.write("second.png", png(210, 100))  # found by a later pass
        await served.wait_for_log("item.done", key="second.png", outcome="succeeded")
        assert len(served.events("batch.document_broken")) == 1
        assert served.process.returncode is None

        status, listed = await _get(http, url + "/api/v1/batches", headers=AUTH)
        assert status == 200
        statuses = {entry["id"]: entry["status"] for entry in listed["batches"]}
        assert statuses[BROKEN_ID] == "broken"
        assert statuses[good_id] in ("available", "running")  # a pass may be under way
        status, refused = await _get(http, f"{url}/api/v1/batches/{BROKEN_ID}", headers=AUTH)
        assert (status, refused["error"]["code"]) == (409, "broken_batch")
        assert "batch document is not valid (Invalid JSON" in refused["error"]["message"]

        cli = await start_ocrbatch(config, "batch", "list", "--json", stderr=asyncio.subprocess.PIPE)
        assert await cli.wait() == 0, cli.explain("batch list failed")
        shown = {entry["id"]: entry for entry in json.loads(cli.output)}
        assert shown[BROKEN_ID]["status"] == "broken"
        assert BROKEN_KEY in shown[BROKEN_ID]["status_reason"]
        assert shown[good_id]["name"] == "receipts"

        async with http.delete(f"{url}/api/v1/batches/{BROKEN_ID}", headers=AUTH) as response:
            assert response.status == 200
            assert (await response.json())["deleted"]["status"] == "broken"
        assert "broken_batches" not in await _ready_again(http, url)
        await served.wait_for_log("batch.document_removed", key=BROKEN_KEY)


async def test_the_api_lists_a_broken_document_and_refuses_to_read_it(
    start_api: StartApi, store: BatchStore, tmp_path: Path
) -> None:
    """The API's batch list keeps its shape (`{"batches": [...]}`, full batches as before) and adds
    the broken document as an entry with its id, key, status "broken" and the reason; GET, PATCH and
    a conditional DELETE of it are 409 broken_batch; a plain DELETE removes it."""
    api = await start_api(store)
    response, created = await api.call("POST", "/api/v1/batches", json=api_spec())
    assert response.status == 201
    (tmp_path / "control" / "batches" / f"{BROKEN_ID}.json").write_text('{"name": "forms2", "domain": 3}')
    response, listed = await api.call("GET", "/api/v1/batches")
    assert response.status == 200
    good, broken = listed["batches"]
    assert good == created
    assert {key: broken[key] for key in ("id", "name", "status", "key")} == {
        "id": BROKEN_ID,
        "name": "forms2",
        "status": "broken",
        "key": BROKEN_KEY,
    }
    assert "batch document is not valid (domain: " in broken["status_reason"]
    _, searched = await api.call("GET", "/api/v1/batches", params={"search": "forms2"})
    assert [entry["id"] for entry in searched["batches"]] == [BROKEN_ID]
    refused_calls: tuple[tuple[str, dict[str, Any]], ...] = (
        ("GET", {}),
        ("PATCH", {"json": {"status": "paused"}}),
        ("DELETE", {"headers": {"If-Match": '"any"'}}),
    )
    for method, kwargs in refused_calls:
        response, body = await api.call(method, f"/api/v1/batches/{BROKEN_ID}", **kwargs)
        assert (response.status, body["error"]["code"]) == (409, "broken_batch"), method
    response, body = await api.call("DELETE", f"/api/v1/batches/{BROKEN_ID}")
    assert (response.status, body["deleted"]["id"]) == (200, BROKEN_ID)
    _, listed = await api.call("GET", "/api/v1/batches")
    assert listed["batches"] == [created]


# -- control-storage outages ------------------------------------------------------------------


async def test_serve_outlasts_a_control_storage_outage_and_recovers_by_itself(
    make_worker_setup: MakeSetup, start_s3_proxy: StartS3Proxy, serve_process: ServeProcess, tmp_path: Path
) -> None:
    """The control storage stops answering (503) while serve runs two batches on local directories:
    the process stays up, /healthz stays 200, /readyz is 503 saying the control storage cannot be
    read, the batch routes are 503 storage_unavailable, and passes keep retrying with backoff; once
    the storage answers again, passes resume by themselves, the inputs that arrived meanwhile in both
    batches get results, and /readyz is 200. (A 60 s outage takes the same path, each retry waiting
    at most `control_backoff_max_s`.)"""
    setup = await make_worker_setup()
    proxy = await start_s3_proxy("aws")
    settings = _settings(setup, "receipts", "invoices")
    await _local_batch(settings, "receipts", "receipts", tmp_path / "receipts")
    await _local_batch(settings, "invoices", "invoices", tmp_path / "invoices")
    (tmp_path / "receipts" / "in" / "before.png").write_bytes(png(200, 100))
    config = _config(
        setup,
        tmp_path / "ocrbatch.toml",
        endpoint_url=proxy.url,
        domains=("receipts", "invoices"),
        control_backoff_initial_s=0.05,
        control_backoff_max_s=0.2,
    )
    async with serve_process(config, env=ONE_ATTEMPT) as served, aiohttp.ClientSession() as http:
        url = served.url
        await served.wait_for_log("item.done", key="before.png", outcome="succeeded")
        proxy.down = "503"
        first = await served.wait_for_log("worker.control_unavailable")
        assert first["level"] == "error"
        assert "ServiceUnavailable" in first["error"]
        status, ready = await _get(http, url + "/readyz")
        assert (status, ready["status"]) == (503, "not_ready")
        assert "control storage" in ready["error"]["message"]
        assert (await _get(http, url + "/healthz"))[0] == 200
        status, body = await _get(http, url + "/api/v1/batches", headers=AUTH)
        assert (status, body["error"]["code"]) == (503, "storage_unavailable")
        (tmp_path / "receipts" / "in" / "during.png").write_bytes(png(210, 100))
        (tmp_path / "invoices" / "in" / "during-too.png").write_bytes(png(220, 100))
        await served.wait_for_log("worker.control_unavailable", level="warning")  # retried, still down
        assert served.process.returncode is None

        proxy.down = None
        await served.wait_for_log("worker.control_recovered")
        await served.wait_for_log("item.done", key="during.png", outcome="succeeded")
        await served.wait_for_log("item.done", key="during-too.png", outcome="succeeded")
        await _ready_again(http, url)
        status, listed = await _get(http, url + "/api/v1/batches", headers=AUTH)
        assert (status, len(listed["batches"])) == (200, 2)
    assert (tmp_path / "invoices" / "out" / "during-too.png.json").is_file()


@pytest.mark.parametrize("down", ["503", "drop"])
async def test_a_pass_waits_for_the_control_storage_with_backoff(
    make_worker_setup: MakeSetup, start_s3_proxy: StartS3Proxy, down: Down
) -> None:
    """While the control storage answers 503 (or drops connections), a pass reads the catalog again
    after exponential waits with full jitter (on the injected sleep, capped at control_backoff_max_s),
    `control_error` says why meanwhile, the first failure is logged at error level and the retries as
    warnings; once the store answers, the pass runs the batch and `control_error` is cleared."""
    setup = await make_worker_setup()
    proxy = await start_s3_proxy("aws")
    settings = _settings(
        setup,
        endpoint_url=proxy.url,
        control_backoff_initial_s=1.0,
        control_backoff_max_s=4.0,
        progress_interval_s=PROGRESS_S,
    )
    await create_batch(setup, settings)
    await setup.inputs.write("scan.png", png(200, 100))
    clock = FakeClock(now_s=0.0)
    errors_seen: list[str | None] = []

    async def sleep(delay_s: float) -> None:
        if delay_s == PROGRESS_S:
            await asyncio.Event().wait()  # the pass cancels its ticker
        errors_seen.append(worker.control_error)
        if len(errors_seen) == 5:
            proxy.down = None  # the store is back after five waits
        await clock.sleep(delay_s)

    async with (
        StorageFactory(settings.storage) as storages,
        open_ocr_session() as session,
        open_webhook_session(settings.webhook) as outbound,
    ):
        store = await batch_store_in(settings, storages)
        worker = Worker(
            settings,
            store=store,
            storages=storages,
            session=session,
            outbound_session=outbound,
            sleep=sleep,
            clock=clock,
        )
        proxy.down = down
        with capture_logs() as logs:
            outcome = await within(worker.run_pass(wait_for_control=True), 30, "the pass did not end")
    waits = clock.sleeps_s[:5]
    assert all(0 <= wait <= min(4.0, 2.0**attempt) for attempt, wait in enumerate(waits)), waits
    assert all(error is not None for error in errors_seen[:5])
    assert worker.control_error is None
    assert outcome.errors == {}
    assert [report.succeeded for report in outcome.reports.values()] == [1]
    control = [
        (entry["event"], entry["log_level"]) for entry in logs if entry["event"].startswith("worker.control")
    ]
    assert control == [
        ("worker.control_unavailable", "error"),
        *[("worker.control_unavailable", "warning")] * 4,
        ("worker.control_recovered", "info"),
    ]


async def test_a_single_pass_gives_up_after_control_max_attempts(
    make_worker_setup: MakeSetup, start_s3_proxy: StartS3Proxy
) -> None:
    """`run_pass()` as `run --once` runs it reads the catalog `control_max_attempts` times, waiting
    between (injected sleep), then raises a StorageError saying so; the CLI shows it as one line
    with exit 1."""
    setup = await make_worker_setup()
    proxy = await start_s3_proxy("aws")
    settings = _settings(setup, endpoint_url=proxy.url, control_max_attempts=3)
    clock = FakeClock(now_s=0.0)
    async with (
        StorageFactory(settings.storage) as storages,
        open_ocr_session() as session,
        open_webhook_session(settings.webhook) as outbound,
    ):
        store = await batch_store_in(settings, storages)
        worker = Worker(
            settings,
            store=store,
            storages=storages,
            session=session,
            outbound_session=outbound,
            sleep=clock.sleep,
            clock=clock,
        )
        proxy.down = "503"
        with pytest.raises(StorageError, match=r"could not be read in 3 attempts: .*ServiceUnavailable"):
            await within(worker.run_pass(), 30, "the pass did not give up")
    assert len(clock.sleeps_s) == 2


async def test_stop_ends_a_pass_waiting_for_the_control_storage(
    make_worker_setup: MakeSetup, start_s3_proxy: StartS3Proxy
) -> None:
    """Shutdown does not wait out a backoff: `stop()` while a pass waits for the control storage
    ends the pass at once, with nothing processed."""
    setup = await make_worker_setup()
    proxy = await start_s3_proxy("aws")
    settings = _settings(
        setup, endpoint_url=proxy.url, control_backoff_initial_s=3600.0, control_backoff_max_s=3600.0
    )
    clock = FakeClock(now_s=0.0)
    clock.gate = asyncio.Event()  # never opened: a wait ends only when the pass stops waiting
    async with (
        StorageFactory(settings.storage) as storages,
        open_ocr_session() as session,
        open_webhook_session(settings.webhook) as outbound,
    ):
        store = await batch_store_in(settings, storages)
        worker = Worker(
            settings,
            store=store,
            storages=storages,
            session=session,
            outbound_session=outbound,
            sleep=clock.sleep,
            clock=clock,
        )
        proxy.down = "503"
        passing = asyncio.create_task(worker.run_pass(wait_for_control=True))
        await within(clock.sleeping.wait(), 30, "the pass did not wait for the control storage")
        worker.stop()
        outcome = await within(passing, 5, "the pass did not end after stop()")
    assert (outcome.reports, outcome.errors) == ({}, {})
    assert worker.control_error is not None


async def test_claims_failing_on_the_control_path_never_put_the_batch_in_error(
    make_worker_setup: MakeSetup, start_s3_proxy: StartS3Proxy
) -> None:
    """When the control path fails under a running batch (its item claims cannot be taken), the
    batch does not end in `error`: the next pass, with the control path back, gives its input a
    result."""
    setup = await make_worker_setup()
    proxy = await start_s3_proxy("aws")
    settings = _settings(setup, progress_interval_s=PROGRESS_S)
    batch_id = await create_batch(setup, settings)
    await setup.inputs.write("scan.png", png(200, 100))
    clock = FakeClock(now_s=0.0)

    async def sleep(delay_s: float) -> None:
        if delay_s == PROGRESS_S:
            await asyncio.Event().wait()  # the pass cancels its ticker
        await clock.sleep(delay_s)

    proxied = settings.storage.model_copy(update={"endpoint_url": proxy.url})
    async with (
        StorageFactory(settings.storage) as storages,
        StorageFactory(proxied) as claim_storages,
        open_ocr_session() as session,
        open_webhook_session(settings.webhook) as outbound,
    ):
        store = await batch_store_in(settings, storages)
        claims_at = StorageCoordination(await claim_storages.open(setup.location("control"), create=True))
        claims = ItemClaims(claims_at, ttl_s=60, clock=clock, sleep=sleep)
        worker = Worker(
            settings,
            store=store,
            storages=storages,
            session=session,
            outbound_session=outbound,
            sleep=sleep,
            clock=clock,
            claims=claims,
        )
        proxy.down = "503"
        await within(worker.run_pass(), 30, "the first pass did not end")
        assert (await store.get(batch_id)).batch.status != "error"
        proxy.down = None
        outcome = await within(worker.run_pass(), 30, "the second pass did not end")
    assert outcome.errors == {}
    assert "scan.png.json" in {info.key async for info in setup.results.list()}


async def test_run_once_with_the_control_storage_down_exits_1_with_one_line(
    make_worker_setup: MakeSetup, start_s3_proxy: StartS3Proxy, tmp_path: Path
) -> None:
    """`run --once` cannot start while the control storage is down: exit 1 and one clear error
    line naming the control path (no traceback)."""
    setup = await make_worker_setup()
    proxy = await start_s3_proxy("aws")
    proxy.down = "503"
    config = _config(setup, tmp_path / "ocrbatch.toml", endpoint_url=proxy.url)
    process = await start_ocrbatch(config, "run", "--once", env=ONE_ATTEMPT, stderr=asyncio.subprocess.PIPE)
    assert await process.wait() == 1
    assert len(process.error_lines) == 1, process.error_lines
    assert process.error_lines[0].startswith(f"error: s3://{setup.bucket}/control")
    assert "ServiceUnavailable" in process.error_lines[0]


# -- SQS messages that cannot be processed ----------------------------------------------------


def _sqs_session(storage: StorageSettings) -> aioboto3.Session:
    assert storage.access_key_id is not None
    assert storage.secret_access_key is not None
    return aioboto3.Session(
        aws_access_key_id=storage.access_key_id.get_secret_value(),
        aws_secret_access_key=storage.secret_access_key.get_secret_value(),
        region_name="us-east-1",
    )


async def _queue(storage: StorageSettings, *bodies: str) -> str:
    """A fresh queue holding a message of each body; its URL."""
    async with _sqs_session(storage).client("sqs", endpoint_url=storage.endpoint_url) as sqs:
        queue_url = (await sqs.create_queue(QueueName=f"faults-{uuid.uuid4().hex[:12]}"))["QueueUrl"]
    await _send(storage, queue_url, *bodies)
    return queue_url


async def _send(storage: StorageSettings, queue_url: str, *bodies: str) -> None:
    async with _sqs_session(storage).client("sqs", endpoint_url=storage.endpoint_url) as sqs:
        for body in bodies:
            await sqs.send_message(QueueUrl=queue_url, MessageBody=body)


async def _wait_until_empty(storage: StorageSettings, queue_url: str, timeout_s: float = 30) -> None:
    async def left() -> int:
        async with _sqs_session(storage).client("sqs", endpoint_url=storage.endpoint_url) as sqs:
            attributes = (
                await sqs.get_queue_attributes(
                    QueueUrl=queue_url,
                    AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
                )
            )["Attributes"]
        return sum(int(value) for value in attributes.values())

    async def poll() -> None:
        while await left():  # noqa: ASYNC110 - the queue offers nothing to wait on but its counters
            await asyncio.sleep(0.05)

    await within(poll(), timeout_s, "messages were still in the queue")


def _created(bucket: str, key: str) -> str:
    return json.dumps(
        {
            "Records": [
                {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}
            ]
        }
    )


async def test_serve_deletes_sqs_messages_it_cannot_process_and_logs_why(
    make_worker_setup: MakeSetup, serve_process: ServeProcess, tmp_path: Path
) -> None:
    """With a broken batch document beside a good batch, serve's SQS consumer settles every message:
    an upload the good batch reads gets its result; uploads in a bucket no batch reads, outside every
    input path, or under the input path of a deleted batch are logged as ignored with the reason;
    a malformed message and one announcing no upload are logged with the reason; all are deleted."""
    setup = await make_worker_setup()
    settings = setup.settings()
    await create_batch(setup, settings)
    old_id = await create_batch(
        setup,
        settings,
        name="old",
        domain="forms",
        template_ids=[1],
        input_path=f"s3://{setup.bucket}/old",
        result_path=f"s3://{setup.bucket}/old-out",
    )
    async with StorageFactory(settings.storage) as storages:
        await (await batch_store_in(settings, storages)).delete(old_id)
    await _write_control(setup, BROKEN_KEY, b"[]")
    ignored = [("no-such-bucket", "in/x.png"), (setup.bucket, "elsewhere/y.png"), (setup.bucket, "old/z.png")]
    queue_url = await _queue(
        setup.storage_settings,
        "not json",
        json.dumps({"Records": [{"eventName": "ObjectRemoved:Delete", "s3": {}}]}),
        *(_created(bucket, key) for bucket, key in ignored),
    )
    sqs = {
        "queue_url": queue_url,
        "endpoint_url": setup.storage_settings.endpoint_url,
        "wait_time_s": 1,
        "visibility_timeout_s": 30,
        "unsettled_retry_s": 1,
    }
    config = _config(setup, tmp_path / "ocrbatch.toml", sqs=sqs, poll_interval_s=3600.0)
    async with serve_process(config) as served:
        await served.wait_for_log("batch.pass_done")  # the first pass is over; the next is an hour away
        await setup.inputs.write("wanted.png", png(200, 100))
        await _send(setup.storage_settings, queue_url, _created(setup.bucket, "in/wanted.png"))
        await served.wait_for_log("sqs.message_done", uploads=1, settled=True)
        await served.wait_for_log("item.done", key="wanted.png", outcome="succeeded")
        await _wait_until_empty(setup.storage_settings, queue_url)
        await served.wait_for_log("sqs.not_an_event", reason="the body is not JSON")
        no_upload = await served.wait_for_log("sqs.message_done", uploads=0)
        assert "announces no upload" in no_upload["reason"]
        for bucket, key in ignored:
            entry = await served.wait_for_log("events.upload_ignored", bucket=bucket, key=key)
            assert "no batch reads this location" in entry["reason"]
        assert served.events("sqs.processing_failed") == []
        assert served.events("sqs.message_done", settled=False) == []


async def test_a_message_still_unsettled_at_max_deliveries_is_deleted_with_the_reason(
    s3_settings: StorageSettings,
) -> None:
    """A message whose processing keeps failing comes back until its `max_deliveries`-th delivery,
    then is deleted, logged at error level with the count and the reason, and counted as abandoned;
    it is not redelivered forever."""
    queue_url = await _queue(s3_settings, _created("b", "in/keeps-failing.png"))
    calls = 0

    async def process(uploads: list[Any]) -> bool:
        nonlocal calls
        calls += 1
        raise StorageError("the result location refuses this key", location="s3://b/out")

    settings = SqsSettings(
        queue_url=queue_url,
        endpoint_url=s3_settings.endpoint_url,
        wait_time_s=1,
        visibility_timeout_s=30,
        unsettled_retry_s=0,
        max_deliveries=3,
    )
    metrics = WorkerMetrics()
    stopping = asyncio.Event()
    consumer = SqsConsumer(settings, s3_settings, process, stopping=stopping, metrics=metrics)
    with capture_logs() as logs:
        consuming = asyncio.create_task(consumer.run())
        await _wait_until_empty(s3_settings, queue_url)
        stopping.set()
        await within(consuming, 30, "the consumer did not stop")
    assert calls == 3
    [abandoned] = [entry for entry in logs if entry["event"] == "sqs.message_abandoned"]
    assert (abandoned["log_level"], abandoned["deliveries"]) == ("error", 3)
    assert abandoned["keys"] == ["in/keeps-failing.png"]
    assert "reconcile pass" in abandoned["reason"]
    assert (consumer.deleted, consumer.returned) == (1, 2)
    assert metrics.registry.get_sample_value("ocrbatch_sqs_messages_total", {"outcome": "abandoned"}) == 1
