"""How many items a batch works on at once: enough to read ahead of every call slot and store
results while the slots are busy again, grown by Little's law from the time items spend outside
a slot against inside one, within a bound per slot (the memory budget bounds what they read)."""

from __future__ import annotations

import math

# Item tasks grow to at most this many per call slot (and the memory budget bounds what they read).
MAX_ITEM_TASKS_PER_SLOT = 8
ITEMS_PER_RESIZE = 16  # items settled between two applications of Little's law
LITTLE_MARGIN = 1.25  # in-flight items beyond Little's law, for the spread of latencies


def item_tasks_per_batch(max_concurrent_calls: int) -> int:
    """Items a batch works on at once to begin with: enough to read ahead of every slot and to
    store results while the slots are busy again."""
    return max_concurrent_calls * 2 + 2


def max_item_tasks_per_batch(max_concurrent_calls: int) -> int:
    """The most items a batch works on at once, so the most a killed worker can have had in flight."""
    return max_concurrent_calls * MAX_ITEM_TASKS_PER_SLOT + 2


def item_tasks_by_little(cap: int, *, busy_s: float, slot_s: float) -> int:
    """Little's law: to keep `cap` slots busy, cap x (an item's time) / (its time in a slot) items
    must be in flight, the item's time counted without waiting for a slot (`busy_s`: storage,
    claims, preparation, backoff and the calls); with `LITTLE_MARGIN`, between
    `item_tasks_per_batch` and `max_item_tasks_per_batch`. Both are totals over the same items."""
    floor, ceiling = item_tasks_per_batch(cap), max_item_tasks_per_batch(cap)
    if slot_s <= 0:
        return floor
    wanted = math.ceil(cap * busy_s / slot_s * LITTLE_MARGIN) + 2
    return max(floor, min(ceiling, wanted))
