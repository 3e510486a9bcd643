"""How many items a batch works on at once: Little's law over the latencies seen, so storage time
hides behind the call slots, between `2 x cap + 2` and `max_item_tasks_per_batch`."""

from __future__ import annotations

from fixtures.samples import png
from fixtures.waits import within
from fixtures.worker import MakeSetup, create_batch, keys, open_worker
from structlog.testing import capture_logs

from ocrbatch.worker.sizing import (
    item_tasks_by_little,
    item_tasks_per_batch,
    max_item_tasks_per_batch,
)


def test_little_s_law_sizes_the_item_tasks_within_their_bounds() -> None:
    """Items that spend as long in storage as in their call need about twice the cap in flight
    (with the margin); items whose storage time dwarfs the call hit the ceiling; with no call timed
    yet, or storage negligible, the floor holds."""
    cap = 5
    assert item_tasks_by_little(cap, busy_s=0.0, slot_s=0.0) == item_tasks_per_batch(cap) == 12
    assert item_tasks_by_little(cap, busy_s=10.0, slot_s=10.0) == 12  # ceil(5 x 1 x 1.25) + 2 = 9 < floor
    assert item_tasks_by_little(cap, busy_s=30.0, slot_s=10.0) == 21  # ceil(5 x 3 x 1.25) + 2
    assert item_tasks_by_little(cap, busy_s=1000.0, slot_s=10.0) == max_item_tasks_per_batch(cap) == 42


async def test_slow_storage_grows_the_item_tasks_and_each_input_is_recognised_once(
    make_worker_setup: MakeSetup,
) -> None:
    """On moto behind a proxy that delays each request 40 ms, calls of 20 ms with a cap of 2: the
    items spend most of their time in storage, so the batch grows its item tasks past `2 x cap + 2`
    (logged as batch.item_tasks) but never past the ceiling; every input gets one result and is
    recognised once."""
    cap = 2
    setup = await make_worker_setup(
        storage_delay_s=0.04, max_concurrent_calls=cap, faults={"latency_ms": 20, "seed": 3}
    )
    settings = setup.settings()
    for index in range(60):
        await setup.inputs.write(f"scan-{index:02}.png", png(100 + index, 60))
    await create_batch(setup, settings)
    with capture_logs() as logs:
        async with open_worker(settings) as (worker, _):
            result = await within(worker.run_pass(), 120, "the pass did not end")
    report = next(iter(result.reports.values()))
    assert report.succeeded == 60
    grown = [entry["item_tasks"] for entry in logs if entry["event"] == "batch.item_tasks"]
    assert grown, "the item tasks never grew"
    assert grown == sorted(grown)
    assert item_tasks_per_batch(cap) < grown[-1] <= max_item_tasks_per_batch(cap)
    stats = setup.emulator.stats()
    assert (len(stats["recognitions"]), stats["recognised_more_than_once"]) == (60, {})
    assert stats["peak_in_flight"] <= cap
    assert len([key for key in await keys(setup.results) if key.startswith("scan-")]) == 60
