"""The soak's invariant checks (bench/soak_checks.py): they pass on a consistent end state and each
fails when its invariant is broken, so a passing `make soak` means something."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from bench.receiver import Delivery
from bench.soak_checks import SoakState, run_checks, summary

SECRET = "ocr-secret-for-the-check"
ALL_CHECKS = {
    "every input has exactly one result or failure record",
    "no partial objects",
    "recognitions per image are 1 except items in flight at a kill",
    "every item reached the webhook receiver at least once",
    "webhook duplicates only with the same chunk id",
    "every webhook request is signed correctly",
    "webhook outbox drained",
    "no secret in the logs or the results",
    "worker SIGKILLed and restarted",
}


def _result(key: str) -> bytes:
    return json.dumps({"version": "V2", "images": [{"name": key, "inferResult": "SUCCESS"}]}).encode()


def _failure(key: str, *, retryable: bool = False) -> bytes:
    return json.dumps({"key": key, "message": "the file is empty (0 bytes)", "retryable": retryable}).encode()


def consistent_state() -> SoakState:
    """Three documents: two recognised (b.png twice, as it was in flight at a kill), one failed;
    one chunk resent after a 500, with the same id."""
    chunk = (("a.png", "succeeded"), ("c.png", "failed"))
    return SoakState(
        documents={"a.png", "b.png", "c.png"},
        skipped={"notes.txt"},
        objects={
            "a.png.json": _result("a.png"),
            "b.png.json": _result("b.png"),
            "_failed/c.png.json": _failure("c.png"),
            "_report.json": b"{}",
            "_outbox/sequence.json": b'{"last": 2}',
        },
        recognitions={"a.png": 1, "b.png": 2},
        unsettled_at_kills=[{"b.png"}, set(), set()],
        max_unsettled_per_kill=12,
        deliveries=[
            Delivery("msg_1", 500, chunk, signature_ok=True),
            Delivery("msg_1", 200, chunk, signature_ok=True),
            Delivery("msg_2", 200, (("b.png", "succeeded"),), signature_ok=True),
        ],
        logs={"worker-1.log": '{"event": "item.done", "key": "a.png"}\n'},
        secrets={"OCR secret": SECRET},
        kills=3,
        min_kills=3,
        exit_codes=[0],
    )


def test_a_consistent_end_state_passes_every_check() -> None:
    """Nothing lost, billed twice only at a kill, resends under one chunk id: every check passes."""
    checks = run_checks(consistent_state())
    assert {check.name for check in checks} == ALL_CHECKS
    assert [check.line() for check in checks if not check.passed] == []
    assert summary(checks) == "9 passed, 0 failed"


Breakage = Callable[[SoakState], None]


def _add_object(key: str, data: bytes) -> Breakage:
    def breakage(state: SoakState) -> None:
        state.objects = {**state.objects, key: data}

    return breakage


def _drop_result(state: SoakState) -> None:
    state.objects = {key: data for key, data in state.objects.items() if key != "a.png.json"}


def _bill_twice(state: SoakState) -> None:
    state.recognitions = {**state.recognitions, "a.png": 2}


def _too_many_in_flight(state: SoakState) -> None:
    state.unsettled_at_kills = [{"b.png", *(f"x{index}.png" for index in range(12))}]


def _lose_chunk(state: SoakState) -> None:
    state.deliveries = [delivery for delivery in state.deliveries if delivery.chunk_id != "msg_2"]


def _add_delivery(delivery: Delivery) -> Breakage:
    def breakage(state: SoakState) -> None:
        state.deliveries = [*state.deliveries, delivery]

    return breakage


def _log_secret(state: SoakState) -> None:
    state.logs = {**state.logs, "worker-2.log": f'{{"event": "oops", "header": "{SECRET}"}}\n'}


def _fewer_kills(state: SoakState) -> None:
    state.kills = 2


def _unclean_exit(state: SoakState) -> None:
    state.exit_codes = [1]


@pytest.mark.parametrize(
    ("breakage", "failing"),
    [
        pytest.param(_drop_result, {"every input has exactly one result or failure record"}, id="lost-item"),
        pytest.param(
            _add_object("_failed/a.png.json", _failure("a.png")),
            {"every input has exactly one result or failure record"},
            id="result-and-failure-record",
        ),
        pytest.param(
            _add_object("_failed/zz.png.json", _failure("zz.png")),
            {"every input has exactly one result or failure record"},
            id="record-of-no-input",
        ),
        pytest.param(_add_object("b.png.json", b'{"images": ['), {"no partial objects"}, id="partial-object"),
        pytest.param(_add_object("b.png.json", _result("a.png")), {"no partial objects"}, id="wrong-input"),
        pytest.param(
            _bill_twice,
            {"recognitions per image are 1 except items in flight at a kill"},
            id="double-billing",
        ),
        pytest.param(
            _too_many_in_flight,
            {"recognitions per image are 1 except items in flight at a kill"},
            id="too-many-in-flight",
        ),
        pytest.param(
            _lose_chunk, {"every item reached the webhook receiver at least once"}, id="lost-webhook"
        ),
        pytest.param(
            _add_delivery(Delivery("msg_3", 200, (("a.png", "succeeded"),), signature_ok=True)),
            {"webhook duplicates only with the same chunk id"},
            id="item-in-two-chunks",
        ),
        pytest.param(
            _add_delivery(Delivery("msg_2", 200, (), signature_ok=True)),
            {"webhook duplicates only with the same chunk id"},
            id="chunk-id-reused",
        ),
        pytest.param(
            _add_delivery(Delivery("msg_2", 200, (("b.png", "succeeded"),), signature_ok=False)),
            {"every webhook request is signed correctly"},
            id="bad-signature",
        ),
        pytest.param(
            _add_object("_outbox/000000000003-msg_3.json", b"{}"),
            {"webhook outbox drained"},
            id="stuck-chunk",
        ),
        pytest.param(
            _add_object("_outbox/dead/000000000003-msg_3.json", b"{}"),
            {"webhook outbox drained"},
            id="dead-letter",
        ),
        pytest.param(_log_secret, {"no secret in the logs or the results"}, id="secret-in-log"),
        pytest.param(
            _add_object("_report.json", json.dumps({"webhook": SECRET}).encode()),
            {"no secret in the logs or the results"},
            id="secret-in-an-object",
        ),
        pytest.param(_fewer_kills, {"worker SIGKILLed and restarted"}, id="too-few-kills"),
        pytest.param(_unclean_exit, {"worker SIGKILLed and restarted"}, id="unclean-exit"),
    ],
)
def test_a_broken_invariant_fails_its_check(breakage: Breakage, failing: set[str]) -> None:
    """Breaking one invariant fails exactly the check of that invariant, and the summary says so."""
    state = consistent_state()
    breakage(state)
    checks = run_checks(state)
    assert {check.name for check in checks if not check.passed} == failing
    assert summary(checks) == f"{9 - len(failing)} passed, {len(failing)} failed"
