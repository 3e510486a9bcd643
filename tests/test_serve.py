"""`ocrbatch serve` as a real process: the HTTP API beside the worker, and its start-up checks."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path

import aiohttp
from fixtures.process import TOKEN, ServeProcess, start_ocrbatch
from fixtures.receiver import Receiver
from fixtures.samples import png
from fixtures.waits import within
from fixtures.worker import MakeSetup, write_config
from prometheus_client.parser import text_string_to_metric_families

from ocrbatch.emulator.faults import ScriptedFault
from ocrbatch.webhooks.signing import verify


async def test_serve_runs_the_api_beside_the_worker(
    make_worker_setup: MakeSetup, serve_process: ServeProcess, tmp_path: Path
) -> None:
    """A batch created through the API gets its upload recognised by the same process; health,
    status and auth work; SIGTERM stops it with exit code 0."""
    receiver = Receiver()
    await receiver.start()
    setup = await make_worker_setup()
    config = write_config(setup, tmp_path / "ocrbatch.toml", webhook={"idle_flush_s": 0.1})
    with config.open("a", encoding="utf-8") as file:
        file.write(f'[api]\nport = 0\ntoken = "{TOKEN}"\nallowed_locations = ["s3://{setup.bucket}/"]\n')
    try:
        async with serve_process(config) as served, aiohttp.ClientSession() as session:
            url, auth = served.url, {"Authorization": f"Bearer {TOKEN}"}
            async with session.get(url + "/healthz") as response:
                assert response.status == 200
            async with session.get(url + "/api/v1/batches") as response:
                assert response.status == 401
            spec = setup.batch_spec(webhook={"url": receiver.url})
            async with session.post(url + "/api/v1/batches", json=spec, headers=auth) as response:
                assert response.status == 201, await response.text()
                batch_id = (await response.json())["id"]
            setup.emulator.faults.script([ScriptedFault(code="0500", name="upload.png")])  # one retry
            await setup.inputs.write("upload.png", png(321, 100))
            await receiver.wait_for(1, timeout_s=60)  # recognised and delivered
            assert receiver.received[0].payload["items"][0]["key"] == "upload.png"
            async with session.get(f"{url}/api/v1/batches/{batch_id}/status", headers=auth) as response:
                status = await response.json()
            assert status["report"]["succeeded"] == 1
            async with session.get(url + "/metrics") as response:  # no token needed, like health
                assert response.status == 200
                samples = scrape(await response.text())
        assert samples[("ocrbatch_items_total", (("batch", "receipts"), ("outcome", "succeeded")))] == 1
        assert samples[("ocrbatch_ocr_call_seconds_count", (("domain", "receipts"),))] == 2
        assert samples[("ocrbatch_retries_total", (("code", "0500"), ("domain", "receipts")))] == 1
        assert samples[("ocrbatch_domain_cap", (("domain", "receipts"),))] == 5
        assert samples[("ocrbatch_domain_max_cap", (("domain", "receipts"),))] == 5
        assert samples[("ocrbatch_domain_in_flight", (("domain", "receipts"),))] == 0
        assert ("ocrbatch_domain_waiting", (("domain", "receipts"),)) in samples
        assert ("ocrbatch_queue_depth", (("batch", "receipts"),)) in samples
        assert samples[("ocrbatch_webhook_chunks_total", (("outcome", "made"),))] == 1
        assert samples[("ocrbatch_webhook_chunks_total", (("outcome", "sent"),))] == 1
        assert samples[("ocrbatch_webhook_outbox_chunks", ())] == 0
    finally:
        await receiver.stop()


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_serve_refuses_a_public_address_without_a_token(
    make_worker_setup: MakeSetup, tmp_path: Path
) -> None:
    """Bound to a non-loopback address without an API token, serve does not start: exit 2, one line."""
    setup = await make_worker_setup()
    config = write_config(setup, tmp_path / "ocrbatch.toml")
    with config.open("a", encoding="utf-8") as file:
        file.write('[api]\nhost = "0.0.0.0"\n')
    process = await start_ocrbatch(config, "serve")
    assert await process.wait() == 2
    assert len(process.lines) == 1, process.output  # its stdout and stderr: the one line
    assert process.lines[0].startswith("error: ")
    assert "token" in process.lines[0]


def dockerfile_instruction(name: str) -> list[str]:
    """The JSON-array arguments of the Dockerfile's `name` instruction (its last line)."""
    text = (Path(__file__).parent.parent / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    line = next(line for line in reversed(text.splitlines()) if line.startswith(name + " "))
    arguments: list[str] = json.loads(line[line.index("[") :])
    return arguments


async def test_the_container_entrypoint_and_healthcheck_work_outside_docker(
    make_worker_setup: MakeSetup, tmp_path: Path
) -> None:
    """The Dockerfile's ENTRYPOINT starts the service and its HEALTHCHECK command passes against it,
    then fails once it has stopped."""
    entrypoint = dockerfile_instruction("ENTRYPOINT")
    healthcheck = dockerfile_instruction("HEALTHCHECK")
    assert entrypoint == ["ocrbatch", "serve"]
    setup = await make_worker_setup()
    config = write_config(setup, tmp_path / "ocrbatch.toml")
    with config.open("a", encoding="utf-8") as file:
        file.write(f'[api]\nport = 0\ntoken = "{TOKEN}"\n')
    script = str(Path(sys.executable).parent / entrypoint[0])
    process = await start_ocrbatch(
        None, *entrypoint[1:], command=[script], env={"OCRBATCH_CONFIG": str(config)}
    )
    port = str((await process.wait_for_log("api.listening"))["url"]).rsplit(":", 1)[1]
    assert healthcheck[0] == "python"
    check = [sys.executable, *healthcheck[1:]]  # the image's python is this one here

    async def healthy() -> bool:
        probe = await asyncio.create_subprocess_exec(
            *check,
            env={**os.environ, "OCRBATCH_API__PORT": port},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await within(probe.wait(), 30, "the health check did not end") == 0

    assert await healthy()
    assert await process.stop() == 0
    assert not await healthy()


async def test_serve_without_a_token_makes_one_that_only_its_user_can_read(
    make_worker_setup: MakeSetup, serve_process: ServeProcess, tmp_path: Path
) -> None:
    """With no api.token, serve makes a random one for the run, writes it to a file of mode 0600
    and prints that file's path (never the token): requests without it get 401, with it 200, and
    the next start makes another."""
    setup = await make_worker_setup()
    config = write_config(setup, tmp_path / "ocrbatch.toml")
    with config.open("a", encoding="utf-8") as file:
        file.write("[api]\nport = 0\n")
    tokens = []
    for _ in range(2):
        async with serve_process(config) as served, aiohttp.ClientSession() as session:
            [printed] = [line for line in served.lines if line.startswith("API token")]
            mode, token = take_token_file(Path(printed.rsplit(" in ", 1)[1]))
            assert mode == 0o600
            assert len(token) >= 32
            assert token not in served.output
            tokens.append(token)
            async with session.get(served.url + "/api/v1/batches") as response:
                assert response.status == 401
            wrong = {"Authorization": "Bearer not-the-token"}
            async with session.get(served.url + "/api/v1/batches", headers=wrong) as response:
                assert response.status == 401
            auth = {"Authorization": f"Bearer {token}"}
            async with session.get(served.url + "/api/v1/batches", headers=auth) as response:
                assert response.status == 200
    assert tokens[0] != tokens[1]


def s3_event(bucket: str, key: str) -> dict[str, object]:
    """An S3 event notification announcing the upload of `key`."""
    return {
        "Records": [
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}
        ]
    }


def take_token_file(path: Path) -> tuple[int, str]:
    """The token file's permission bits and token; the file is removed."""
    mode = stat.S_IMODE(path.stat().st_mode)
    token = path.read_text(encoding="utf-8").strip()
    path.unlink()
    return mode, token


async def test_a_webhook_edited_through_the_api_takes_the_next_chunk(
    make_worker_setup: MakeSetup, serve_process: ServeProcess, tmp_path: Path
) -> None:
    """While serve runs, the batch's webhook URL and secret are changed through the API: the next
    chunk goes to the new receiver signed with the new secret, and the former receiver gets
    nothing more; no secret shows in serve's output."""
    first, second = Receiver(), Receiver()
    await first.start()
    await second.start()
    old_secret, new_secret = "whsec_" + "a" * 40, "whsec_" + "b" * 40
    setup = await make_worker_setup()
    config = write_config(
        setup, tmp_path / "ocrbatch.toml", webhook={"idle_flush_s": 0.1}, poll_interval_s=3600.0
    )
    with config.open("a", encoding="utf-8") as file:
        file.write(f'[api]\nport = 0\ntoken = "{TOKEN}"\nallowed_locations = ["s3://{setup.bucket}/"]\n')
    try:
        async with serve_process(config) as served, aiohttp.ClientSession() as session:
            url, auth = served.url, {"Authorization": f"Bearer {TOKEN}"}
            spec = setup.batch_spec(webhook={"url": first.url, "secret": old_secret})
            async with session.post(url + "/api/v1/batches", json=spec, headers=auth) as response:
                assert response.status == 201, await response.text()
                batch_id = (await response.json())["id"]
            await setup.inputs.write("one.png", png(300, 100))
            async with session.post(
                url + "/api/v1/events/s3", json=s3_event(setup.bucket, "in/one.png"), headers=auth
            ) as response:
                assert response.status == 200
            await first.wait_for(1, timeout_s=60)
            change = {"webhook": {"url": second.url, "secret": new_secret}}
            async with session.patch(
                f"{url}/api/v1/batches/{batch_id}", json=change, headers=auth
            ) as response:
                assert response.status == 200, await response.text()
            await setup.inputs.write("two.png", png(310, 100))
            async with session.post(
                url + "/api/v1/events/s3", json=s3_event(setup.bucket, "in/two.png"), headers=auth
            ) as response:
                assert response.status == 200
            await second.wait_for(1, timeout_s=60)
            output = served.output
    finally:
        await first.stop()
        await second.stop()
    assert [received.payload["items"][0]["key"] for received in first.received] == ["one.png"]
    assert [received.payload["items"][0]["key"] for received in second.received] == ["two.png"]
    for receiver, secret in ((first, old_secret), (second, new_secret)):
        [received] = receiver.received
        verify(secret, received.headers, received.body, now_s=int(received.headers["webhook-timestamp"]))
    assert old_secret not in output
    assert new_secret not in output
