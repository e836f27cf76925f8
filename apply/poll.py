"""Waiting for state that converges asynchronously, for steps and checks alike."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    probe: Callable[[], T], done: Callable[[T], bool] = bool, *, timeout: float, interval: float = 1.0
) -> T:
    """Poll state that converges asynchronously (a first scrape, a ban's nftables rule) until
    ``done(value)`` or ``timeout`` seconds; return the last value for the caller to assert."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value) or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
