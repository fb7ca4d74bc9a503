"""Run one function per host in parallel threads and collect each host's result or error."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K")

# Remote work is I/O bound (SSH round trips, docker on the far side); threads are enough.
MAX_PARALLEL_HOSTS = 64


@dataclass(frozen=True)
class Outcome(Generic[T]):
    value: T | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def for_each(items: Iterable[K], fn: Callable[[K], T], key: Callable[[K], str] = str) -> dict[str, Outcome[T]]:
    """fn(item) for every item at once; never raises for a single item's failure."""
    items = list(items)
    if not items:
        return {}

    def _one(item: K) -> Outcome[T]:
        try:
            return Outcome(value=fn(item))
        except Exception as e:  # collected per host; the caller decides what fails the command
            return Outcome(error=e)

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_HOSTS, len(items))) as pool:
        results = list(pool.map(_one, items))
    return {key(i): r for i, r in zip(items, results)}


def first_error(outcomes: dict[str, Outcome[T]]) -> BaseException | None:
    return next((o.error for o in outcomes.values() if o.error is not None), None)
