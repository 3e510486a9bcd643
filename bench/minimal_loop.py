"""The reference ceiling of the high-throughput row: the least an asyncio program does per item.
List the inputs, then for each one: read it, base64 it into a V2 request, POST it under a
semaphore of the cap (aiohttp, one pooled session), write the answer. No retries, claims,
reports, logs or checks:

    OCR_SECRET=... python -m bench.minimal_loop --input DIR --output DIR --url URL --cap 32 --out FILE

Writes the figures as JSON to `--out`, in the shape of `bench.baseline`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import time
import uuid
from pathlib import Path

import aiohttp

from bench.baseline import list_inputs
from bench.measure import cpu_s, peak_rss_kb


async def run(args: argparse.Namespace, secret: str) -> dict[str, float | int]:
    keys = list_inputs(args.input)
    slots = asyncio.Semaphore(args.cap)
    headers = {"Content-Type": "application/json", "X-OCR-SECRET": secret}
    cpu_before_s, started_s = cpu_s(), time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.cap)) as session:

        async def one(key: str) -> bool:
            data = (args.input / key).read_bytes()
            image = {
                "format": key.rsplit(".", 1)[-1].lower(),
                "name": key,
                "data": base64.b64encode(data).decode(),
            }
            body = {"version": "V2", "requestId": str(uuid.uuid4()), "timestamp": 0, "images": [image]}
            async with slots, session.post(args.url, data=json.dumps(body), headers=headers) as response:
                answer = await response.read()
                if response.status != 200:
                    return False
            target = args.output / (key + ".json")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(answer)
            return True

        outcomes = await asyncio.gather(*(one(key) for key in keys))
    succeeded = sum(outcomes)
    return {
        "succeeded": succeeded,
        "failed": len(outcomes) - succeeded,
        "calls": len(outcomes),
        "wall_s": time.monotonic() - started_s,
        "cpu_s": cpu_s() - cpu_before_s,
        "peak_rss_kb": peak_rss_kb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--cap", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    figures = asyncio.run(run(args, os.environ["OCR_SECRET"]))
    args.out.write_text(json.dumps(figures), encoding="utf-8")


if __name__ == "__main__":
    main()
