"""The baseline: the script a user would write instead of ocrbatch. List the inputs, skip those that
have a result, then a thread pool of HTTP calls (one per image, base64 JSON) with a simple retry:

    OCR_SECRET=... python -m bench.baseline --input DIR --output DIR --url URL --workers 5
    OCR_SECRET=... python -m bench.baseline --s3-endpoint URL --bucket B --input in --output out ...

On local directories every storage request (the listing of the results, each read and each
write) sleeps `--storage-delay-ms` first, as ocrbatch's storage requests do in the benchmark; on
S3 (`--s3-endpoint`, boto3 as a user would: a paginated ListObjectsV2 of each prefix, GetObject,
PutObject) the delay is the endpoint's own. Writes the figures as JSON to `--out`: items done and
failed, attempts, wall and CPU seconds of the work, peak RSS.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import boto3

from bench.measure import cpu_s, peak_rss_kb

EXTENSIONS = (".jpg", ".jpeg", ".png", ".pdf", ".tif", ".tiff")


def list_inputs(root: Path) -> list[str]:
    return sorted(
        str(path.relative_to(root)) for path in root.rglob("*") if path.suffix.lower() in EXTENSIONS
    )


def ocr(url: str, secret: str, key: str, data: bytes) -> bytes:
    body = {
        "version": "V2",
        "requestId": str(uuid.uuid4()),
        "timestamp": int(time.time() * 1000),
        "lang": "ko",
        "images": [
            {"format": key.rsplit(".", 1)[-1].lower(), "name": key, "data": base64.b64encode(data).decode()}
        ],
    }
    request = urllib.request.Request(  # noqa: S310 - the URL is the emulator's, on loopback
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-OCR-SECRET": secret},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - as above
        result: bytes = response.read()
        return result


class Store(Protocol):
    def keys(self, prefix: str) -> list[str]: ...
    def read(self, key: str) -> bytes: ...
    def write(self, key: str, data: bytes) -> None: ...


class LocalStore:
    """Files under `root`, each request `delay_s` late."""

    def __init__(self, root: Path, delay_s: float) -> None:
        self._root = root
        self._delay_s = delay_s

    def keys(self, prefix: str) -> list[str]:
        time.sleep(self._delay_s)
        base = self._root / prefix
        return [str(path.relative_to(base)) for path in base.rglob("*") if path.is_file()]

    def read(self, key: str) -> bytes:
        time.sleep(self._delay_s)
        return (self._root / key).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        target = self._root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        time.sleep(self._delay_s)
        target.write_bytes(data)


class S3Store:
    """The objects of one bucket through boto3 (its client is thread-safe)."""

    def __init__(self, endpoint_url: str, bucket: str, *, pool: int) -> None:
        self._bucket = bucket
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="bench-access-key",
            aws_secret_access_key="bench-s3-secret-5c0e81f2",  # noqa: S106 - moto's, not a credential
            config=boto3.session.Config(s3={"addressing_style": "path"}, max_pool_connections=pool),
        )

    def keys(self, prefix: str) -> list[str]:
        found = []
        for page in self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=prefix + "/"
        ):
            found += [item["Key"].removeprefix(prefix + "/") for item in page.get("Contents", [])]
        return found

    def read(self, key: str) -> bytes:
        body: bytes = self._client.get_object(Bucket=self._bucket, Key=key)["Body"].read()
        return body

    def write(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self._bucket, Key=key, Body=data)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", required=True, help="a directory, or a prefix with --s3-endpoint")
    parser.add_argument("--output", required=True, help="a directory, or a prefix with --s3-endpoint")
    parser.add_argument("--url", required=True)
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--retry-sleep-s", type=float, default=1.0)
    parser.add_argument("--storage-delay-ms", type=float, default=0.0)
    parser.add_argument("--s3-endpoint", help="read and write objects of --bucket at this S3 endpoint")
    parser.add_argument("--bucket")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    secret = os.environ["OCR_SECRET"]
    store: Store
    if args.s3_endpoint:
        store, input_prefix, output_prefix = (
            S3Store(args.s3_endpoint, args.bucket, pool=args.workers + 2),
            args.input,
            args.output,
        )
    else:
        store = LocalStore(Path("/"), args.storage_delay_ms / 1000)
        input_prefix, output_prefix = str(Path(args.input).resolve()), str(Path(args.output).resolve())

    def process(key: str) -> tuple[bool, int]:
        """Whether the item got a result, and the calls it took."""
        data = store.read(f"{input_prefix}/{key}")
        for attempt in range(1, args.retries + 1):
            try:
                result = ocr(args.url, secret, key, data)
            except (urllib.error.URLError, OSError):
                time.sleep(args.retry_sleep_s)
                continue
            store.write(f"{output_prefix}/{key}.json", result)
            return True, attempt
        return False, args.retries

    cpu_before_s, started_s = cpu_s(), time.monotonic()
    done = {key.removesuffix(".json") for key in store.keys(output_prefix) if key.endswith(".json")}
    inputs = sorted(key for key in store.keys(input_prefix) if key.lower().endswith(EXTENSIONS))
    keys = [key for key in inputs if key not in done]
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        outcomes = list(pool.map(process, keys))
    succeeded = sum(1 for ok, _ in outcomes if ok)
    figures: dict[str, Any] = {
        "succeeded": succeeded,
        "failed": len(outcomes) - succeeded,
        "done_before": len(done),
        "calls": sum(calls for _, calls in outcomes),
        "wall_s": time.monotonic() - started_s,
        "cpu_s": cpu_s() - cpu_before_s,
        "peak_rss_kb": peak_rss_kb(),
    }
    args.out.write_text(json.dumps(figures), encoding="utf-8")


if __name__ == "__main__":
    main()
