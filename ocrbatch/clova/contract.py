"""The CLOVA OCR contract that the client and the emulator both speak (SPEC §3).

Request bodies, tolerant response models, and the error table: which code means what, and what
the worker must do about it. Nothing here does I/O.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_VERSION = "V2"
SUPPORTED_VERSIONS = ("V1", "V2")
IMAGE_FORMATS = ("jpg", "jpeg", "png", "pdf", "tif", "tiff")
MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_PDF_PAGES_PER_CALL = 10


# -- requests -----------------------------------------------------------------------------------


def request_message(
    *,
    name: str,
    image_format: str,
    data_b64: str | None = None,
    url: str | None = None,
    lang: str | None = None,
    template_ids: list[int] | None = None,
    table_detection: bool = False,
    request_id: str | None = None,
    timestamp_ms: int | None = None,
) -> dict[str, Any]:
    """The JSON body of one call: exactly one image, by `data` (base64), by `url`, or neither
    (multipart, where the bytes travel in the `file` part)."""
    image: dict[str, Any] = {"format": image_format, "name": name}
    if data_b64 is not None:
        image["data"] = data_b64
    if url is not None:
        image["url"] = url
    if template_ids:
        image["templateIds"] = list(template_ids)
    message: dict[str, Any] = {
        "version": API_VERSION,
        "requestId": request_id or str(uuid.uuid4()),
        "timestamp": timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
        "images": [image],
    }
    if lang:
        message["lang"] = lang
    if table_detection:
        message["enableTableDetection"] = True
    return message


# -- responses ----------------------------------------------------------------------------------


class ClovaModel(BaseModel):
    """Base of every response model: camelCase on the wire, unknown fields kept, never rejected."""

    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready form, in the service's field names, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Vertex(ClovaModel):
    x: float
    y: float


class BoundingPoly(ClovaModel):
    vertices: list[Vertex] = Field(default_factory=list)


class SubField(ClovaModel):
    bounding_poly: BoundingPoly | None = None
    infer_text: str = ""
    infer_confidence: float | None = None
    line_break: bool | None = None


class OcrField(ClovaModel):
    """A recognised word (General) or a template field (Template, with `name` and `sub_fields`)."""

    name: str | None = None
    value_type: str | None = None
    bounding_poly: BoundingPoly | None = None
    infer_text: str = ""
    infer_confidence: float | None = None
    type: str | None = None
    line_break: bool | None = None
    sub_fields: list[SubField] | None = None
    checked: bool | None = None


class Title(ClovaModel):
    name: str | None = None
    bounding_poly: BoundingPoly | None = None
    infer_text: str = ""
    infer_confidence: float | None = None
    sub_fields: list[SubField] | None = None


class MatchedTemplate(ClovaModel):
    id: int
    name: str | None = None


class ValidationResult(ClovaModel):
    result: str
    message: str | None = None


class ConvertedImageInfo(ClovaModel):
    width: int
    height: int
    page_index: int = 0
    long_image: bool | None = None


class CellWord(ClovaModel):
    infer_text: str = ""
    infer_confidence: float | None = None
    bounding_poly: BoundingPoly | None = None


class CellTextLine(ClovaModel):
    infer_confidence: float | None = None
    bounding_poly: BoundingPoly | None = None
    cell_words: list[CellWord] = Field(default_factory=list)


class TableCell(ClovaModel):
    row_index: int
    column_index: int
    row_span: int = 1
    column_span: int = 1
    infer_confidence: float | None = None
    bounding_poly: BoundingPoly | None = None
    cell_text_lines: list[CellTextLine] = Field(default_factory=list)


class Table(ClovaModel):
    infer_confidence: float | None = None
    bounding_poly: BoundingPoly | None = None
    cells: list[TableCell] = Field(default_factory=list)


class OcrImage(ClovaModel):
    """One entry of `images[]`: one image, or one page of a PDF/TIFF."""

    uid: str | None = None
    name: str | None = None
    infer_result: str
    message: str | None = None
    matched_template: MatchedTemplate | None = None
    validation_result: ValidationResult | None = None
    converted_image_info: ConvertedImageInfo | None = None
    fields: list[OcrField] | None = None  # absent when recognition failed
    title: Title | None = None
    tables: list[Table] | None = None


class OcrResponse(ClovaModel):
    version: str | None = None
    request_id: str | None = None
    timestamp: int | None = None
    images: list[OcrImage] = Field(default_factory=list)


class ErrorBody(ClovaModel):
    """The service's error answer: `{code, message, path, traceId, timestamp}`."""

    code: str
    message: str = ""
    path: str | None = None
    trace_id: str | None = None
    timestamp: int | None = None


# -- errors -------------------------------------------------------------------------------------


class ErrorClass(StrEnum):
    """What the worker does about a failed call (SPEC §3's table)."""

    FATAL_DOMAIN = "fatal_domain"  # stop the domain's batches, status error, no failure records
    ITEM_INVALID = "item_invalid"  # this item fails, no retry
    QUOTA = "quota"  # pause the domain with a long backoff, then retry
    RATE_LIMITED = "rate_limited"  # retry with backoff and lower the domain's cap
    TABLES_DISABLED = "tables_disabled"  # fatal for batches that ask for tables
    TEMPLATE_NOT_DEPLOYED = "template_not_deployed"  # fatal for Template batches of the domain
    SERVICE = "service"  # the service failed: retry with backoff
    TRANSPORT = "transport"  # no answer, a timeout, a reset, a bare 5xx: retry with backoff

    @property
    def retryable(self) -> bool:
        return self in (ErrorClass.QUOTA, ErrorClass.RATE_LIMITED, ErrorClass.SERVICE, ErrorClass.TRANSPORT)

    @property
    def fatal(self) -> bool:
        """Fatal for (some of) the domain's batches: the configuration, not the image, is wrong."""
        return self in (ErrorClass.FATAL_DOMAIN, ErrorClass.TABLES_DISABLED, ErrorClass.TEMPLATE_NOT_DEPLOYED)


@dataclass(frozen=True)
class ErrorCode:
    code: str
    http_status: int
    message: str
    error_class: ErrorClass


# The service's own codes and messages (seed: "Response status codes").
ERROR_CODES: dict[str, ErrorCode] = {
    item.code: item
    for item in (
        ErrorCode("0001", 400, "URL is invalid.", ErrorClass.FATAL_DOMAIN),
        ErrorCode("0002", 401, "Secret key validate failed.", ErrorClass.FATAL_DOMAIN),
        ErrorCode("0011", 400, "Request body invalid.", ErrorClass.ITEM_INVALID),
        ErrorCode("0021", 400, "Protocol version not support.", ErrorClass.FATAL_DOMAIN),
        ErrorCode("0022", 400, "Request domain invalid.", ErrorClass.FATAL_DOMAIN),
        ErrorCode("0023", 400, "API request count reach the upper limit.", ErrorClass.QUOTA),
        ErrorCode("0025", 400, "Calls to this api have exceeded the rate limit.", ErrorClass.RATE_LIMITED),
        ErrorCode(
            "0028",
            400,
            "Table detection disabled: Please activate the table extractor button.",
            ErrorClass.TABLES_DISABLED,
        ),
        ErrorCode("0500", 500, "Unknown service error.", ErrorClass.SERVICE),
        ErrorCode("0501", 500, "OCR service error.", ErrorClass.SERVICE),
        ErrorCode(
            "1021",
            500,
            "Not found deploy information. Please confirm the template is released.",
            ErrorClass.TEMPLATE_NOT_DEPLOYED,
        ),
    )
}


class OcrError(Exception):
    """A call that did not produce a result, classified; the message never carries the secret."""

    def __init__(
        self,
        error_class: ErrorClass,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
        trace_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.error_class = error_class
        self.code = code
        self.http_status = http_status
        self.trace_id = trace_id
        self.retry_after_s = retry_after_s
        self.detail = message
        label = code or (f"HTTP {http_status}" if http_status else error_class.value)
        super().__init__(f"{label}: {message}")


def classify(http_status: int, code: str | None) -> ErrorClass:
    """The class of a failed answer: by the body's code first (0023/0025 arrive as HTTP 400),
    then by the HTTP status for answers without a known code (gateways, proxies)."""
    if code is not None and code in ERROR_CODES:
        return ERROR_CODES[code].error_class
    if http_status == 429:
        return ErrorClass.RATE_LIMITED
    if http_status in (401, 403, 404, 405):
        return ErrorClass.FATAL_DOMAIN
    if http_status >= 500:
        return ErrorClass.SERVICE if code else ErrorClass.TRANSPORT
    return ErrorClass.ITEM_INVALID


def parse_retry_after(value: str | None, *, now_s: float | None = None) -> float | None:
    """`Retry-After` as seconds from now (delta-seconds or an HTTP date); None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now_s = time.time() if now_s is None else now_s
    return max(0.0, moment.timestamp() - now_s)
