"""Batch definitions and the CLOVA console's rules for them.

`BatchSpec` is what an operator declares (create, edit, apply); `Batch` adds what ocrbatch
keeps (id, status, times). Field rules live on the models; rules that need context (the
configured domains, the other batches, the control location) live in `check_batch`.
Every refusal is a `BatchRuleViolation` naming the field and the rule.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializationInfo,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from ocrbatch.batches.sealing import KEY_SETTING, Sealer, open_stored
from ocrbatch.errors import BatchRuleViolation, validation_problems
from ocrbatch.locations import Location, masked_url
from ocrbatch.settings import DomainSettings, check_http_url, read_secret_files
from ocrbatch.types import Language

BatchStatus = Literal["available", "running", "paused", "error"]
FileFormat = Literal["json", "xls", "pdf"]
NAME_MAX_CHARS = 50

# The console allows Korean, English letters, Chinese, Japanese, digits and the special
# characters & 。 _ - × 々, in their half-width and full-width forms.
_NAME_CHARS = (
    "A-Za-z0-9"
    "\uac00-\ud7a3"  # Hangul syllables
    "\u3131-\u318e"  # Hangul compatibility jamo
    "\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff"  # CJK ideographs (unified, extension A, compatibility)
    "\u3041-\u3096\u309d-\u309f"  # Hiragana
    "\u30a1-\u30fa\u30fc-\u30ff"  # Katakana
    "\uff66-\uff9f"  # half-width Katakana
    "&\uff06"  # & ＆
    "\u3002\uff61"  # 。 ｡
    "_\uff3f"  # _ ＿
    "\\-\uff0d"  # - －
    "\u00d7"  # ×
    "\u3005"  # 々
)
_NAME_RE = re.compile(f"^[{_NAME_CHARS}]+$")
NAME_RULE = (
    "must be 1-50 characters of Korean, English letters, Chinese, Japanese, digits "
    "or the special characters & 。 _ - × 々 (half- or full-width)"
)


def name_key(name: str) -> str:
    """The form in which two names count as the same (width and case folded)."""
    return unicodedata.normalize("NFKC", name).casefold()


class Webhook(BaseModel):
    """Where finished items are POSTed, in chunks (SPEC §6).

    Dumped as JSON, its secret and a URL with credentials are masked; with `reveal_secrets` in the
    context they are clear, and with a `Sealer` as `sealer` (the batch store) they are sealed.
    Validated with a `sealer` in the context (reading a stored document), sealed values are opened.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    method: Literal["POST"] = "POST"
    secret: SecretStr | None = None
    locations_only: bool = False

    @model_validator(mode="before")
    @classmethod
    def _secret_file(cls, data: Any) -> Any:
        return read_secret_files(cls, data)

    @field_validator("url", "secret", mode="before")
    @classmethod
    def _open_sealed(cls, value: Any, info: ValidationInfo) -> Any:
        # Only a stored document holds sealed values; operator input never passes for one.
        context = info.context or {}
        return open_stored(value, context["sealer"]) if "sealer" in context else value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_http_url(value)

    @field_serializer("url", when_used="json")
    def _dump_url(self, value: str, info: SerializationInfo) -> str | dict[str, str]:
        # As the secret: the store keeps the URL whole (sealed if it carries credentials), everything
        # else sees its credentials masked.
        context = info.context or {}
        sealer = context.get("sealer")
        if isinstance(sealer, Sealer) and url_credentials(value):
            return sealer.seal(value)
        return value if context.get("reveal_secrets") else masked_url(value)

    @field_serializer("secret", when_used="json")
    def _dump_secret(self, value: SecretStr | None, info: SerializationInfo) -> str | dict[str, str] | None:
        # The batch store must keep the secret; everything else sees it masked.
        if value is None:
            return None
        context = info.context or {}
        sealer = context.get("sealer")
        if isinstance(sealer, Sealer):
            return sealer.seal(value.get_secret_value())
        return value.get_secret_value() if context.get("reveal_secrets") else str(value)


def url_credentials(url: str) -> str:
    """The userinfo (`user:password`) of a URL; empty when it carries none."""
    return url.partition("://")[2].partition("/")[0].rpartition("@")[0]


def webhook_secrets(webhook: Webhook | None) -> list[str]:
    """The secrets a webhook holds: its signing secret and a password in its URL."""
    if webhook is None:
        return []
    found = [webhook.secret.get_secret_value()] if webhook.secret else []
    if userinfo := url_credentials(webhook.url):
        found.append(userinfo.partition(":")[2] or userinfo)
    return found


_KEY_NEEDED = f"cannot be stored without a key: set {KEY_SETTING} to store webhook secrets"


def unsealed_secret_violations(spec: BatchSpec) -> list[tuple[str, str]]:
    """What a batch cannot store when no key is configured: its webhook's secret, and a webhook
    URL's credentials (each a (field, rule) of a `BatchRuleViolation`)."""
    webhook = spec.webhook
    problems = []
    if webhook is not None and webhook.secret is not None:
        problems.append(("webhook.secret", _KEY_NEEDED))
    if webhook is not None and url_credentials(webhook.url):
        problems.append(("webhook.url", f"carries credentials (user:password@), which {_KEY_NEEDED}"))
    return problems


class BatchSpec(BaseModel):
    """A batch as the operator declares it: the console's create form."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    domain: str
    language: Language | None = None
    table_extraction: bool | None = None
    long_image: bool | None = None
    template_ids: list[int] | None = None
    file_format: FileFormat = "json"
    input_path: str
    result_path: str
    webhook: Webhook | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        value = unicodedata.normalize("NFC", value)
        if not 1 <= len(value) <= NAME_MAX_CHARS or not _NAME_RE.fullmatch(value):
            raise ValueError(NAME_RULE)
        return value

    @field_validator("template_ids")
    @classmethod
    def _template_ids(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if any(template_id <= 0 for template_id in value):
            raise ValueError("template ids must be positive integers")
        if len(set(value)) != len(value):
            raise ValueError("template ids must not repeat")
        return value

    @field_validator("input_path", "result_path")
    @classmethod
    def _path(cls, value: str) -> str:
        return str(Location.parse(value))

    @property
    def input_location(self) -> Location:
        return Location.parse(self.input_path)

    @property
    def result_location(self) -> Location:
        return Location.parse(self.result_path)

    def settings_key(self) -> tuple[object, ...]:
        """What makes two batches "the same settings and paths" in the console's sense."""
        return (
            self.domain,
            self.language,
            self.table_extraction,
            self.long_image,
            tuple(self.template_ids or ()),
            self.file_format,
            self.input_path,
            self.result_path,
        )


class Batch(BatchSpec):
    """A stored batch: the spec plus identity and status."""

    id: str = Field(pattern=r"^[a-z0-9]{8,32}$")
    status: BatchStatus = "available"
    status_reason: str | None = None
    created_at: datetime
    updated_at: datetime

    def spec(self) -> BatchSpec:
        return BatchSpec.model_validate(self.model_dump(include=set(BatchSpec.model_fields)))


# Changes a batch's status (and its reason), as the worker does while it runs it.
SetStatus = Callable[[Batch, BatchStatus, str | None], Awaitable[None]]


def parse_spec(data: Mapping[str, Any]) -> BatchSpec:
    """Validate operator input into a `BatchSpec`; `BatchRuleViolation` names every bad field."""
    try:
        return BatchSpec.model_validate(data)
    except ValidationError as exc:
        raise violation_from(exc) from None


def violation_from(error: ValidationError) -> BatchRuleViolation:
    """A pydantic error as a `BatchRuleViolation` (fields named, input values left out)."""
    problems = validation_problems(error, unknown_key="is not a batch field")
    return BatchRuleViolation([(field or "batch", rule) for field, rule in problems])


def resolve_defaults(spec: BatchSpec, domain: DomainSettings) -> BatchSpec:
    """Fill the General options the operator left out (language, table extraction, long images)."""
    if domain.kind != "general":
        return spec
    return spec.model_copy(
        update={
            "language": spec.language or domain.default_language or "ko",
            "table_extraction": bool(spec.table_extraction),
            "long_image": bool(spec.long_image),
        }
    )


def check_batch(
    candidate: Batch,
    others: Iterable[Batch],
    *,
    domains: Mapping[str, DomainSettings],
    control: Location,
    can_seal: bool = True,
) -> None:
    """Check one new or changed batch against every rule and the other batches of the catalog.

    Only the candidate is judged: a batch that was stored earlier and no longer passes (say,
    its domain was removed from the settings) does not block changes to other batches.
    """
    problems = batch_violations(candidate, others, domains=domains, control=control, can_seal=can_seal)
    if problems:
        raise BatchRuleViolation(problems)


def batch_violations(
    candidate: Batch,
    others: Iterable[Batch],
    *,
    domains: Mapping[str, DomainSettings],
    control: Location,
    can_seal: bool = True,
) -> list[tuple[str, str]]:
    """Every (field, rule) the candidate breaks; others with the candidate's id are ignored.
    `can_seal`: whether a key to seal webhook secrets is configured (else they are refused)."""
    problems = _check_domain_options(candidate, domains)
    problems += _check_paths(candidate, control)
    if not can_seal:
        problems += unsealed_secret_violations(candidate)
    for other in others:
        if other.id != candidate.id:
            problems.extend(
                (field, f"{rule} (batch {other.name!r})")
                for field, rule in _conflicts(candidate, other, domains)
            )
    return problems


def _check_domain_options(batch: Batch, domains: Mapping[str, DomainSettings]) -> list[tuple[str, str]]:
    domain = domains.get(batch.domain)
    if domain is None:
        known = ", ".join(sorted(domains)) or "none"
        return [("domain", f"no OCR domain named {batch.domain!r} is configured (configured: {known})")]
    problems = []
    if domain.kind == "general":
        if batch.template_ids is not None:
            problems.append(("template_ids", "only for template domains"))
        if batch.table_extraction and not domain.table_extraction:
            problems.append(
                ("table_extraction", f"domain {batch.domain!r} does not have table extraction enabled")
            )
    else:
        problems.extend(
            (field, "only for general domains")
            for field in ("language", "table_extraction", "long_image")
            if getattr(batch, field) is not None
        )
        if not batch.template_ids:
            problems.append(("template_ids", "at least one template id is required for template domains"))
    return problems


def _check_paths(batch: Batch, control: Location) -> list[tuple[str, str]]:
    problems = []
    if batch.result_location.overlaps(batch.input_location):
        problems.append(
            ("result_path", "must not lie inside the input path (results would be read as inputs)")
        )
    for field, location in (("input_path", batch.input_location), ("result_path", batch.result_location)):
        if location.overlaps(control):
            problems.append((field, f"must not overlap the control path {control} where batches are kept"))
    return problems


def _conflicts(batch: Batch, other: Batch, domains: Mapping[str, DomainSettings]) -> list[tuple[str, str]]:
    problems = []
    if name_key(batch.name) == name_key(other.name):
        problems.append(("name", "is already used by another batch"))
    if batch.settings_key() == other.settings_key():
        problems.append(("batch", "another batch has the same settings and paths"))
    elif batch.domain == other.domain:
        domain = domains.get(batch.domain)
        if domain is not None and domain.kind == "general":
            problems.append(("domain", "only one batch per General domain is allowed"))
        elif batch.input_location == other.input_location:
            problems.append(("input_path", "another batch reads the same input path with the same domain"))
    if batch.result_location.overlaps(other.input_location):
        problems.append(("result_path", "must not lie inside another batch's input path"))
    if batch.input_location.overlaps(other.result_location):
        problems.append(("input_path", "must not contain or lie inside another batch's result path"))
    if batch.result_location.overlaps(other.result_location):
        problems.append(("result_path", "must not overlap another batch's result path"))
    return problems
