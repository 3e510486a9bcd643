"""`ocrbatch engine`: the local OCR engine (Tesseract) served behind the CLOVA General contract."""

from __future__ import annotations

import asyncio

import click
from pydantic import SecretStr

from ocrbatch.cli.servers import serve_emulator
from ocrbatch.emulator.server import EmulatorSettings
from ocrbatch.engine.tesseract import EngineUnavailable, TesseractSettings, cpu_cores


@click.command("engine")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=0, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port."
)
@click.option(
    "--secret",
    envvar="OCRBATCH_ENGINE_SECRET",
    default="engine-general-secret",
    show_default=True,
    help="X-OCR-SECRET callers must send (also OCRBATCH_ENGINE_SECRET); others get 0002.",
)
@click.option(
    "--max-concurrent-calls",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    help="Calls in flight; the excess is answered 0025, as the service does.",
)
@click.option(
    "--calls-per-second",
    type=click.FloatRange(min=0, min_open=True),
    help="Calls admitted in any one second; the excess is answered 0025.",
)
@click.option("--quota", type=click.IntRange(min=0), help="Calls admitted in all; after that, 0023.")
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    help=f"Tesseract processes at once (default: one per CPU core, {cpu_cores()} here).",
)
@click.option(
    "--tesseract", "command", default="tesseract", show_default=True, help="The tesseract executable."
)
@click.option(
    "--timeout-s",
    default=300.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Longest recognition of one page; a page taking longer is answered ERROR (retryable).",
)
@click.option(
    "--psm",
    default=4,
    show_default=True,
    type=click.IntRange(1, 13),
    help="Tesseract's page segmentation mode (4: one column of text of variable sizes).",
)
def engine_command(
    *,
    host: str,
    port: int,
    secret: str,
    max_concurrent_calls: int,
    calls_per_second: float | None,
    quota: int | None,
    processes: int | None,
    command: str,
    timeout_s: float,
    psm: int,
) -> None:
    """Run the local OCR engine: Tesseract behind the CLOVA General OCR contract.

    It serves POST /general (also /custom/v1/1001/<any>/general) with real recognition in Korean,
    Japanese, Traditional Chinese and English (the request's lang), one field per word. It checks
    secret, body and version, and applies the cap, rate and quota as `ocrbatch emulator` does.
    It detects no tables (requests asking for them get 0028) and serves no Template domain (the
    /infer route answers 0022). The first line printed is the URL it listens on.
    """
    settings = EmulatorSettings(
        host=host,
        port=port,
        general_secret=SecretStr(secret),
        max_concurrent_calls=max_concurrent_calls,
        calls_per_second=calls_per_second,
        quota=quota,
        engine="tesseract",
        tesseract=TesseractSettings(
            command=command, processes=processes, timeout_s=timeout_s, page_segmentation_mode=psm
        ),
    )
    try:
        asyncio.run(serve_emulator(settings))
    except EngineUnavailable as exc:
        raise click.ClickException(str(exc)) from None
