"""One measured worker pass in this process, with latency added to storage:

    python -m bench.worker_proc --config FILE --input DIR --result DIR --storage-delay-ms 50 --out FILE

It creates the batch if there is none, then does what `ocrbatch run --once` does (claims
included) with every storage wrapped by `DelayedStorageFactory`, and writes what the pass cost as
JSON: items, wall and CPU seconds of the pass alone (start-up and imports excluded; CPU of every
thread of the process), the process's peak RSS, and the storage requests of the pass by location
(input, result, control) and kind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from bench.delayed_storage import DelayedStorageFactory
from bench.measure import cpu_s, peak_rss_kb
from ocrbatch.batches.spec import parse_spec
from ocrbatch.batches.store import batch_store_in
from ocrbatch.clova.client import open_ocr_session
from ocrbatch.coordination.claims import ItemClaims
from ocrbatch.locations import Location
from ocrbatch.logs import configure_logging
from ocrbatch.settings import load_settings
from ocrbatch.webhooks.delivery import open_webhook_session
from ocrbatch.worker.worker import Worker


async def measure(
    config: Path, *, input_path: str, result_path: str, delay_s: float, log: Path
) -> dict[str, Any]:
    settings = load_settings(config)
    labels = {str(Location.parse(input_path)): "input", str(Location.parse(result_path)): "result"}
    factory = DelayedStorageFactory(settings.storage, delay_s, labels=labels)
    with log.open("a", encoding="utf-8") as log_stream:
        configure_logging(level=settings.logging.level, output_format="json", stream=log_stream).add(
            settings.secret_values()
        )
        # The connection pool `ocrbatch run` opens (worker_cli).
        max_connections = sum(domain.max_concurrent_calls for domain in settings.domains.values()) * 2 + 8
        async with (
            factory as storages,
            open_ocr_session(max_connections=max_connections) as session,
            open_webhook_session(settings.webhook) as outbound,
        ):
            store = await batch_store_in(settings, storages)
            if not await store.list_batches():
                domain = next(iter(settings.domains))
                spec = {
                    "name": "bench",
                    "domain": domain,
                    "input_path": input_path,
                    "result_path": result_path,
                }
                await store.create(parse_spec(spec))
            claims = ItemClaims(store.coordination, ttl_s=settings.worker.claim_ttl_s)
            await claims.register()
            await claims.work_alone()  # as `run --once` does
            worker = Worker(
                settings,
                store=store,
                storages=storages,
                session=session,
                outbound_session=outbound,
                claims=claims,
            )
            keep_alive = asyncio.create_task(claims.keep_alive())
            factory.requests.clear()  # the pass's requests only, as for its time
            cpu_before_s, started_s = cpu_s(), time.monotonic()
            try:
                outcome = await worker.run_pass()
                await worker.finish(settings.worker.shutdown_grace_s)
                await claims.unregister()
            finally:
                keep_alive.cancel()
                await asyncio.gather(keep_alive, return_exceptions=True)
            wall_s, cpu_used_s = time.monotonic() - started_s, cpu_s() - cpu_before_s
            requests = dict(sorted(factory.requests.items()))
    reports = list(outcome.reports.values())
    return {
        "succeeded": sum(report.succeeded for report in reports),
        "failed": sum(report.failed for report in reports),
        "done_before": sum(report.done_before for report in reports),
        "calls": sum(report.calls for report in reports),
        "errors": outcome.errors,
        "wall_s": wall_s,
        "cpu_s": cpu_used_s,
        "peak_rss_kb": peak_rss_kb(),
        "storage_requests": requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--input", required=True, help="the batch's input path")
    parser.add_argument("--result", required=True, help="the batch's result path")
    parser.add_argument("--storage-delay-ms", type=float, default=0.0)
    parser.add_argument("--log", type=Path, required=True, help="the worker's JSON log lines go here")
    parser.add_argument("--out", type=Path, required=True, help="the measurements, as JSON")
    args = parser.parse_args()
    figures = asyncio.run(
        measure(
            args.config,
            input_path=args.input,
            result_path=args.result,
            delay_s=args.storage_delay_ms / 1000,
            log=args.log,
        )
    )
    args.out.write_text(json.dumps(figures), encoding="utf-8")


if __name__ == "__main__":
    main()
