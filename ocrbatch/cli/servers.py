"""`ocrbatch emulator` and `ocrbatch engine`: the CLOVA-compatible emulator, and the local OCR engine
behind the same server, each run until it is stopped."""

from __future__ import annotations

import asyncio
import signal
import sys

import click
from pydantic import SecretStr

from ocrbatch.emulator.faults import FaultSettings
from ocrbatch.emulator.server import Emulator, EmulatorSettings
from ocrbatch.engine.tesseract import EngineUnavailable, TesseractSettings, cpu_cores, missing_languages

_RATE = click.FloatRange(0, 1)


def _template_ids(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        ids = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter("a comma-separated list of integers, e.g. 101,102") from None
    return ids


@click.command("emulator")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=0, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port."
)
@click.option(
    "--general-secret",
    envvar="OCRBATCH_EMULATOR_GENERAL_SECRET",
    default="emulator-general-secret",
    show_default=True,
    help="X-OCR-SECRET of the General domain (also OCRBATCH_EMULATOR_GENERAL_SECRET); others get 0002.",
)
@click.option(
    "--template-secret",
    envvar="OCRBATCH_EMULATOR_TEMPLATE_SECRET",
    default="emulator-template-secret",
    show_default=True,
    help="X-OCR-SECRET of the Template domain (also OCRBATCH_EMULATOR_TEMPLATE_SECRET).",
)
@click.option(
    "--max-concurrent-calls",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    help="Limit: calls in flight per domain; the excess is answered 0025.",
)
@click.option(
    "--calls-per-second",
    type=click.FloatRange(min=0, min_open=True),
    help="Limit: calls admitted per domain in any one second; the excess is answered 0025.",
)
@click.option(
    "--quota", type=click.IntRange(min=0), help="Limit: calls admitted per domain in all; after that, 0023."
)
@click.option(
    "--table-extraction/--no-table-extraction",
    default=True,
    show_default=True,
    help="The General domain's table switch; when off, enableTableDetection is answered 0028.",
)
@click.option(
    "--template-ids",
    default="101,102",
    show_default=True,
    callback=_template_ids,
    help="Deployed template ids of the Template domain; asking for another is answered 1021.",
)
@click.option(
    "--latency-ms", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Fault: mean latency."
)
@click.option(
    "--latency-jitter-ms",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Fault: latency spread; each call takes latency +/- jitter (uniform).",
)
@click.option(
    "--error-rate",
    default=0.0,
    show_default=True,
    type=_RATE,
    help="Fault: share of calls answered 0500/0501.",
)
@click.option(
    "--rate-limit-rate",
    default=0.0,
    show_default=True,
    type=_RATE,
    help="Fault: share of admitted calls answered 0025 anyway (as if another client used the cap).",
)
@click.option(
    "--http-error-rate",
    default=0.0,
    show_default=True,
    type=_RATE,
    help="Fault: share of calls answered a bare 502/503/504 without a CLOVA body.",
)
@click.option(
    "--drop-rate",
    default=0.0,
    show_default=True,
    type=_RATE,
    help="Fault: share of connections dropped unanswered.",
)
@click.option(
    "--failure-rate",
    default=0.0,
    show_default=True,
    type=_RATE,
    help="Fault: share of images answered FAILURE.",
)
@click.option(
    "--error-result-rate",
    default=0.0,
    show_default=True,
    type=_RATE,
    help="Fault: share of images answered ERROR.",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=int,
    help="Seed of the fault generator (same seed, same faults).",
)
def emulator_command(
    *,
    host: str,
    port: int,
    general_secret: str,
    template_secret: str,
    max_concurrent_calls: int,
    calls_per_second: float | None,
    quota: int | None,
    table_extraction: bool,
    template_ids: tuple[int, ...],
    latency_ms: float,
    latency_jitter_ms: float,
    error_rate: float,
    rate_limit_rate: float,
    http_error_rate: float,
    drop_rate: float,
    failure_rate: float,
    error_result_rate: float,
    seed: int,
) -> None:
    """Run a CLOVA OCR compatible emulator with limits and fault injection.

    It serves POST /general (General domain) and POST /infer (Template domain), also as
    /custom/v1/1001/<any>/general and /custom/v1/1002/<any>/infer. Fault rates add up per call.
    Statistics: GET /_emulator/stats; POST /_emulator/reset clears them; POST /_emulator/script
    queues scripted faults, POST /_emulator/faults changes rates, POST /_emulator/hold holds calls.
    The first line printed is the URL it listens on.
    """
    try:
        faults = FaultSettings(
            latency_ms=latency_ms,
            latency_jitter_ms=latency_jitter_ms,
            error_rate=error_rate,
            rate_limit_rate=rate_limit_rate,
            http_error_rate=http_error_rate,
            drop_rate=drop_rate,
            failure_rate=failure_rate,
            error_result_rate=error_result_rate,
            seed=seed,
        )
    except ValueError as exc:
        raise click.UsageError(" ".join(str(exc).split())) from None
    if sum((error_rate, rate_limit_rate, http_error_rate, drop_rate, failure_rate, error_result_rate)) > 1:
        raise click.UsageError("the fault rates add up to more than 1")
    settings = EmulatorSettings(
        host=host,
        port=port,
        general_secret=SecretStr(general_secret),
        template_secret=SecretStr(template_secret),
        max_concurrent_calls=max_concurrent_calls,
        calls_per_second=calls_per_second,
        quota=quota,
        table_extraction=table_extraction,
        template_ids=template_ids,
        faults=faults,
    )
    asyncio.run(serve_emulator(settings))


async def serve_emulator(settings: EmulatorSettings) -> None:
    """Start, print the URL, and run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Emulator(settings) as emulator:
        sys.stdout.write(f"{emulator.url}\n")
        if emulator.engine is None:
            sys.stdout.write(f"general: {emulator.url}/general  template: {emulator.url}/infer\n")
        else:
            engine = emulator.engine.install
            sys.stdout.write(
                f"general: {emulator.url}/general  ({engine.version}, {emulator.engine.processes} "
                f"processes, languages: {', '.join(sorted(engine.languages))})\n"
            )
            missing = missing_languages(engine.languages)
            if missing:
                sys.stderr.write(f"no Tesseract data for {', '.join(missing)}: such requests fail\n")
        sys.stdout.flush()
        await stop.wait()


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
