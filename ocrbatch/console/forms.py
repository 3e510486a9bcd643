"""The create and edit forms: what the browser posts, as the same batch input the CLI and the
API give `BatchStore`, and the store's refusals placed next to the fields they name.

The form only translates: every rule (names, domains, options, paths, webhooks) is the store's.
Only the domain's own kind of options is sent (General: language, tables, long images; Template:
template ids). On edit, an empty webhook secret keeps the current one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ocrbatch.batches.spec import Batch
from ocrbatch.settings import DomainSettings

LANGUAGES = ("ko", "ja", "zh-TW")
FILE_FORMATS = ("json", "xls", "pdf")
# The form's inputs, by the field names the batch rules use in their violations.
FIELD_INPUTS: dict[str, str] = {
    "name": "name",
    "domain": "domain",
    "language": "language",
    "table_extraction": "table_extraction",
    "long_image": "long_image",
    "template_ids": "template_ids",
    "file_format": "file_format",
    "input_path": "input_path",
    "result_path": "result_path",
    "webhook": "webhook_url",
    "webhook.url": "webhook_url",
    "webhook.secret": "webhook_secret",
    "webhook.locations_only": "webhook_locations_only",
}
_TEXT_INPUTS = (
    "name",
    "domain",
    "language",
    "template_ids",
    "file_format",
    "input_path",
    "result_path",
    "webhook_url",
)
_IDS_SPLIT = re.compile(r"[,\s]+")


@dataclass
class BatchForm:
    """The values shown in the form, and the errors to show beside its inputs."""

    values: dict[str, Any]
    errors: dict[str, list[str]] = field(default_factory=dict)  # input name -> messages
    general_errors: list[str] = field(default_factory=list)

    @classmethod
    def blank(cls, domains: Mapping[str, DomainSettings]) -> BatchForm:
        first = next(iter(domains), "")
        domain = domains.get(first)
        return cls(
            {
                "name": "",
                "domain": first,
                "language": (domain.default_language if domain else None) or "ko",
                "table_extraction": False,
                "long_image": False,
                "template_ids": "",
                "file_format": "json",
                "input_path": "",
                "result_path": "",
                "webhook_enabled": False,
                "webhook_url": "",
                "webhook_locations_only": False,
                "has_secret": False,
            }
        )

    @classmethod
    def of(cls, batch: Batch) -> BatchForm:
        webhook = batch.webhook
        return cls(
            {
                "name": batch.name,
                "domain": batch.domain,
                "language": batch.language or "ko",
                "table_extraction": bool(batch.table_extraction),
                "long_image": bool(batch.long_image),
                "template_ids": ", ".join(str(template_id) for template_id in batch.template_ids or ()),
                "file_format": batch.file_format,
                "input_path": batch.input_path,
                "result_path": batch.result_path,
                "webhook_enabled": webhook is not None,
                # The URL as the API shows it: credentials masked.
                "webhook_url": batch.model_dump(mode="json")["webhook"]["url"] if webhook else "",
                "webhook_locations_only": bool(webhook and webhook.locations_only),
                "has_secret": bool(webhook and webhook.secret),
            }
        )

    @classmethod
    def posted(cls, posted: Mapping[str, str], base: BatchForm) -> BatchForm:
        """The form as posted, over `base` (what it was opened with), to show it again."""
        values = dict(base.values)
        for name in _TEXT_INPUTS:
            values[name] = posted.get(name, "").strip()
        for name in ("table_extraction", "long_image", "webhook_enabled", "webhook_locations_only"):
            values[name] = name in posted
        return cls(values)

    def refuse(self, violations: Sequence[tuple[str, str]]) -> None:
        """Place each (field, rule) beside its input; others go above the form."""
        for name, rule in violations:
            field_input = FIELD_INPUTS.get(name) or FIELD_INPUTS.get(name.split(".")[0])
            if field_input is None:
                self.general_errors.append(f"{name}: {rule}" if name != "batch" else rule)
            else:
                self.errors.setdefault(field_input, []).append(rule)


def batch_input(
    posted: Mapping[str, str], domains: Mapping[str, DomainSettings], *, editing: Batch | None = None
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The batch input the form describes, and what the form itself could not read (template ids
    that are not numbers), as (field, rule) like the store's violations. `editing`: the batch as
    the form showed it, whose masked webhook URL and empty secret mean "keep them"."""
    text = {name: posted.get(name, "").strip() for name in posted}
    domain_name = text.get("domain", "")
    body: dict[str, Any] = {
        "name": text.get("name", ""),
        "domain": domain_name,
        "file_format": text.get("file_format") or "json",
        "input_path": text.get("input_path", ""),
        "result_path": text.get("result_path", ""),
    }
    unreadable: list[tuple[str, str]] = []
    domain = domains.get(domain_name)
    if domain is not None and domain.kind == "general":
        body["language"] = text.get("language") or None
        body["table_extraction"] = "table_extraction" in posted
        body["long_image"] = "long_image" in posted
    elif domain is not None:
        ids = [part for part in _IDS_SPLIT.split(text.get("template_ids", "")) if part]
        if all(part.isdecimal() for part in ids):
            body["template_ids"] = [int(part) for part in ids]
        else:
            unreadable.append(("template_ids", "must be whole numbers separated by commas"))
    if "webhook_enabled" in posted:
        webhook: dict[str, Any] = {"locations_only": "webhook_locations_only" in posted}
        current = BatchForm.of(editing).values if editing is not None and editing.webhook else None
        if current is None or text.get("webhook_url", "") != current["webhook_url"]:
            webhook["url"] = text.get("webhook_url", "")
        if text.get("webhook_secret") or current is None:
            webhook["secret"] = text.get("webhook_secret") or None
        body["webhook"] = webhook
    else:
        body["webhook"] = None
    return body, unreadable


def domain_info(batch: Batch, domain: DomainSettings | None) -> list[tuple[str, str]]:
    """The list's "Domain information" column: (i18n key, value) pairs; values that are on/off
    are the keys `info.on` / `info.off`."""
    if batch.template_ids is not None or (domain is not None and domain.kind == "template"):
        return [
            ("info.templates", ", ".join(str(template_id) for template_id in batch.template_ids or ())),
            ("info.file_format", batch.file_format),
        ]
    return [
        ("info.language", batch.language or "-"),
        ("info.tables", "info.on" if batch.table_extraction else "info.off"),
        ("info.file_format", batch.file_format),
        ("info.long_image", "info.on" if batch.long_image else "info.off"),
    ]
