"""The baseline: the script a user would write instead of ocrbatch. List the inputs, skip those that
have a result, then a thread pool of HTTP calls (one per image, base64 JSON) with a simple retry:

    OCR_SECRET=... python -m bench.baseline --input DIR --output DIR --url URL --workers 5

Every storage request (the listing of the results, each read and each write) sleeps
`--storage-delay-ms` first, as ocrbatch's storage requests do in the benchmark. Writes the
figures as JSON to `--out`: items done and failed, attempts, wall and CPU seconds of the work,
peak RSS.
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
from typing import Any

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--retry-sleep-s", type=float, default=1.0)
    parser.add_argument("--storage-delay-ms", type=float, default=0.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    secret = os.environ["OCR_SECRET"]

    def process(key: str) -> tuple[bool, int]:
        """Whether the item got a result, and the calls it took."""
        delay_s = args.storage_delay_ms / 1000
        time.sleep(delay_s)
        data = (args.input / key).read_bytes()
        for attempt in range(1, args.retries + 1):
            try:
                result = ocr(args.url, secret, key, data)
            except (urllib.error.URLError, OSError):
                time.sleep(args.retry_sleep_s)
                continue
            target = args.output / (key + ".json")
            target.parent.mkdir(parents=True, exist_ok=True)
            time.sleep(delay_s)
            target.write_bytes(result)
            return True, attempt
        return False, args.retries

    cpu_before_s, started_s = cpu_s(), time.monotonic()
    time.sleep(args.storage_delay_ms / 1000)  # one listing of the results
    done = {str(path.relative_to(args.output)).removesuffix(".json") for path in args.output.rglob("*.json")}
    keys = [key for key in list_inputs(args.input) if key not in done]
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
