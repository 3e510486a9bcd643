"""The compose stack agrees with the code: its settings load, MinIO notifies the real event
endpoint, and the emulator's command is one the emulator accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from fixtures.sealing import SECRET_KEY

from ocrbatch.cli.servers import emulator_command
from ocrbatch.service.access import EVENTS_PATH
from ocrbatch.settings import load_settings

ROOT = Path(__file__).parent.parent


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    return document


def test_the_service_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings file mounted into the ocrbatch service is valid once its secrets are in the env."""
    service = compose()["services"]["ocrbatch"]
    host_file, mounted = service["volumes"][0].split(":")[:2]
    assert service["environment"]["OCRBATCH_CONFIG"] == mounted
    monkeypatch.setenv("OCRBATCH_API__TOKEN", "a-token-for-this-test")
    monkeypatch.setenv("OCRBATCH_STORAGE__SECRET_ACCESS_KEY", "a-password")
    settings = load_settings(ROOT / host_file)
    assert (settings.api.host, settings.api.port) == ("0.0.0.0", 8080)
    assert service["ports"] == [f"{settings.api.port}:{settings.api.port}"]
    assert set(settings.domains) == {"receipts", "forms"}


def test_the_service_is_given_a_key_to_seal_webhook_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose requires OCRBATCH_SECRET_KEY and passes it as the service's `security.secret_key`,
    which its settings then hold."""
    service = compose()["services"]["ocrbatch"]
    assert service["environment"]["OCRBATCH_SECURITY__SECRET_KEY"].startswith("${OCRBATCH_SECRET_KEY:?")
    monkeypatch.setenv("OCRBATCH_STORAGE__SECRET_ACCESS_KEY", "a-password")
    monkeypatch.setenv("OCRBATCH_SECURITY__SECRET_KEY", SECRET_KEY)
    assert load_settings(ROOT / "config" / "ocrbatch.compose.toml").security.secret_keys() == [SECRET_KEY]


def test_minio_notifies_the_event_endpoint() -> None:
    """MinIO's webhook target is the ocrbatch service's event endpoint on its API port."""
    environment = compose()["services"]["minio"]["environment"]
    target = urlsplit(environment["MINIO_NOTIFY_WEBHOOK_ENDPOINT_OCRBATCH"])
    assert (target.hostname, target.port, target.path) == ("ocrbatch", 8080, EVENTS_PATH)
    assert "OCRBATCH_API_TOKEN" in environment["MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_OCRBATCH"]


def test_the_emulator_command_is_accepted_on_the_port_the_domains_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The emulator service's command parses with the emulator's own CLI, on the port in the settings."""
    service = compose()["services"]["emulator"]
    assert service["entrypoint"] == ["ocrbatch", "emulator"]
    context = emulator_command.make_context("emulator", list(service["command"]))
    monkeypatch.setenv("OCRBATCH_STORAGE__SECRET_ACCESS_KEY", "a-password")
    settings = load_settings(ROOT / "config" / "ocrbatch.compose.toml")
    for domain in settings.domains.values():
        url = urlsplit(domain.invoke_url)
        assert (url.hostname, url.port) == ("emulator", context.params["port"])
    assert context.params["host"] == "0.0.0.0"
    # Off loopback the emulator refuses its default secrets: both come from one variable, as the
    # ocrbatch service's domain secrets do.
    emulator_env, ocrbatch_env = service["environment"], compose()["services"]["ocrbatch"]["environment"]
    shared = "${OCRBATCH_OCR_SECRET}"
    assert emulator_env == {
        "OCRBATCH_EMULATOR_GENERAL_SECRET": shared,
        "OCRBATCH_EMULATOR_TEMPLATE_SECRET": shared,
    }
    assert (
        ocrbatch_env["OCRBATCH_DOMAINS__RECEIPTS__SECRET"]
        == ocrbatch_env["OCRBATCH_DOMAINS__FORMS__SECRET"]
        == shared
    )
