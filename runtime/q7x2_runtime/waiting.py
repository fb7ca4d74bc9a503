"""Waiting for something to come up, and retrying what may fail for a while, in one place.

Both sides use it: the runtime waits for the master's port, the deployer reconnects to a lost
host's log stream, the sandbox waits for its registry and hosts to answer. tenacity does the
timing (deadline, interval, back-off); these wrappers only fix the two shapes we need so that
every caller reads the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_delay,
    stop_never,
    wait_chain,
    wait_fixed,
)

T = TypeVar("T")


def poll(check: Callable[[], T], *, timeout_s: float, interval_s: float) -> T:
    """Call `check` until it returns something true or `timeout_s` has passed; return its last
    result (false when time ran out). `check` may end the wait early by returning a true value
    that says why (e.g. "the process exited")."""

    def last_result(state: RetryCallState) -> T:
        assert state.outcome is not None
        return state.outcome.result()  # type: ignore[no-any-return]

    retrying = Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(interval_s),
                        retry=retry_if_result(lambda r: not r), retry_error_callback=last_result)
    return retrying(check)


def retry_until(
    attempt: Callable[[], T],
    *,
    errors: type[BaseException] | tuple[type[BaseException], ...],
    delays_s: Sequence[float],
    timeout_s: float | None = None,
    on_retry: Callable[[BaseException, float], None] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """Run `attempt` until it returns; on one of `errors`, wait the next of `delays_s` (the last
    one repeats) and try again. With `timeout_s`, the last error is raised once that much time
    has passed. `on_retry(error, delay)` is told of each retry before its wait; `sleep` replaces
    time.sleep (e.g. an Event's wait, so that a stop request cuts the wait short)."""
    waits = wait_chain(*(wait_fixed(d) for d in delays_s)) if delays_s else wait_fixed(0)

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None and state.next_action is not None:
            error = state.outcome.exception()
            assert error is not None
            on_retry(error, state.next_action.sleep)

    retrying = Retrying(stop=stop_after_delay(timeout_s) if timeout_s is not None else stop_never,
                        wait=waits, retry=retry_if_exception_type(errors), before_sleep=before_sleep,
                        reraise=True, sleep=sleep if sleep is not None else time.sleep)
    return retrying(attempt)
