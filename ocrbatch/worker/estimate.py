"""`ocrbatch estimate`: what running a batch would cost and take, without calling the API.

It discovers the batch's pending inputs exactly as the worker does, reads them to count pages
(PDFs over 10 pages take one call per 10 pages), applies the same refusals (empty, too large,
unreadable, long images without the option), and counts billable units (a page each, a long image
per 2,000 px). The expected duration assumes the domain's cap is kept busy with calls of
`call_latency_s` each.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import asdict, dataclass
from typing import Any

from ocrbatch.batches.layout import RESULT_SUFFIX
from ocrbatch.batches.spec import Batch
from ocrbatch.clova.billing import page_units
from ocrbatch.clova.contract import MAX_PDF_PAGES_PER_CALL
from ocrbatch.clova.documents import UnreadableDocument, page_sizes
from ocrbatch.settings import DomainSettings
from ocrbatch.storage.base import Storage
from ocrbatch.worker.discovery import discover, image_format
from ocrbatch.worker.prepare import page_refusal, size_refusal


@dataclass
class Estimate:
    inputs: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    pending: int = 0
    refused: int = 0  # pending, but the worker would write a failure record without a call
    items: int = 0  # pending items that would be sent
    pages: int = 0
    billable_units: int = 0
    calls: int = 0
    max_concurrent_calls: int = 0
    call_latency_s: float = 0.0

    @property
    def expected_duration_s(self) -> float:
        """Calls spread over the domain's cap, each taking `call_latency_s`."""
        return math.ceil(self.calls / self.max_concurrent_calls) * self.call_latency_s if self.calls else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "expected_duration_s": self.expected_duration_s}


async def estimate_batch(
    batch: Batch, domain: DomainSettings, *, inputs: Storage, results: Storage, call_latency_s: float
) -> Estimate:
    """Count what a run of `batch` would send now; nothing is sent and nothing is written."""
    estimate = Estimate(max_concurrent_calls=domain.max_concurrent_calls, call_latency_s=call_latency_s)
    async for item in discover(inputs, results, result_suffix=RESULT_SUFFIX[batch.file_format]):
        estimate.inputs += 1
        if item.state != "pending":
            setattr(estimate, item.state, getattr(estimate, item.state) + 1)
            continue
        estimate.pending += 1
        fmt = image_format(item.key) or ""
        if size_refusal(item.size) is not None:
            estimate.refused += 1
            continue
        data = (await inputs.read(item.key)).data
        try:
            sizes = await asyncio.to_thread(page_sizes, data, fmt)
        except UnreadableDocument:
            estimate.refused += 1
            continue
        if page_refusal(sizes, long_image=bool(batch.long_image)) is not None:
            estimate.refused += 1
            continue
        estimate.items += 1
        estimate.pages += len(sizes)
        estimate.billable_units += sum(page_units(width, height) for width, height in sizes)
        estimate.calls += math.ceil(len(sizes) / MAX_PDF_PAGES_PER_CALL) if fmt == "pdf" else 1
    return estimate
