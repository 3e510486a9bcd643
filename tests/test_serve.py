"""`ocrbatch serve` as a real process: the HTTP API beside the worker, and its start-up checks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from samples import png
from webhook_receiver import Receiver
from worker_fixtures import MakeSetup, write_config

from ocrbatch.emulator.faults import ScriptedFault

TOKEN = "api-token-for-tests-0123456789"


async def _url_from_log(stream: asyncio.StreamReader) -> str:
    while line := await stream.readline():
        if b'"event": "api.listening"' in line:
            url: str = json.loads(line)["url"]
            return url
    raise AssertionError("serve ended without listening")


async def test_serve_runs_the_api_beside_the_worker(make_worker_setup: MakeSetup, tmp_path: Path) -> None:
    """A batch created through the API gets its upload recognised by the same process; health,
    status and auth work; SIGTERM stops it with exit code 0."""
    receiver = Receiver()
    await receiver.start()
    setup = await make_worker_setup()
    config = write_config(setup, tmp_path / "ocrbatch.toml")
    with config.open("a", encoding="utf-8") as file:
        file.write(f'[api]\nport = 0\ntoken = "{TOKEN}"\n[webhook]\nidle_flush_s = 0.1\n')
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ocrbatch",
        "--config",
        str(config),
        "serve",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    try:
        url = await asyncio.wait_for(_url_from_log(process.stdout), timeout=60)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/healthz") as response:
                assert response.status == 200
            async with session.get(url + "/api/v1/batches") as response:
                assert response.status == 401
            spec = {
                "name": "receipts",
                "domain": "receipts",
                "input_path": f"s3://{setup.bucket}/in",
                "result_path": f"s3://{setup.bucket}/out",
                "webhook": {"url": receiver.url},
            }
            async with session.post(url + "/api/v1/batches", json=spec, headers=auth) as response:
                assert response.status == 201, await response.text()
                batch_id = (await response.json())["id"]
            setup.emulator.faults.script([ScriptedFault(code="0500", name="upload.png")])  # one retry
            await setup.inputs.write("upload.png", png(321, 100))
            await asyncio.wait_for(receiver.wait_for(1), timeout=60)  # recognised and delivered
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
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=60) == 0
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
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ocrbatch",
        "--config",
        str(config),
        "serve",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert err.decode().startswith("error: ")
    assert "token" in err.decode()


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
    process = await asyncio.create_subprocess_exec(
        script,
        *entrypoint[1:],
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "OCRBATCH_CONFIG": str(config), "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    url = await asyncio.wait_for(_url_from_log(process.stdout), timeout=60)
    port = url.rsplit(":", 1)[1]
    assert healthcheck[0] == "python"
    check = [sys.executable, *healthcheck[1:]]  # the image's python is this one here

    async def healthy() -> bool:
        probe = await asyncio.create_subprocess_exec(
            *check,
            env={**os.environ, "OCRBATCH_API__PORT": port},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await asyncio.wait_for(probe.wait(), timeout=30) == 0

    assert await healthy()
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), timeout=60) == 0
    assert not await healthy()
