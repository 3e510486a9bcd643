"""`ocrbatch emulator` and `ocrbatch engine`: the CLOVA-compatible emulator, and the local OCR engine
behind the same server, each run until it is stopped.

Both take the same options for where to listen and how a domain is limited (`_serving_options`),
handed to the command as one `Serving` value; each command says in its own words in `--help` what
the limits apply to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from pydantic import BaseModel, SecretStr, ValidationError

from ocrbatch.cli.tokens import write_token_file
from ocrbatch.emulator.faults import FaultSettings
from ocrbatch.emulator.server import Emulator
from ocrbatch.emulator.settings import EmulatorSettings
from ocrbatch.engine.tesseract import EngineUnavailable, TesseractSettings, cpu_cores
from ocrbatch.errors import validation_problems

ENGINE_DEFAULT_SECRET = "engine-general-secret"  # noqa: S105 - the well-known default, refused off loopback

# A decorator adding options to a command's function, as click.option is.
Options = Callable[[Callable[..., None]], Callable[..., None]]
M = TypeVar("M", bound=BaseModel)
_RATE = click.FloatRange(0, 1)


@dataclasses.dataclass(frozen=True)
class Serving:
    """The values of the options both servers take: where to listen, and the limits of a domain."""

    host: str
    port: int
    admin_token: str | None
    max_concurrent_calls: int
    calls_per_second: float | None
    quota: int | None

    def settings(self, **fields: object) -> EmulatorSettings:
        """The server's settings: these values and the command's own `fields`. A secret left at
        its well-known default is refused on any address but loopback."""
        values = dataclasses.asdict(self)
        token = values.pop("admin_token")
        settings = _validated(
            EmulatorSettings, **values, admin_token=SecretStr(token) if token else None, **fields
        )
        defaults = EmulatorSettings()
        kept = [
            flag
            for flag, secret, default in (
                ("the General secret", settings.general_secret, defaults.general_secret),
                ("the Template secret", settings.template_secret, defaults.template_secret),
            )
            if secret.get_secret_value() in (default.get_secret_value(), ENGINE_DEFAULT_SECRET)
            and (flag != "the Template secret" or settings.engine == "synthetic")  # the engine has none
        ]
        if kept and not _is_loopback(settings.host):
            raise click.UsageError(
                f"{' and '.join(kept)} {'is' if len(kept) == 1 else 'are'} still the well-known default: "
                f"on {settings.host}, anyone "
                "who can reach the port could use it; set your own (--secret / --general-secret, or "
                "the environment variable) or listen on 127.0.0.1"
            )
        return settings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def _serving_options(*secrets: Options, cap_help: str, rate_help: str, quota_help: str) -> Options:
    """The options both servers take, in the order `--help` lists them: where to listen, the
    `secrets` options, then the limits; the command gets them as `serving`, secrets as they are."""
    options: list[Options] = [
        click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on."),
        click.option(
            "--port", default=0, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port."
        ),
        click.option(
            "--admin-token",
            envvar="OCRBATCH_EMULATOR_ADMIN_TOKEN",
            help="X-OCR-ADMIN-TOKEN the /_emulator/* routes need (also OCRBATCH_EMULATOR_ADMIN_TOKEN); "
            "default: a random one, written to a file readable by you alone (its path goes to stderr).",
        ),
        *secrets,
        click.option(
            "--max-concurrent-calls", default=5, show_default=True, type=click.IntRange(min=1), help=cap_help
        ),
        click.option("--calls-per-second", type=click.FloatRange(min=0, min_open=True), help=rate_help),
        click.option("--quota", type=click.IntRange(min=0), help=quota_help),
    ]

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)
        def with_serving(**values: Any) -> None:  # Any: click passes each option's converted value
            serving = Serving(**{field.name: values.pop(field.name) for field in dataclasses.fields(Serving)})
            command(serving=serving, **values)

        decorated: Callable[..., None] = with_serving
        for option in reversed(options):  # click lists options in the order their decorators read
            decorated = option(decorated)
        return decorated

    return decorate


def _secret_option(flag: str, *, envvar: str, default: str, whose: str, refused: str = "") -> Options:
    """An X-OCR-SECRET option, also read from `envvar` (so that it need not be on a command line)."""
    return click.option(
        flag,
        envvar=envvar,
        default=default,
        show_default=True,
        help=f"X-OCR-SECRET {whose} (also {envvar}){refused}.",
    )


def _rate_option(flag: str, text: str) -> Options:
    """A fault rate: a share of calls, from 0 to 1 (together at most 1, as `FaultSettings` checks)."""
    return click.option(flag, default=0.0, show_default=True, type=_RATE, help=text)


def _template_ids(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        ids = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter("a comma-separated list of integers, e.g. 101,102") from None
    return ids


def _validated(model: type[M], **fields: object) -> M:
    """The settings, or a usage error (exit code 2) in the settings' own words."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        problems = validation_problems(exc, unknown_key="is not an option")
        raise click.UsageError(
            "; ".join(f"{key}: {rule}" if key else rule for key, rule in problems)
        ) from None


@click.command("emulator")
@_serving_options(
    _secret_option(
        "--general-secret",
        envvar="OCRBATCH_EMULATOR_GENERAL_SECRET",
        default="emulator-general-secret",
        whose="of the General domain",
        refused="; others get 0002",
    ),
    _secret_option(
        "--template-secret",
        envvar="OCRBATCH_EMULATOR_TEMPLATE_SECRET",
        default="emulator-template-secret",
        whose="of the Template domain",
    ),
    cap_help="Limit: calls in flight per domain; the excess is answered 0025.",
    rate_help="Limit: calls admitted per domain in any one second; the excess is answered 0025.",
    quota_help="Limit: calls admitted per domain in all; after that, 0023.",
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
@_rate_option("--error-rate", "Fault: share of calls answered 0500/0501.")
@_rate_option(
    "--rate-limit-rate",
    "Fault: share of admitted calls answered 0025 anyway (as if another client used the cap).",
)
@_rate_option("--http-error-rate", "Fault: share of calls answered a bare 502/503/504 without a CLOVA body.")
@_rate_option("--drop-rate", "Fault: share of connections dropped unanswered.")
@_rate_option("--failure-rate", "Fault: share of images answered FAILURE.")
@_rate_option("--error-result-rate", "Fault: share of images answered ERROR.")
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=int,
    help="Seed of the fault generator (same seed, same faults).",
)
def emulator_command(
    *,
    serving: Serving,
    general_secret: str,
    template_secret: str,
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
    faults = _validated(
        FaultSettings,
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
    settings = serving.settings(
        general_secret=SecretStr(general_secret),
        template_secret=SecretStr(template_secret),
        table_extraction=table_extraction,
        template_ids=template_ids,
        faults=faults,
    )
    asyncio.run(serve_emulator(settings))


@click.command("engine")
@_serving_options(
    _secret_option(
        "--secret",
        envvar="OCRBATCH_ENGINE_SECRET",
        default=ENGINE_DEFAULT_SECRET,
        whose="callers must send",
        refused="; others get 0002",
    ),
    cap_help="Calls in flight; the excess is answered 0025, as the service does.",
    rate_help="Calls admitted in any one second; the excess is answered 0025.",
    quota_help="Calls admitted in all; after that, 0023.",
)
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
    serving: Serving,
    secret: str,
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
    tesseract = _validated(
        TesseractSettings,
        command=command,
        processes=processes,
        timeout_s=timeout_s,
        page_segmentation_mode=psm,
    )
    settings = serving.settings(general_secret=SecretStr(secret), engine="tesseract", tesseract=tesseract)
    try:
        asyncio.run(serve_emulator(settings))
    except EngineUnavailable as exc:
        raise click.ClickException(str(exc)) from None


async def serve_emulator(settings: EmulatorSettings) -> None:
    """Start, print the URL and then the routes with what recognises, and run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Emulator(settings) as emulator:
        sys.stdout.write(f"{emulator.url}\n{emulator.banner()}\n")
        sys.stdout.flush()
        if settings.admin_token is None:
            token_file = write_token_file(
                emulator.admin_token.get_secret_value(), prefix="ocrbatch-emulator-"
            )
            sys.stderr.write(f"admin token (X-OCR-ADMIN-TOKEN for /_emulator/*) in {token_file}\n")
        for warning in emulator.recogniser.warnings():
            sys.stderr.write(f"{warning}\n")
        await stop.wait()
