"""What the S3 backend names, without its client: ocrbatch's private prefix in a location, where
metadata sidecars go, the key limit, and an endpoint's name. Importing these loads no aioboto3."""

from __future__ import annotations

from urllib.parse import urlsplit

# ocrbatch's own objects in a location, as `.ocrbatch/` is in a local directory: never listed.
PRIVATE_PREFIX = ".ocrbatch/"
MAX_KEY_BYTES = 1024  # S3's limit on a whole key
SIDECAR_PREFIX = PRIVATE_PREFIX + "meta/"


def endpoint_name(url: str | None) -> str:
    """An endpoint as scheme://host[:port], without any user info it might carry."""
    if not url:
        return "s3 (default endpoint)"
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}:{parts.port}" if parts.port else f"{parts.scheme}://{host}"
