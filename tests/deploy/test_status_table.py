"""The status table shows throughput with three significant digits, so the sandbox's tiny model
does not read as 0.00 TFLOP/s while an NPU's figure still reads as a whole number."""

from __future__ import annotations

from rich.console import Console

from q7x2_deploy.commands.status import status_table
from q7x2_deploy.commands.table import print_table
from q7x2_deploy.executor.metrics import Progress
from q7x2_deploy.executor.status import HostStatus


def _render(tflops: float) -> str:
    row = HostStatus("sbx-2", 1, state="running", step="pretrain",
                     progress=Progress(7, 30, 6.9, tflops_per_device=tflops, ms_per_iteration=60.4))
    console = Console(record=True, width=120, force_terminal=False)
    print_table(console, status_table("sandbox", [row]))
    return console.export_text()


def test_small_and_large_throughput_keep_their_digits() -> None:
    assert "0.00313" in _render(0.0031337)
    big = _render(187.44)
    assert " 187 " in big and "187.44" not in big
