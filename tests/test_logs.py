"""Logging: JSON lines with the event's fields, and secrets redacted whatever the key."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from ocrbatch.batches.spec import parse_spec
from ocrbatch.batches.store import BatchStore
from ocrbatch.logs import REDACTED, SecretRedactor, configure_logging

SECRET = "ocr-secret-Zx81"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    yield buffer
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_event_level_time_and_fields(stream: io.StringIO) -> None:
    """Off a TTY the default is one JSON object per line, with level, timestamp and the bound fields."""
    configure_logging(stream=stream)
    structlog.get_logger().info("item.done", batch_id="b1", key="scans/영수증.png")
    (line,) = lines(stream)
    assert line["event"] == "item.done"
    assert line["level"] == "info"
    assert line["batch_id"] == "b1"
    assert line["key"] == "scans/영수증.png"
    assert "timestamp" in line


def test_level_filters(stream: io.StringIO) -> None:
    """Events below the configured level are dropped."""
    configure_logging(stream=stream, level="warning")
    structlog.get_logger().info("quiet")
    structlog.get_logger().warning("loud")
    assert [line["event"] for line in lines(stream)] == ["loud"]


def test_known_secret_values_are_redacted_anywhere(stream: io.StringIO) -> None:
    """A registered secret is masked in messages, nested values, lists and exception text."""
    configure_logging(stream=stream).add([SECRET])
    log = structlog.get_logger()
    log.info(f"calling with {SECRET}", detail={"header": f"X-OCR-SECRET: {SECRET}"}, items=[SECRET])
    try:
        raise RuntimeError(f"upstream said {SECRET}")
    except RuntimeError:
        log.exception("call.failed")
    output = stream.getvalue()
    assert SECRET not in output
    assert output.count(REDACTED) >= 4


def test_secret_named_keys_are_redacted(stream: io.StringIO) -> None:
    """Values under keys that name a secret are masked even when the value was never registered."""
    configure_logging(stream=stream)
    structlog.get_logger().info(
        "x", token="t-1", secret_access_key="k-2", headers={"Authorization": "Bearer b-3"}, has_secret=True
    )
    (line,) = lines(stream)
    assert line["token"] == REDACTED
    assert line["secret_access_key"] == REDACTED
    assert line["headers"] == {"Authorization": REDACTED}
    assert line["has_secret"] is True


def test_tracebacks_do_not_dump_local_variables(stream: io.StringIO) -> None:
    """Exception rendering leaves frame locals out, where unregistered secrets could sit."""
    configure_logging(stream=stream)
    local_secret = "unregistered-local-value"  # noqa: F841  (the point: it must not be rendered)
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger().exception("failed")
    assert "unregistered-local-value" not in stream.getvalue()


def test_short_values_are_not_treated_as_secrets() -> None:
    """Values under four characters are ignored, so ordinary words are not redacted."""
    redactor = SecretRedactor(["ab", "abcd"])
    assert redactor(None, "info", {"event": "ab abcd"}) == {"event": f"ab {REDACTED}"}


async def test_webhook_secrets_of_batches_are_learned_when_written_and_when_read(
    stream: io.StringIO, store: BatchStore
) -> None:
    """Once a process has written or read a batch document, its webhook secret and a password in
    its webhook URL are masked in every log line of that process, whatever the key."""
    configure_logging(stream=stream)
    spec = {
        "name": "hooks",
        "domain": "gen",
        "input_path": "s3://data/hooks/in",
        "result_path": "s3://data/hooks/out",
        "webhook": {"url": "https://hook-user:url-PASSWORD-61@hooks.example/in", "secret": "whsec-WRITTEN-1"},
    }
    created = await store.create(parse_spec(spec))
    configure_logging(stream=stream)  # a new process's redactor: it learns by reading
    await store.get(created.batch.id)
    structlog.get_logger().info("oops", note="whsec-WRITTEN-1 sent to url-PASSWORD-61")
    assert "whsec-WRITTEN-1" not in stream.getvalue()
    assert "url-PASSWORD-61" not in stream.getvalue()
