"""`watch`'s pieces without hosts: npu-smi figures, the sparkline, and a rendered snapshot."""

from __future__ import annotations

from rich.console import Console

from q7x2_deploy.commands.watch_view import render, sparkline
from q7x2_deploy.executor.metrics import Progress
from q7x2_deploy.executor.npu_usage import parse_npu_usage, summarize
from q7x2_deploy.executor.status import HostStatus
from q7x2_deploy.executor.watch_data import Snapshot

NPU_SMI = """\
+------------------------------------------------------------------------------------------------+
| npu-smi 23.0.0                   Version: 23.0.0                                               |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     910B3               | OK            | 93.2        45                0    / 0             |
| 0                         | 0000:C1:00.0  | 37          0    / 0          3379 / 65536         |
+===========================+===============+====================================================+
| 1     910B3               | Warning       | 95.0        51                0    / 0             |
| 0                         | 0000:01:00.0  | 60          0    / 0          40000 / 65536        |
+===========================+===============+====================================================+
| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |
| 0       0                 | 42121         | python                   | 3200                    |
"""


def test_npu_smi_figures_per_npu_and_per_host():
    npus = parse_npu_usage(NPU_SMI)
    assert [(n.npu, n.aicore_pct, n.hbm_used_mb, n.temp_c) for n in npus] == [(0, 37, 3379, 45), (1, 60, 40000, 51)]
    host = summarize(npus)
    assert host is not None and host.describe() == "48% 42/128G 51C"
    assert summarize(npus, used=[1]).aicore_pct == 60  # type: ignore[union-attr]
    assert parse_npu_usage("npu-smi: command failed -8005") == [] and summarize([]) is None


def test_sparkline_spans_the_blocks():
    assert sparkline([3.0, 2.0, 1.0]) == "█▅▁"
    assert sparkline([]) == "" and len(sparkline(list(map(float, range(100))), width=40)) == 40


def test_rendered_snapshot_shows_every_host_and_the_header():
    hosts = [HostStatus("npu-a", 0, state="running", step="pretrain", phase="train", quiet_s=400, last_line="building index"),
             HostStatus("npu-b", 1, state="running", step="pretrain", phase="train", quiet_s=1,
                        progress=Progress(20, 100, 2.5, 150.0, 2000.0, 1e-5), last_line="iteration 20/100",
                        recent_losses=[3.0, 2.8, 2.5])]
    snap = Snapshot(1000.0, hosts, {"npu-a": None, "npu-b": summarize(parse_npu_usage(NPU_SMI))},
                    [{"host": "npu-a", "cause": "lost", "action": "spare"}], 900.0, 4096, 64, [3.0, 2.8, 2.5])
    console = Console(width=120, record=True, force_terminal=False)
    console.print(render("qwen25-7b", snap, quiet_threshold_s=120))
    text = console.export_text()
    assert "phase train" in text and "iteration 20/100" in text and "eta 2m40s" in text and "tokens/s 131,072" in text
    assert "npu-a" in text and "npu-b" in text and "48% 42/128G 51C" in text and "6m40s" in text
    assert "█" in text and "last event: npu-a: lost -> spare" in text and "building index" in text
