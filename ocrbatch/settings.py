"""Settings: a TOML file plus `OCRBATCH_*` environment variables, validated once at start-up.

Environment variables override the file; nested keys use `__`
(`OCRBATCH_DOMAINS__RECEIPTS__MAX_CONCURRENT_CALLS=3`). Every secret may instead be read from a
file by adding `_file` to its key (`secret_file = "/run/secrets/ocr"`,
`OCRBATCH_DOMAINS__RECEIPTS__SECRET_FILE=...`). A bad setting raises `ConfigError` with one
message naming each bad key and its rule, and never the value.
"""

from __future__ import annotations

import binascii
import re
import tomllib
from base64 import urlsafe_b64decode
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from ocrbatch.errors import ConfigError, validation_problems
from ocrbatch.locations import Location
from ocrbatch.types import DomainKind, Language

DOMAIN_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


_HTTP_URL_RE = re.compile(r"^https?://[^/\s?#]+[^\s]*$")


def check_http_url(value: str) -> str:
    """The value if it is an absolute http:// or https:// URL; ValueError otherwise."""
    if not _HTTP_URL_RE.fullmatch(value):
        raise ValueError("must be an http:// or https:// URL")
    return value


def read_secret_files(cls: type[BaseModel], data: Any) -> Any:
    """Replace `<secret>_file` keys by the file's content, for every SecretStr field of `cls`."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for name, info in cls.model_fields.items():
        annotation = str(info.annotation)
        file_key = f"{name}_file"
        if "SecretStr" not in annotation or file_key not in data:
            continue
        if data.get(name) is not None:
            raise ValueError(f"set either {name} or {file_key}, not both")
        path = Path(str(data.pop(file_key)))
        try:
            data[name] = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"{file_key}: cannot read {path}: {exc.strerror}") from None
    return data


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        return read_secret_files(cls, data)


class StorageSettings(_Section):
    """How to reach S3-compatible storage, and where control documents (batches) live."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=20)
    max_pool_connections: int = Field(default=64, ge=1, le=1024)
    control_path: str = "var/ocrbatch"
    # What the store can do: probed once per endpoint ("auto"), or stated by the operator.
    list_api: Literal["auto", "v2", "v1"] = "auto"
    conditional_writes: Literal["auto", "yes", "no"] = "auto"

    @field_validator("endpoint_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return value if value is None else check_http_url(value)

    @field_validator("control_path")
    @classmethod
    def _location(cls, value: str) -> str:
        Location.parse(value)
        return value

    @model_validator(mode="after")
    def _both_keys(self) -> StorageSettings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both access_key_id and secret_access_key, or neither")
        return self


class CoordinationSettings(_Section):
    """Where compare-and-swap happens: the control storage's conditional writes, or Redis.

    With `redis`, each domain's `max_concurrent_calls` and `calls_per_second` are totals shared by
    every replica; with `storage`, each replica applies them on its own.
    """

    backend: Literal["storage", "redis"] = "storage"
    url: SecretStr | None = None  # redis://[user:password@]host:6379/0 (may hold a password)
    key_prefix: str = Field(default="ocrbatch:", min_length=1, max_length=64)
    slot_lease_s: float = Field(default=30.0, ge=1)
    single_writer_settle_s: float = Field(default=2.0, ge=0)

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.match(r"^(redis|rediss|unix)://", value.get_secret_value()):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _url_for_redis(self) -> CoordinationSettings:
        if self.backend == "redis" and self.url is None:
            raise ValueError('backend = "redis" needs url (or url_file)')
        return self


class DomainSettings(_Section):
    """One CLOVA OCR endpoint and its limits."""

    kind: DomainKind
    invoke_url: str
    secret: SecretStr
    max_concurrent_calls: int = Field(default=5, ge=1, le=1000)
    calls_per_second: float | None = Field(default=None, gt=0)
    transfer_mode: Literal["data", "multipart", "url"] = "data"
    table_extraction: bool = False
    default_language: Language | None = None
    request_timeout_s: float = Field(default=120.0, gt=0)
    webhook_secret: SecretStr | None = None

    @field_validator("invoke_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_http_url(value)

    @field_validator("secret")
    @classmethod
    def _non_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _general_only_options(self) -> DomainSettings:
        if self.kind == "template" and self.table_extraction:
            raise ValueError("table_extraction is only available on general domains")
        if self.kind == "template" and self.default_language is not None:
            raise ValueError("default_language is only available on general domains")
        return self


DEFAULT_MAX_PAGES_PER_DOCUMENT = 2000  # as the public OCR services' asynchronous limits


class WorkerSettings(_Section):
    """Timings and budgets of the batch worker."""

    poll_interval_s: float = Field(default=30.0, gt=0)
    progress_interval_s: float = Field(default=5.0, gt=0)
    report_interval_s: float = Field(default=10.0, gt=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    max_attempts: int = Field(default=5, ge=1, le=50)
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    quota_pause_s: float = Field(default=300.0, gt=0)
    prefetch_memory_mb: int = Field(default=256, ge=16)
    claim_ttl_s: float = Field(default=120.0, ge=5)
    # Pages (PDF) or frames (TIFF) of one input; a longer one gets a failure record, and no call.
    max_pages_per_document: int = Field(default=DEFAULT_MAX_PAGES_PER_DOCUMENT, ge=1)
    # Reading the batch catalog while the control storage fails: retried with backoff, until it
    # answers (`serve`, `run`), or `control_max_attempts` times (`run --once`, then exit 1).
    control_backoff_initial_s: float = Field(default=1.0, gt=0)
    control_backoff_max_s: float = Field(default=30.0, gt=0)
    control_max_attempts: int = Field(default=8, ge=1, le=100)

    @model_validator(mode="after")
    def _backoff_order(self) -> WorkerSettings:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be at least backoff_initial_s")
        if self.control_backoff_max_s < self.control_backoff_initial_s:
            raise ValueError("control_backoff_max_s must be at least control_backoff_initial_s")
        return self


class WebhookSettings(_Section):
    """Webhook chunking and delivery."""

    chunk_size: int = Field(default=1000, ge=1, le=1000)
    idle_flush_s: float = Field(default=60.0, gt=0)
    request_timeout_s: float = Field(default=15.0, gt=0)
    max_attempts: int = Field(default=10, ge=1, le=100)
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=300.0, gt=0)
    # Networks webhooks (and SNS confirmations) may reach besides public addresses, in CIDR form:
    # loopback, private, link-local, CGNAT and multicast addresses are refused unless listed here.
    allow_networks: list[IPvAnyNetwork] = []


class SqsSettings(_Section):
    """The SQS queue receiving the input bucket's upload notifications (unset: no consumer).

    Credentials and region default to the storage's; `endpoint_url` to AWS.
    """

    queue_url: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    wait_time_s: int = Field(default=20, ge=1, le=20)
    visibility_timeout_s: int = Field(default=300, ge=10, le=43200)
    max_messages_in_flight: int = Field(default=10, ge=1, le=100)
    unsettled_retry_s: int = Field(default=30, ge=0, le=43200)
    # A message still unsettled at its n-th delivery is deleted (the reconcile pass covers its
    # inputs) instead of coming back forever; 0 leaves that to the queue's redrive policy.
    max_deliveries: int = Field(default=10, ge=0, le=1000)

    @field_validator("queue_url", "endpoint_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return value if value is None else check_http_url(value)

    @model_validator(mode="after")
    def _both_keys(self) -> SqsSettings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both access_key_id and secret_access_key, or neither")
        return self


class EventsSettings(_Section):
    """Upload notifications posted to `serve`'s event endpoint."""

    # "verify": an SNS message is accepted only when its signature verifies against a certificate
    # fetched from SNS (sns.<region>.amazonaws.com). "off" is only for emulated stores (moto,
    # LocalStack), which send signatures no SNS certificate verifies; `serve` warns at start.
    sns_signatures: Literal["verify", "off"] = "verify"


class ApiSettings(_Section):
    """The HTTP API of `ocrbatch serve`."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    token: SecretStr | None = None
    # Host names (with or without a port) the API answers to besides loopback ones; any other Host
    # header gets 421, so a DNS-rebinding page cannot reach the API through its own name.
    public_hosts: list[str] = []
    # The input and result paths batches made over the API may use: S3 prefixes (s3://bucket/prefix)
    # or directories. None are allowed until some are listed; the CLI is not limited.
    allowed_locations: list[str] = []
    # The web console at /console/ (login with the token), and how long its sessions last.
    console: bool = True
    console_session_ttl_s: float = Field(default=12 * 3600.0, gt=0)


FERNET_KEY_BYTES = 32
_KEY_SEPARATORS_RE = re.compile(r"[,\s]+")


class SecuritySettings(_Section):
    """Keys that seal webhook secrets (and webhook URLs with credentials) in batch documents.

    `secret_key` holds one or more Fernet keys, comma-separated (or one a line in
    `secret_key_file`): the first seals, every one opens, so a key is rotated by putting the new
    one first and removing the old one once every document was rewritten.
    """

    secret_key: SecretStr | None = None

    @field_validator("secret_key", mode="before")
    @classmethod
    def _key_list(cls, value: Any) -> Any:
        # A TOML list of keys means the same as the keys comma-separated.
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return ",".join(value)
        return value

    @field_validator("secret_key")
    @classmethod
    def _fernet_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        keys = _split_keys(value.get_secret_value())
        if not keys or not all(_is_fernet_key(key) for key in keys):
            raise ValueError(
                "must be one or more Fernet keys (32 bytes, url-safe base64: 44 characters), comma-separated"
            )
        return value

    def secret_keys(self) -> list[str]:
        """The keys in order (the first seals); empty when none is configured."""
        return _split_keys(self.secret_key.get_secret_value()) if self.secret_key is not None else []


def _split_keys(value: str) -> list[str]:
    return [key for key in _KEY_SEPARATORS_RE.split(value) if key]


def _is_fernet_key(key: str) -> bool:
    """Whether Fernet takes `key`: 32 bytes, url-safe base64 (checked here without `cryptography`)."""
    try:
        return len(urlsafe_b64decode(key.encode("ascii"))) == FERNET_KEY_BYTES
    except (binascii.Error, UnicodeEncodeError):
        return False


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Settings(BaseSettings):
    """Every setting of ocrbatch. Built once by `load_settings` and passed down, never global."""

    model_config = SettingsConfigDict(
        env_prefix="OCRBATCH_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    storage: StorageSettings = StorageSettings()
    coordination: CoordinationSettings = CoordinationSettings()
    domains: dict[str, DomainSettings] = {}
    worker: WorkerSettings = WorkerSettings()
    webhook: WebhookSettings = WebhookSettings()
    api: ApiSettings = ApiSettings()
    sqs: SqsSettings = SqsSettings()
    events: EventsSettings = EventsSettings()
    security: SecuritySettings = SecuritySettings()
    logging: LoggingSettings = LoggingSettings()

    @field_validator("domains", mode="before")
    @classmethod
    def _domain_names(cls, value: Any) -> Any:
        for name in value if isinstance(value, Mapping) else ():
            if not DOMAIN_NAME_RE.fullmatch(name):
                raise ValueError(f"domain name {name!r} must be 1-63 lowercase letters, digits, '_' or '-'")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init values; the environment overrides it.
        return (env_settings, init_settings)

    def secret_values(self) -> list[str]:
        """Every configured secret in clear, for the log redaction processor."""
        found: list[str] = []

        def walk(value: object) -> None:
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
            elif isinstance(value, BaseModel):
                for name in type(value).model_fields:
                    walk(getattr(value, name))
            elif isinstance(value, Mapping):
                for item in value.values():
                    walk(item)

        walk(self)
        return [secret for secret in found if secret]

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, every secret shown as `**********`."""
        return self.model_dump(mode="json")


def load_settings(config_path: Path | None = None) -> Settings:
    """Read the TOML file (if any), overlay the environment, validate; `ConfigError` on any problem."""
    file_values: dict[str, Any] = {}
    if config_path is not None:
        try:
            file_values = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_path} is not valid TOML: {exc}") from None
    try:
        return Settings(**file_values)
    except ValidationError as exc:
        problems = validation_problems(exc, unknown_key="is not a known setting")
        message = "; ".join(f"{key or '(settings)'}: {rule}" for key, rule in problems)
        raise ConfigError(f"invalid setting: {message}") from None
    except SettingsError as exc:
        # An environment variable that is not the JSON its field needs (OCRBATCH_DOMAINS='{bad'):
        # pydantic-settings names the field and never the value, which may hold secrets.
        raise ConfigError(f"invalid setting: {exc} (an OCRBATCH_ variable that is not valid JSON)") from None
