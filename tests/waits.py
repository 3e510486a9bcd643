"""Waits for the test suite: every one has a timeout, and fails saying what did not happen."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest

T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout_s: float, what: str) -> T:
    """`await awaitable`; after `timeout_s` the test fails with "`what` within `timeout_s` s", so
    `what` says what did not happen ("the worker did not exit")."""
    try:
        return await asyncio.wait_for(awaitable, timeout=timeout_s)
    except TimeoutError:
        pytest.fail(f"{what} within {timeout_s:g} s")
