"""The command line's settings, run through the real entry point: `config check`, an invalid
setting, and secrets that never reach its output or logs."""

from __future__ import annotations

import json

import pytest
from fixtures.cli import CREATE_RECEIPTS, OCR_SECRET, Cli

from ocrbatch.cli.root import EXIT_BAD_INPUT, EXIT_FAILURE


def test_config_check_prints_masked_settings(cli: Cli) -> None:
    """config check prints the effective settings as JSON with every secret masked, and what the
    control path's store was probed to do (a local directory: conditional writes and metadata)."""
    out, err = cli("config", "check")
    printed = json.loads(out)
    assert printed["settings"]["domains"]["receipts"]["secret"] == "**********"
    (local,) = printed["capabilities"]["storage"]
    assert (local["endpoint"], local["conditional_writes"], local["user_metadata"]) == ("local", True, True)
    assert printed["capabilities"]["coordination"]["backend"] == "storage"
    assert "storage local: listing walk, conditional writes yes (probe), user metadata yes" in err
    assert OCR_SECRET not in out + err
    assert "settings are valid" in err


def test_bad_config_exits_2_naming_the_key(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """An invalid setting stops every command with one message naming the key and the rule."""
    monkeypatch.setenv("OCRBATCH_DOMAINS__RECEIPTS__MAX_CONCURRENT_CALLS", "-1")
    _, err = cli("batch", "list", expect=EXIT_BAD_INPUT)
    assert err.startswith("error: invalid setting: domains.receipts.max_concurrent_calls:")


def test_a_known_secret_appears_nowhere(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets from settings, files and webhooks never reach stdout, stderr or logs, errors included."""
    secrets = {
        "ocr": OCR_SECRET,
        "storage": "storage-SECRET-88c2",
        "token": "api-SECRET-token-5d1e",
        "webhook": "whsec-SECRET-31b7",
    }
    (cli.workdir / "storage-secret").write_text(secrets["storage"] + "\n")
    (cli.workdir / "webhook-secret").write_text(secrets["webhook"] + "\n")
    monkeypatch.setenv("OCRBATCH_STORAGE__ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("OCRBATCH_STORAGE__SECRET_ACCESS_KEY_FILE", str(cli.workdir / "storage-secret"))
    monkeypatch.setenv("OCRBATCH_API__TOKEN", secrets["token"])
    monkeypatch.setenv("OCRBATCH_LOGGING__LEVEL", "debug")
    cli("config", "check")
    cli(*CREATE_RECEIPTS, "--webhook-url", "http://h/x", "--webhook-secret-file", "webhook-secret")
    cli("batch", "show", "영수증")
    cli("batch", "list", "--json")
    cli("batch", "edit", "영수증", "--pause")
    cli(
        "batch",
        "create",
        "--name",
        "x",
        "--domain",
        "receipts",
        "--input",
        "a",
        "--result",
        "b",
        "--webhook-url",
        "http://h/y",
        "--webhook-secret-file",
        "webhook-secret",
        expect=EXIT_BAD_INPUT,
    )
    # An unreachable S3 endpoint: the storage error must not carry the credentials either.
    monkeypatch.setenv("OCRBATCH_STORAGE__ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("OCRBATCH_STORAGE__CONTROL_PATH", "s3://some-bucket/ctl")
    monkeypatch.setenv("OCRBATCH_STORAGE__CONNECT_TIMEOUT_S", "0.5")
    monkeypatch.setenv("OCRBATCH_STORAGE__MAX_ATTEMPTS", "1")
    cli("batch", "list", expect=EXIT_FAILURE)
    # A secret put where a number belongs: the validation error must not echo it.
    monkeypatch.setenv("OCRBATCH_WORKER__MAX_ATTEMPTS", secrets["token"])
    cli("batch", "list", expect=EXIT_BAD_INPUT)
    everything = "".join(cli.outputs)
    assert "batch.created" in everything  # the logs were captured too
    for name, secret in secrets.items():
        assert secret not in everything, f"the {name} secret leaked"


def test_an_environment_variable_that_is_not_json_is_one_line_without_its_value(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OCRBATCH_DOMAINS that is not the JSON the field needs: one error line naming the field, no
    traceback, and nothing of the value (it may hold an OCR secret); exit 2."""
    monkeypatch.setenv("OCRBATCH_DOMAINS", '{"receipts": {"secret": "TOPSECRET"')
    out, err = cli("config", "check", expect=EXIT_BAD_INPUT)
    assert err.count("\n") == 1
    assert 'field "domains"' in err
    assert "Traceback" not in err
    assert "TOPSECRET" not in out + err
