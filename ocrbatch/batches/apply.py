"""`batch apply`'s plan: which declared batches are created, updated or unchanged, which undeclared
ones are deleted (with `prune`), and what the catalog as the plan leaves it would break.

The store takes the catalog's lock, makes the plan from the batches as read now, refuses it
whole if any step breaks a rule, and only then writes; see `BatchStore.apply`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ocrbatch.batches.spec import Batch, BatchSpec, name_key

Action = Literal["create", "update", "unchanged", "delete"]
# (candidate, the other batches) -> every (field, rule) the candidate breaks
Violations = Callable[[Batch, list[Batch]], list[tuple[str, str]]]


@dataclass(frozen=True)
class PlannedChange:
    action: Action
    name: str
    batch_id: str


@dataclass(frozen=True)
class ApplyStep:
    """One step of an apply: the change, the batch as it will be stored (None if deleted), and the
    etag of the document it replaces or deletes (None for a new batch or one left alone)."""

    change: PlannedChange
    batch: Batch | None
    etag: str | None


def plan_apply(
    specs: Sequence[BatchSpec],
    current: Sequence[tuple[Batch, str]],
    *,
    prune: bool,
    new_batch: Callable[[BatchSpec], Batch],
    updated_batch: Callable[[Batch, BatchSpec], Batch],
    resolve: Callable[[BatchSpec], BatchSpec],
) -> list[ApplyStep]:
    """Each declared batch created, updated or unchanged (matched by name against `current`, the
    stored batches with their etags); the undeclared kept, or deleted with `prune`."""
    by_name = {name_key(batch.name): (batch, etag) for batch, etag in current}
    plan = []
    for spec in specs:
        existing = by_name.pop(name_key(spec.name), None)
        if existing is None:
            batch = new_batch(spec)
            plan.append(ApplyStep(PlannedChange("create", batch.name, batch.id), batch, None))
            continue
        stored, etag = existing
        resolved = resolve(spec)
        same = spec_dump(resolved) == spec_dump(stored.spec())
        batch = stored if same else updated_batch(stored, resolved)
        change = PlannedChange("unchanged" if same else "update", batch.name, batch.id)
        plan.append(ApplyStep(change, batch, etag))
    for stored, etag in by_name.values():
        if prune:
            plan.append(ApplyStep(PlannedChange("delete", stored.name, stored.id), None, etag))
        else:
            plan.append(ApplyStep(PlannedChange("unchanged", stored.name, stored.id), stored, None))
    return plan


def plan_violations(plan: Sequence[ApplyStep], violations: Violations) -> list[tuple[str, str]]:
    """Each created or updated batch checked against the catalog as the plan leaves it.

    Each pair is judged once (a changed batch against the unchanged ones and the changed ones
    before it); refusals are labelled with the batch's name.
    """
    kept = [step.batch for step in plan if step.batch is not None and step.change.action == "unchanged"]
    changed = [step.batch for step in plan if step.batch is not None and step.change.action != "unchanged"]
    problems: list[tuple[str, str]] = []
    for index, batch in enumerate(changed):
        found = violations(batch, kept + changed[:index])
        problems.extend((f"batch {batch.name!r}: {field}", rule) for field, rule in found)
    return problems


def spec_dump(spec: BatchSpec) -> dict[str, Any]:
    """A spec as comparable data, secrets included (two specs are the same batch definition)."""
    return spec.model_dump(mode="json", context={"reveal_secrets": True})
