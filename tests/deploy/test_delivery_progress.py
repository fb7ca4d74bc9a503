"""The image-delivery meter outside a terminal: a line per interval naming every host's bytes."""

from __future__ import annotations

import io

from rich.console import Console

from q7x2_deploy.executor.delivery_progress import DeliveryMeter


def test_lines_name_each_host_and_the_slowest_rate_once_per_interval() -> None:
    now = [0.0]
    notes: list[str] = []
    meter = DeliveryMeter(["a", "b"], 100 * 2**20, notes.append, console=Console(file=io.StringIO()),
                          interval=10, clock=lambda: now[0])
    for i in range(1, 101):  # 0.2 s apart; `a` gets 1 MiB, `b` half of that
        now[0] = i * 0.2
        meter.add("a", 2**20)
        meter.add("b", 2**19)
    meter.close()
    assert notes == [
        "q7x2-deploy: image sent: a 50.0 MiB, b 24.5 MiB of ~100.0 MiB; slowest host 2.5 MiB/s",
        "q7x2-deploy: image sent: a 100.0 MiB, b 49.5 MiB of ~100.0 MiB; slowest host 2.5 MiB/s",
    ]


def test_counted_passes_every_chunk_through_and_counts_it() -> None:
    meter = DeliveryMeter(["a"], None, lambda s: None, console=Console(file=io.StringIO()), interval=1e9)
    assert b"".join(meter.counted("a", iter([b"xy", b"z"]))) == b"xyz"
    assert meter.sent == {"a": 3}
