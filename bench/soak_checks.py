"""The soak's invariants, checked on what it observed (`SoakState`); each check says PASS or FAIL
with its numbers. Pure functions of the state, so a test can show that each one fails when its
invariant is broken."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench.receiver import Delivery
from ocrbatch.batches.layout import (
    OUTBOX_PREFIX,
    REPORT_KEY,
    RESULT_SUFFIX,
    failed_input_key,
    failure_record_key,
    is_own_object,
)
from ocrbatch.webhooks.outbox import DEAD_PREFIX, SEQUENCE_KEY

OWN_OBJECTS = frozenset({REPORT_KEY, SEQUENCE_KEY})
JSON_SUFFIX = RESULT_SUFFIX["json"]  # the soak's batch writes JSON results


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {self.detail}"


@dataclass
class SoakState:
    """Everything the soak observed, gathered after the last worker stopped."""

    documents: set[str]  # input keys the worker must settle (supported formats)
    skipped: set[str]  # input keys it must leave alone (unsupported formats)
    objects: Mapping[str, bytes]  # every object in the result location, by key
    recognitions: Mapping[str, int]  # successful recognitions per image name (the emulator's)
    unsettled_at_kills: Sequence[set[str]]  # per kill: items in flight or recognised but unstored
    max_unsettled_per_kill: int  # the most items a killed worker can have had in flight
    deliveries: Sequence[Delivery]  # every webhook request the receiver answered
    logs: Mapping[str, str]  # log name -> text
    secrets: Mapping[str, str]  # what the secret is -> its value
    kills: int
    min_kills: int
    exit_codes: Sequence[int | None] = field(default_factory=list)  # of the runs not killed


def _results(state: SoakState) -> set[str]:
    return {
        key.removesuffix(JSON_SUFFIX)
        for key in state.objects
        if key.endswith(JSON_SUFFIX) and not is_own_object(key)
    }


def _failures(state: SoakState) -> set[str]:
    return {source for key in state.objects if (source := failed_input_key(key)) is not None}


def _final_status(state: SoakState) -> dict[str, str]:
    status = dict.fromkeys(_failures(state), "failed")
    status.update(dict.fromkeys(_results(state), "succeeded"))
    return status


def check_accounting(state: SoakState) -> Check:
    results, failures = _results(state), _failures(state)
    missing = sorted(state.documents - results - failures)
    both = sorted(results & failures)
    orphans = sorted((results | failures) - state.documents)
    skipped_touched = sorted(state.skipped & (results | failures))
    retryable = sum(1 for key in failures if _json(state.objects.get(failure_record_key(key)), "retryable"))
    detail = (
        f"{len(state.documents)} documents: {len(results & state.documents)} results, "
        f"{len(failures & state.documents)} failure records ({retryable} retryable); "
        f"{len(missing)} with neither, {len(both)} with both, {len(orphans)} for no input, "
        f"{len(skipped_touched)} of {len(state.skipped)} unsupported inputs touched"
        + _examples(missing + both + orphans + skipped_touched)
    )
    return Check(
        "every input has exactly one result or failure record",
        not (missing or both or orphans or skipped_touched),
        detail,
    )


def check_whole_objects(state: SoakState) -> Check:
    """Every object parses, and each result or failure record is about its own input."""
    broken = []
    for key, data in state.objects.items():
        try:
            document = json.loads(data)
        except ValueError:
            broken.append(key)
            continue
        if key in OWN_OBJECTS or key.startswith(OUTBOX_PREFIX):
            continue
        if (expected := failed_input_key(key)) is not None:
            if not isinstance(document, dict) or document.get("key") != expected:
                broken.append(key)
        elif _image_names(document) != {key.removesuffix(JSON_SUFFIX)}:
            broken.append(key)
    detail = f"{len(state.objects)} objects read, {len(broken)} partial or not their input's" + _examples(
        sorted(broken)
    )
    return Check("no partial objects", not broken, detail)


def check_billing(state: SoakState) -> Check:
    """Each result was recognised; recognised twice only if in flight at a kill."""
    results = _results(state)
    unrecognised = sorted(key for key in results if state.recognitions.get(key, 0) < 1)
    twice = {name for name, count in state.recognitions.items() if count > 1}
    unsettled = set().union(*state.unsettled_at_kills) if state.unsettled_at_kills else set()
    unexplained = sorted(twice - unsettled)
    unknown = sorted(set(state.recognitions) - state.documents)
    per_kill = [len(items) for items in state.unsettled_at_kills]
    too_many = [count for count in per_kill if count > state.max_unsettled_per_kill]
    detail = (
        f"{len(state.recognitions)} images recognised, {len(twice)} more than once "
        f"({len(twice & unsettled)} in flight at a kill, {len(unexplained)} not); "
        f"unsettled per kill {per_kill} (limit {state.max_unsettled_per_kill}); "
        f"{len(unrecognised)} results never recognised, {len(unknown)} recognitions of no input"
        + _examples(unexplained + unrecognised + unknown)
    )
    passed = not (unexplained or unrecognised or unknown or too_many)
    return Check("recognitions per image are 1 except items in flight at a kill", passed, detail)


def check_delivered(state: SoakState) -> Check:
    finished = set(_final_status(state)) & state.documents  # records of no input: check_accounting
    received = {key for delivery in state.deliveries if delivery.accepted for key, _ in delivery.items}
    missing = sorted(finished - received)
    detail = (
        f"{len(finished)} finished items, {len(received & finished)} accepted by the receiver, "
        f"{len(missing)} never delivered" + _examples(missing)
    )
    return Check("every item reached the webhook receiver at least once", not missing, detail)


def check_duplicates(state: SoakState) -> Check:
    """An item's final outcome travels in one chunk (resent with the same id); a chunk id always
    carries the same items."""
    final = _final_status(state)
    chunks_of: dict[str, set[str]] = {}
    items_of: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    superseded = 0
    for delivery in state.deliveries:
        items_of.setdefault(delivery.chunk_id, set()).add(delivery.items)
        for key, status in delivery.items:
            if final.get(key) == status:
                chunks_of.setdefault(key, set()).add(delivery.chunk_id)
            else:
                superseded += 1  # e.g. a retryable failure reported, then its success
    in_several = sorted(key for key, chunk_ids in chunks_of.items() if len(chunk_ids) > 1)
    changed = sorted(chunk_id for chunk_id, bodies in items_of.items() if len(bodies) > 1)
    resent = sum(count - 1 for count in Counter(d.chunk_id for d in state.deliveries).values())
    detail = (
        f"{len(state.deliveries)} requests, {len(items_of)} chunk ids, {resent} resends of a chunk id; "
        f"{len(in_several)} items in more than one chunk id, {len(changed)} chunk ids with different "
        f"items, {superseded} superseded outcomes" + _examples(in_several + changed)
    )
    return Check("webhook duplicates only with the same chunk id", not (in_several or changed), detail)


def check_signatures(state: SoakState) -> Check:
    bad = sum(1 for delivery in state.deliveries if not delivery.signature_ok)
    return Check(
        "every webhook request is signed correctly",
        bad == 0 and bool(state.deliveries),
        f"{len(state.deliveries)} requests, {bad} failed verification",
    )


def check_outbox(state: SoakState) -> Check:
    waiting = sorted(
        key
        for key in state.objects
        if key.startswith(OUTBOX_PREFIX) and key not in OWN_OBJECTS and not key.startswith(DEAD_PREFIX)
    )
    dead = sorted(key for key in state.objects if key.startswith(DEAD_PREFIX))
    detail = f"{len(waiting)} chunks waiting, {len(dead)} dead letters" + _examples(waiting + dead)
    return Check("webhook outbox drained", not (waiting or dead), detail)


def check_secrets(state: SoakState) -> Check:
    """No secret in a log, nor in any object of the result location (results, failure records,
    reports, the webhook outbox and its dead letters)."""
    found = sorted(
        f"{label} in {name}"
        for name, text in state.logs.items()
        for label, secret in state.secrets.items()
        if secret in text
    )
    found += sorted(
        f"{label} in object {key}"
        for key, data in state.objects.items()
        for label, secret in state.secrets.items()
        if secret.encode() in data
    )
    lines = sum(text.count("\n") for text in state.logs.values())
    detail = (
        f"{len(state.logs)} logs, {lines} lines and {len(state.objects)} objects, "
        f"{len(state.secrets)} secrets looked for, {len(found)} found"
    )
    return Check(
        "no secret in the logs or the results", not found and bool(state.secrets), detail + _examples(found)
    )


def check_restarts(state: SoakState) -> Check:
    clean = all(code == 0 for code in state.exit_codes)
    detail = (
        f"{state.kills} SIGKILLs (at least {state.min_kills}), other runs exited {list(state.exit_codes)}"
    )
    return Check("worker SIGKILLed and restarted", state.kills >= state.min_kills and clean, detail)


CHECKS = (
    check_accounting,
    check_whole_objects,
    check_billing,
    check_delivered,
    check_duplicates,
    check_signatures,
    check_outbox,
    check_secrets,
    check_restarts,
)


def run_checks(state: SoakState) -> list[Check]:
    return [check(state) for check in CHECKS]


def summary(checks: Sequence[Check]) -> str:
    passed = sum(1 for check in checks if check.passed)
    return f"{passed} passed, {len(checks) - passed} failed"


def _image_names(document: object) -> set[str]:
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        return set()
    return {str(image.get("name")) for image in document["images"] if isinstance(image, dict)}


def _json(data: bytes | None, field_name: str) -> object:
    try:
        document = json.loads(data or b"")
    except ValueError:
        return None
    return document.get(field_name) if isinstance(document, dict) else None


def _examples(keys: Sequence[str], limit: int = 5) -> str:
    return f" (e.g. {', '.join(keys[:limit])})" if keys else ""
