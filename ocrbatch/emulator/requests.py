"""Reading and checking one OCR call as the service does: JSON or multipart in, a `ParsedCall` out,
or the service's code for what is wrong (0011 body, 0021 version, 1021 template, 0028 tables)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web

from ocrbatch.clova.contract import IMAGE_FORMATS, MAX_IMAGE_BYTES, SUPPORTED_VERSIONS
from ocrbatch.types import LANGUAGES, DomainKind


@dataclass(frozen=True)
class ParsedCall:
    version: str
    request_id: str
    name: str
    image_format: str
    data: bytes | None
    url: str | None
    lang: str | None
    template_ids: tuple[int, ...]
    table_detection: bool


class BadCall(Exception):
    """The call is refused with this code."""

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        super().__init__(reason)


async def parse_call(
    request: web.Request,
    *,
    kind: DomainKind,
    deployed_template_ids: tuple[int, ...],
    table_extraction: bool,
) -> ParsedCall:
    message, file_bytes = await _read_body(request)
    version = message.get("version")
    if version not in SUPPORTED_VERSIONS:
        raise BadCall("0021", f"version {version!r} is not supported")
    request_id, timestamp = message.get("requestId"), message.get("timestamp")
    if not isinstance(request_id, str) or not request_id:
        raise BadCall("0011", "requestId must be a non-empty string")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise BadCall("0011", "timestamp must be an integer")
    images = message.get("images")
    if not isinstance(images, list) or len(images) != 1 or not isinstance(images[0], dict):
        raise BadCall("0011", "images must hold exactly one image")
    image: dict[str, Any] = images[0]
    name, image_format = image.get("name"), image.get("format")
    if not isinstance(name, str) or not name:
        raise BadCall("0011", "images[0].name is required")
    if image_format not in IMAGE_FORMATS:
        raise BadCall("0011", f"images[0].format must be one of {', '.join(IMAGE_FORMATS)}")
    data, url = _image_source(image, file_bytes)
    template_ids = _template_ids(image.get("templateIds", message.get("templateIds")))
    table_detection = message.get("enableTableDetection", False)
    if not isinstance(table_detection, bool):
        raise BadCall("0011", "enableTableDetection must be a boolean")
    if kind == "template" and any(template_id not in deployed_template_ids for template_id in template_ids):
        raise BadCall("1021", "a requested template is not deployed")
    if kind == "general" and table_detection and not table_extraction:
        raise BadCall("0028", "table detection is disabled for this domain")
    return ParsedCall(
        version=version,
        request_id=request_id,
        name=name,
        image_format=str(image_format),
        data=data,
        url=url,
        lang=_lang(message.get("lang")),
        template_ids=template_ids,
        table_detection=table_detection and kind == "general",
    )


async def _read_body(request: web.Request) -> tuple[dict[str, Any], bytes | None]:
    """The message (JSON body, or the multipart `message` part) and the multipart `file`, if any."""
    if request.content_type == "multipart/form-data":
        message_text: str | None = None
        file_bytes: bytes | None = None
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "message":
                message_text = await part.text()
            elif part.name == "file":
                file_bytes = bytes(await part.read())
        if message_text is None or file_bytes is None:
            raise BadCall("0011", "multipart calls need a message part and a file part")
        return _json_object(message_text), file_bytes
    if request.content_type != "application/json":
        raise BadCall("0011", "Content-Type must be application/json or multipart/form-data")
    return _json_object(await request.text()), None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise BadCall("0011", "the body is not JSON") from None
    if not isinstance(value, dict):
        raise BadCall("0011", "the body must be a JSON object")
    return value


def _image_source(image: dict[str, Any], file_bytes: bytes | None) -> tuple[bytes | None, str | None]:
    """The image's bytes, or its URL; `data` wins over `url`, as the service documents."""
    if file_bytes is not None:
        data: bytes | None = file_bytes
    elif isinstance(image.get("data"), str):
        try:
            data = base64.b64decode(image["data"], validate=True)
        except (binascii.Error, ValueError):
            raise BadCall("0011", "images[0].data is not valid base64") from None
    elif isinstance(image.get("url"), str) and image["url"].startswith(("http://", "https://")):
        return None, image["url"]
    else:
        raise BadCall("0011", "images[0] needs data, url, or a multipart file")
    if not data:
        raise BadCall("0011", "the image is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise BadCall("0011", "the image is larger than 50 MB")
    return data, None


def _template_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(item, int) and not isinstance(item, bool) for item in value
    ):
        raise BadCall("0011", "templateIds must be a list of integers")
    return tuple(value)


def _lang(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or any(part.strip() not in LANGUAGES for part in value.split(",")):
        raise BadCall("0011", f"lang must be {', '.join(LANGUAGES)} or a comma-joined list of them")
    return ",".join(part.strip() for part in value.split(","))
