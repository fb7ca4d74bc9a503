"""The one waiting/retry helper (q7x2_runtime.waiting) and the waits built on it."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from q7x2_runtime.errors import UserError
from q7x2_runtime.pretrain.node import wait_for_master
from q7x2_runtime.waiting import poll, retry_until


def test_poll_returns_the_first_true_result() -> None:
    calls = iter(["", "", "up"])
    assert poll(lambda: next(calls), timeout_s=5, interval_s=0.001) == "up"


def test_poll_returns_the_last_false_result_when_time_runs_out() -> None:
    started = time.monotonic()
    assert poll(lambda: None, timeout_s=0.2, interval_s=0.02) is None
    assert 0.2 <= time.monotonic() - started < 2


def test_retry_until_waits_the_given_delays_and_repeats_the_last() -> None:
    failures = iter(range(4))
    waited: list[float] = []
    told: list[tuple[str, float]] = []

    def attempt() -> str:
        n = next(failures, None)
        if n is not None:
            raise OSError(f"fail {n}")
        return "done"

    assert retry_until(attempt, errors=OSError, delays_s=(1, 2), sleep=waited.append,
                       on_retry=lambda e, d: told.append((str(e), d))) == "done"
    assert waited == [1, 2, 2, 2]
    assert told == [("fail 0", 1), ("fail 1", 2), ("fail 2", 2), ("fail 3", 2)]


def test_retry_until_raises_other_errors_at_once_and_the_last_one_after_its_timeout() -> None:
    def boom() -> None:
        raise KeyError("not retried")

    with pytest.raises(KeyError):
        retry_until(boom, errors=OSError, delays_s=(0.01,), timeout_s=5)
    n = 0

    def refuse() -> None:
        nonlocal n
        n += 1
        raise ConnectionRefusedError(f"attempt {n}")

    with pytest.raises(ConnectionRefusedError, match=r"attempt \d+"):
        retry_until(refuse, errors=OSError, delays_s=(0.01,), timeout_s=0.1)
    assert n >= 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_wait_for_master_connects_once_the_master_listens() -> None:
    port = _free_port()
    server = socket.socket()

    def listen_later() -> None:
        time.sleep(0.5)
        server.bind(("127.0.0.1", port))
        server.listen()

    threading.Thread(target=listen_later, daemon=True).start()
    try:
        waited = wait_for_master("127.0.0.1", port, 10, node_rank=1)
        assert 0.4 < waited < 9
    finally:
        server.close()


def test_wait_for_master_names_the_master_and_the_last_error() -> None:
    port = _free_port()
    with pytest.raises(UserError, match=rf"node 1 could not reach the master 127.0.0.1:{port} within 1.5 s .*last error: Connection refused"):
        wait_for_master("127.0.0.1", port, 1.5, node_rank=1)
