"""Settings: TOML plus OCRBATCH_* environment, secrets from files, one clear message per bad setting."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from ocrbatch.errors import ConfigError
from ocrbatch.settings import Settings, load_settings

EXAMPLE = Path(__file__).parent.parent / "config" / "ocrbatch.toml"

MINIMAL = """
[domains.receipts]
kind = "general"
invoke_url = "http://127.0.0.1:9/general"
secret = "file-secret-value"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "ocrbatch.toml"
    path.write_text(MINIMAL)
    return path


def test_defaults_without_a_file() -> None:
    """With no file and no environment, every setting has its documented default."""
    settings = load_settings(None)
    assert settings.domains == {}
    assert settings.webhook.chunk_size == 1000
    assert settings.webhook.idle_flush_s == 60.0
    assert settings.api.host == "127.0.0.1"


def test_environment_overrides_the_file(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OCRBATCH_* variables override the file, nested keys joined by '__', domain keys merged."""
    monkeypatch.setenv("OCRBATCH_DOMAINS__RECEIPTS__MAX_CONCURRENT_CALLS", "3")
    monkeypatch.setenv("OCRBATCH_WORKER__POLL_INTERVAL_S", "2.5")
    settings = load_settings(config_file)
    assert settings.domains["receipts"].max_concurrent_calls == 3
    assert settings.domains["receipts"].secret.get_secret_value() == "file-secret-value"
    assert settings.worker.poll_interval_s == 2.5


def test_secrets_are_read_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `_file` key (in TOML or environment) reads the secret from that file, without its newline."""
    (tmp_path / "ocr").write_text("from-a-file\n")
    (tmp_path / "token").write_text("api-token-value\n")
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL.replace('secret = "file-secret-value"', f'secret_file = "{tmp_path / "ocr"}"'))
    monkeypatch.setenv("OCRBATCH_API__TOKEN_FILE", str(tmp_path / "token"))
    settings = load_settings(path)
    assert settings.domains["receipts"].secret.get_secret_value() == "from-a-file"
    assert settings.api.token is not None
    assert settings.api.token.get_secret_value() == "api-token-value"


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        (
            "",
            {"OCRBATCH_DOMAINS__RECEIPTS__MAX_CONCURRENT_CALLS": "0"},
            "domains.receipts.max_concurrent_calls:",
        ),
        ("", {"OCRBATCH_DOMAINS__RECEIPTS__TRANSFER_MODE": "ftp"}, "domains.receipts.transfer_mode:"),
        ("", {"OCRBATCH_WORKER__POLL_INTERVAL_S": "soon"}, "worker.poll_interval_s:"),
        ("", {"OCRBATCH_WORKER__NOPE": "1"}, "worker.nope: is not a known setting"),
        (
            "[domains.Bad]\nkind='general'\ninvoke_url='http://x'\nsecret='s'\n",
            {},
            "domain name 'Bad' must be",
        ),
        (
            "[domains.t]\nkind='template'\ninvoke_url='http://x'\nsecret='s'\ntable_extraction=true\n",
            {},
            "domains.t: table_extraction is only available on general domains",
        ),
        (
            "[domains.t]\nkind='general'\ninvoke_url='ftp://x'\nsecret='s'\n",
            {},
            "domains.t.invoke_url: must be an http:// or https:// URL",
        ),
        (
            "[storage]\nendpoint_url='127.0.0.1:9000'\n",
            {},
            "storage.endpoint_url: must be an http:// or https:// URL",
        ),
        ("[domains.t]\nkind='general'\ninvoke_url='http://x'\n", {}, "domains.t.secret: is required"),
        ("[storage]\naccess_key_id='a'\n", {}, "storage: set both access_key_id and secret_access_key"),
        ("[storage]\ncontrol_path='gs://x/y'\n", {}, "storage.control_path: must be s3://bucket/prefix"),
        ("[worker]\nbackoff_initial_s=10\nbackoff_max_s=1\n", {}, "worker: backoff_max_s must be at least"),
        ("[webhook]\nchunk_size=1001\n", {}, "webhook.chunk_size:"),
        (
            "[domains.t]\nkind='general'\ninvoke_url='http://x'\nsecret_file='/does/not/exist'\n",
            {},
            "secret_file: cannot read /does/not/exist",
        ),
        (
            "[domains.t]\nkind='general'\ninvoke_url='http://x'\nsecret='a'\nsecret_file='/x'\n",
            {},
            "set either secret or secret_file, not both",
        ),
    ],
)
def test_bad_settings_stop_with_one_message_naming_key_and_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, env: dict[str, str], expected: str
) -> None:
    """Each bad setting raises ConfigError whose single-line message names the key and the rule."""
    path = tmp_path / "c.toml"
    path.write_text(toml or MINIMAL)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert message.startswith("invalid setting: ")
    assert expected in message
    assert "\n" not in message


def test_unreadable_and_malformed_files_are_clear(tmp_path: Path) -> None:
    """A missing file or broken TOML is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[storage\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings(broken)


def test_a_bad_secret_is_never_echoed(tmp_path: Path) -> None:
    """Validation messages leave input values out, so a mistyped secret never reaches the output."""
    path = tmp_path / "c.toml"
    path.write_text("[domains.t]\nkind='general'\ninvoke_url='http://x'\nsecret=['SUPER-SECRET-123']\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "domains.t.secret" in str(caught.value)
    assert "SUPER-SECRET-123" not in str(caught.value)


def test_masked_settings_hide_every_secret(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The masked dump (what `config check` prints) hides every secret; secret_values finds them all."""
    monkeypatch.setenv("OCRBATCH_STORAGE__ACCESS_KEY_ID", "AKIA-EXAMPLE")
    monkeypatch.setenv("OCRBATCH_STORAGE__SECRET_ACCESS_KEY", "storage-secret-value")
    monkeypatch.setenv("OCRBATCH_API__TOKEN", "api-token-value")
    settings = load_settings(config_file)
    dumped = str(settings.masked())
    for secret in ("file-secret-value", "storage-secret-value", "api-token-value", "AKIA-EXAMPLE"):
        assert secret not in dumped
        assert secret in settings.secret_values()


def _leaf_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= _leaf_keys(annotation, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def test_example_config_loads_and_documents_every_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config/ocrbatch.toml is valid and mentions every setting, so it stays a complete reference."""
    text = EXAMPLE.read_text()
    for secret_file in ("s3-secret-key", "ocr-receipts", "ocr-forms"):
        (tmp_path / secret_file).write_text("x-secret")
    load_settings_text = text.replace("/run/secrets/", f"{tmp_path}/")
    example = tmp_path / "example.toml"
    example.write_text(load_settings_text)
    settings = load_settings(example)
    assert set(settings.domains) == {"receipts", "forms"}
    tomllib.loads(text)
    from ocrbatch.settings import DomainSettings

    documented = {key for key in _leaf_keys(Settings) if not key.startswith("domains")}
    documented |= {f"domains.x.{name}" for name in DomainSettings.model_fields}
    for key in sorted(documented):
        leaf = key.rsplit(".", 1)[-1]
        assert leaf in text, f"config/ocrbatch.toml does not document {key}"
