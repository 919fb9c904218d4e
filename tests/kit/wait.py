"""Waiting for a condition with a bound: the only way tests synchronise."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold within its bound."""


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.02,
             on_timeout: Callable[[], str] | None = None) -> T:
    """Poll ``predicate`` until it returns something truthy (and return that), or
    raise WaitTimeout after ``timeout`` seconds naming ``what`` was awaited
    (with ``on_timeout()``'s text, e.g. a log tail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = on_timeout() if on_timeout else ""
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}"
                              + (f"\n{extra}" if extra else ""))
        time.sleep(interval)  # bounded polling of a condition, not a fixed delay
