"""The emulator: its limits, statistics, fault plan, transfer modes and command line."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import click
import pytest
from click.testing import CliRunner
from fixtures.emulator import StartEmulator, calls_at_once, client_for, png_bytes, server_command
from pydantic import ValidationError
from pypdf import PdfWriter

from ocrbatch.cli.servers import emulator_command, engine_command
from ocrbatch.clova.client import OcrCall, TransferMode
from ocrbatch.clova.contract import OcrError
from ocrbatch.emulator.faults import FaultPlan, FaultSettings, ScriptedFault
from ocrbatch.emulator.limits import DomainMeter
from ocrbatch.storage.base import Storage


async def test_fifty_concurrent_calls_against_a_cap_of_five(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """50 concurrent calls, cap 5: peak in-flight is 5, the other 45 get 0025, and the counts add up."""
    emulator = await start_emulator(max_concurrent_calls=5)
    image = png_bytes()
    calls = [OcrCall(name=f"img-{n:02}.png", image_format="png", data=image) for n in range(50)]
    burst = await calls_at_once(emulator, client_for(ocr_session, emulator), calls, admitted=5)
    stats = emulator.stats()
    assert {error.code for error in burst.refused} == {"0025"}
    assert len(burst.answered) == 5
    assert stats["peak_in_flight"] == 5
    assert stats["domains"]["general"]["peak_in_flight"] == 5
    assert stats["calls"] == 50
    assert stats["answers"] == {"200": 5, "0025": 45}
    assert stats["successes"] == 5
    assert stats["in_flight"] == 0


@pytest.mark.parametrize("mode", ["data", "multipart"])
async def test_transfer_modes_round_trip_an_image(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession, mode: TransferMode
) -> None:
    """Base64 data and multipart both deliver the bytes: the size in the answer is read from the image."""
    emulator = await start_emulator()
    client = client_for(ocr_session, emulator, mode=mode)
    response = await client.recognize(
        OcrCall(name="in/영수증 1.png", image_format="png", data=png_bytes(640, 480))
    )
    (image,) = response.images
    assert image.name == "in/영수증 1.png"
    assert image.converted_image_info is not None
    assert (image.converted_image_info.width, image.converted_image_info.height) == (640, 480)
    assert emulator.stats()["recognitions"] == {"in/영수증 1.png": 1}


async def test_url_mode_fetches_a_presigned_url(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession, s3_storage: Storage
) -> None:
    """In url mode the emulator fetches the image from a presigned S3 URL (moto's server)."""
    await s3_storage.write("scans/page.png", png_bytes(300, 900))
    url = await s3_storage.presigned_get_url("scans/page.png", expires_s=300)
    emulator = await start_emulator()
    client = client_for(ocr_session, emulator, mode="url")
    response = await client.recognize(OcrCall(name="scans/page.png", image_format="png", url=url))
    info = response.images[0].converted_image_info
    assert info is not None
    assert (info.width, info.height) == (300, 900)
    missing = await s3_storage.presigned_get_url("scans/missing.png", expires_s=300)
    broken = await client.recognize(OcrCall(name="gone.png", image_format="png", url=missing))
    assert broken.images[0].infer_result == "FAILURE"
    assert "image download failed" in (broken.images[0].message or "")


def pdf_bytes(pages: int) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=595, height=842)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


async def test_pdf_gets_one_image_per_page_up_to_ten(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """A 12-page PDF is answered with its first 10 pages, pageIndex 0-9, as the service does."""
    emulator = await start_emulator()
    response = await client_for(ocr_session, emulator, mode="multipart").recognize(
        OcrCall(name="contract.pdf", image_format="pdf", data=pdf_bytes(12))
    )
    assert [
        image.converted_image_info.page_index for image in response.images if image.converted_image_info
    ] == list(range(10))


async def test_unreadable_image_is_a_failure_result(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """Bytes that are not the declared format are answered FAILURE with the reason, and not counted."""
    emulator = await start_emulator()
    response = await client_for(ocr_session, emulator).recognize(
        OcrCall(name="corrupt.pdf", image_format="pdf", data=b"%PDF-1.7 not really")
    )
    assert response.images[0].infer_result == "FAILURE"
    assert "could not be read" in (response.images[0].message or "")
    assert emulator.stats()["recognitions"] == {}


async def test_template_and_general_answers_through_the_client(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """Template answers name the matched template; General answers with tables carry cells."""
    emulator = await start_emulator(template_ids=(101, 102))
    template = await client_for(ocr_session, emulator, kind="template").recognize(
        OcrCall(name="form.png", image_format="png", data=png_bytes(), template_ids=(102,))
    )
    image = template.images[0]
    assert image.matched_template is not None
    assert image.matched_template.id == 102
    assert image.title is not None
    assert image.fields
    assert all(field.name and field.sub_fields is not None for field in image.fields)
    general = await client_for(ocr_session, emulator).recognize(
        OcrCall(name="table.png", image_format="png", data=png_bytes(), lang="ko", table_detection=True)
    )
    assert general.images[0].tables
    assert general.images[0].tables[0].cells


async def test_double_recognition_shows_in_the_stats(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """Recognising the same image twice is visible per name (the double-billing detector)."""
    emulator = await start_emulator()
    client = client_for(ocr_session, emulator)
    for _ in range(2):
        await client.recognize(OcrCall(name="twice.png", image_format="png", data=png_bytes()))
    await client.recognize(OcrCall(name="once.png", image_format="png", data=png_bytes()))
    stats = emulator.stats()
    assert stats["recognitions"] == {"once.png": 1, "twice.png": 2}
    assert stats["recognised_more_than_once"] == {"twice.png": 2}


async def test_admin_endpoints(start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession) -> None:
    """Stats, reset, scripted faults, fault rates and hold are reachable over HTTP with the admin
    token."""
    emulator = await start_emulator()
    client = client_for(ocr_session, emulator)
    admin = {"X-OCR-ADMIN-TOKEN": emulator.admin_token.get_secret_value()}

    async def post(path: str, payload: Any) -> Any:
        async with ocr_session.post(emulator.url + path, json=payload, headers=admin) as response:
            return response.status, await response.json()

    assert (await post("/_emulator/script", [{"code": "0501"}, {"infer_result": "ERROR", "name": "x.png"}]))[
        1
    ] == {"scripted_faults_left": 2}
    with pytest.raises(OcrError) as caught:
        await client.recognize(OcrCall(name="a.png", image_format="png", data=png_bytes()))
    assert caught.value.code == "0501"
    status, body = await post("/_emulator/script", [{"code": "7777"}])
    assert status == 400
    assert "unknown error code" in body["error"]
    assert (await post("/_emulator/faults", {"failure_rate": 1.0}))[1]["failure_rate"] == 1.0
    assert (await post("/_emulator/faults", {"failure_rate": 2}))[0] == 400
    status, body = await post("/_emulator/faults", {"drop_rate": 0.5})  # 1.0 + 0.5: over 1
    assert status == 400
    assert "the fault rates add up to more than 1" in body["error"]
    async with ocr_session.get(emulator.url + "/_emulator/stats", headers=admin) as response:
        stats = await response.json()
    assert stats["calls"] == 1
    assert stats["rejections"] == {"0501": 1}
    assert stats["scripted_faults_left"] == 1
    assert (await post("/_emulator/hold", {"hold": True}))[1] == {"hold": True}
    assert (await post("/_emulator/hold", {"hold": False}))[1] == {"hold": False}
    status, body = await post("/_emulator/reset", None)
    assert (status, body["calls"], body["answers"], body["scripted_faults_left"]) == (200, 0, {}, 0)


def test_fault_plan_is_deterministic_and_honours_rates() -> None:
    """The same seed gives the same faults; rates are met over many calls; scripted faults come first."""
    settings = FaultSettings(
        error_rate=0.1, drop_rate=0.05, failure_rate=0.05, latency_ms=300, latency_jitter_ms=100, seed=7
    )
    first, second = FaultPlan(settings), FaultPlan(settings)
    decisions = [first.decide("x") for _ in range(4000)]
    assert decisions == [second.decide("x") for _ in range(4000)]
    errors = sum(decision.code is not None for decision in decisions) / 4000
    drops = sum(decision.drop for decision in decisions) / 4000
    assert 0.08 < errors < 0.12
    assert 0.035 < drops < 0.065
    assert all(0.2 <= decision.latency_s <= 0.4 for decision in decisions)
    first.script([ScriptedFault(code="0500", name="only-me.png", times=2)])
    assert first.decide("other.png").code is None or first.scripted_left == 2  # not consumed by others
    assert first.decide("only-me.png").code == "0500"
    assert first.decide("only-me.png").code == "0500"
    assert first.scripted_left == 0


def test_fault_rates_add_up_to_at_most_one() -> None:
    """Fault rates are bands of one draw per call: together they may cover every call, no more."""
    with pytest.raises(ValidationError, match="the fault rates add up to more than 1"):
        FaultSettings(error_rate=0.5, drop_rate=0.3, error_result_rate=0.3)
    assert FaultSettings(error_rate=0.5, drop_rate=0.5).drop_rate == 0.5
    assert FaultSettings(error_rate=0.1, http_error_rate=0.2, failure_rate=0.7).failure_rate == 0.7


def test_the_command_refuses_fault_rates_above_one_as_a_usage_error() -> None:
    """`ocrbatch emulator` with rates summing over 1 exits 2 and says why, before it listens."""
    result = CliRunner().invoke(emulator_command, ["--error-rate", "0.6", "--drop-rate", "0.6"])
    assert result.exit_code == 2
    assert "Error: the fault rates add up to more than 1" in result.output


def test_scripted_fault_needs_one_outcome() -> None:
    """A scripted fault with two outcomes, or none, or an unknown code is refused."""
    for fields in ({"code": "0500", "drop": True}, {}, {"code": "1234"}):
        with pytest.raises(ValueError, match=r"scripted fault|unknown error code"):
            ScriptedFault.model_validate(fields)


def test_slot_utilisation_and_limits_on_an_injected_clock() -> None:
    """Utilisation is busy slot-time over cap x elapsed; the rate window and quota refuse with their codes."""
    meter = DomainMeter(max_concurrent_calls=2, calls_per_second=3, quota=6)
    assert meter.try_admit(0.0) is None
    assert meter.try_admit(0.0) is None
    assert meter.try_admit(0.0) == "0025"  # cap
    meter.release(0.0, 1.0)
    assert meter.utilisation(1.0) == pytest.approx(1.0)  # one slot finished, one still busy
    meter.release(0.0, 2.0)
    assert meter.utilisation(4.0) == pytest.approx(0.75)  # 3 slot-seconds of 2 x 2
    for start_s in (2.0, 2.1, 2.2):
        assert meter.try_admit(start_s) is None
        meter.release(start_s, start_s + 0.05)
    assert meter.try_admit(2.3) == "0025"  # three admitted within the last second
    assert meter.try_admit(3.05) is None
    assert meter.try_admit(3.15) == "0023"  # quota of 6 used up


def test_help_documents_every_limit_and_fault_flag() -> None:
    """`ocrbatch emulator --help` lists each limit and fault option with its help text."""
    result = subprocess.run(
        [sys.executable, "-m", "ocrbatch", "emulator", "--help"], capture_output=True, text=True, check=True
    )
    for option in emulator_command.params:
        for flag in option.opts:
            assert flag in result.stdout, flag
    for flag in (
        "--max-concurrent-calls",
        "--calls-per-second",
        "--quota",
        "--latency-ms",
        "--latency-jitter-ms",
        "--error-rate",
        "--http-error-rate",
        "--drop-rate",
        "--failure-rate",
        "--error-result-rate",
    ):
        assert re.search(re.escape(flag) + r"[^\n]*\n?[^\n]*(Limit|Fault)", result.stdout), flag


async def test_emulator_command_prints_its_url_and_stops_on_sigterm() -> None:
    """`ocrbatch emulator --port 0` prints the URL it listens on, serves, and exits 0 on SIGTERM.
    Without `--admin-token` it makes one, in a file only its user can read, named on stderr."""
    async with server_command("emulator", "--port", "0", "--max-concurrent-calls", "3") as server:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
        token_file = Path((await server.process.error_line("admin token", timeout_s=30)).rsplit(" in ", 1)[1])
        assert os.stat(token_file).st_mode & 0o777 == 0o600
        token = await asyncio.to_thread(token_file.read_text, encoding="utf-8")
        token = token.strip()
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + "/_emulator/stats") as refused:
                assert refused.status == 401
            async with session.get(
                server.url + "/_emulator/stats", headers={"X-OCR-ADMIN-TOKEN": token}
            ) as response:
                stats = await response.json()
            async with session.get(server.url + "/healthz") as health:
                assert health.status == 200  # the container's health check needs no token
        assert stats["domains"]["general"]["max_concurrent_calls"] == 3
    assert server.exit_code == 0
    os.unlink(token_file)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "emulator.internal"])
@pytest.mark.parametrize("command", [emulator_command, engine_command], ids=["emulator", "engine"])
def test_a_default_secret_is_refused_off_loopback(command: click.Command, host: str) -> None:
    """Listening beyond loopback with the well-known default secret is refused, before anything
    starts, with a message that says what to set (exit 2)."""
    result = CliRunner().invoke(command, ["--host", host, "--port", "0"])
    assert result.exit_code == 2
    assert "well-known default" in result.output


async def test_admin_routes_need_the_token(
    start_emulator: StartEmulator, ocr_session: aiohttp.ClientSession
) -> None:
    """Every /_emulator/* route answers 401 without the admin token or with a wrong one."""
    emulator = await start_emulator(admin_token="the-right-token")
    for method, path in [
        ("GET", "/_emulator/stats"),
        ("POST", "/_emulator/reset"),
        ("POST", "/_emulator/hold"),
    ]:
        for headers in ({}, {"X-OCR-ADMIN-TOKEN": "wrong"}):
            async with ocr_session.request(method, emulator.url + path, headers=headers, json={}) as response:
                assert response.status == 401, (method, path, headers)
                assert "X-OCR-ADMIN-TOKEN" in (await response.json())["error"]
    async with ocr_session.get(
        emulator.url + "/_emulator/stats", headers={"X-OCR-ADMIN-TOKEN": "the-right-token"}
    ) as response:
        assert response.status == 200
