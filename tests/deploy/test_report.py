"""`report` on run directories written the way `up` writes them: figures, summary, attempts, diagnosis."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from q7x2_deploy.validation import load_inventory
from q7x2_deploy.plan import build_plan
from q7x2_runtime.pretrain.megatron_log import IterationStats, format_iteration_line

ROOT = Path(__file__).resolve().parents[2]


def _write_run(d: Path, *, iterations: int = 20, fail: bool = False) -> Path:
    plan = build_plan(load_inventory(ROOT / "inventory.example.yaml"))
    d.mkdir(parents=True, exist_ok=True)
    (d / "plan.json").write_text(plan.to_json())
    a, b = (h.name for h in plan.hosts)
    lines = []
    for i in range(1, iterations + 1):
        lines.append(format_iteration_line(IterationStats(
            iteration=i, train_iters=2000, consumed_samples=64 * i, elapsed_ms=5000 + 10 * i, learning_rate=1.25e-6,
            global_batch_size=64, lm_loss=7.0 - 0.1 * i, grad_norm=1.0 / i, throughput_tflops=150.0), now=1.7e9 + i))
        if i % 10 == 0:
            lines.append(f"saved checkpoint at iteration {i:8d} to /apps/ckpt/iter_{i:07d} (0.4 s)")
    (d / f"{b}.log").write_text("\n".join(lines) + "\n")
    a_lines = ["converting shard 1/4"]
    if fail:
        a_lines += ["Traceback (most recent call last):", '  File "pretrain_gpt.py", line 1, in <module>',
                    "RuntimeError: NPU out of memory. Tried to allocate 4.00 GiB (NPU 3; 60.96 GiB total capacity)"]
    (d / f"{a}.log").write_text("\n".join(a_lines) + "\n")
    t = 1.7e9
    notes = [(0, "q7x2-deploy: phase prepare"), (1, f"q7x2-deploy: {a}: convert started (c)"),
             (30, f"q7x2-deploy: {a}: convert finished"), (31, "q7x2-deploy: phase train"),
             (32, f"q7x2-deploy: {a}: pretrain started (p0)"), (32, f"q7x2-deploy: {b}: pretrain started (p1)")]
    if fail:
        notes += [(130, f"q7x2-deploy: {a} (rank 0) failed in pretrain: container x exited with status 1"),
                  (136, "q7x2-deploy: job qwen25-7b stopped on npu-a, npu-b")]
    else:
        notes += [(140, f"q7x2-deploy: {a}: pretrain finished"), (140, f"q7x2-deploy: {b}: pretrain finished")]
        (d / "result.json").write_text('{"status": "finished"}\n')
    (d / "deployer.tsv").write_text("".join(f"{t + dt:.3f}\t{text}\n" for dt, text in notes))
    return d


def _report(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "q7x2_deploy.cli", "report", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def _png_is_drawn(path: Path) -> bool:
    from PIL import Image

    img = Image.open(io.BytesIO(path.read_bytes())).convert("L")
    lo, hi = img.getextrema()
    return img.size[0] > 300 and hi - lo > 100


def test_report_of_a_finished_run(tmp_path):
    run = _write_run(tmp_path / "runs" / "qwen25-7b")
    r = _report(str(run), "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "status finished" in r.stdout and "20 iterations" in r.stdout
    html = (tmp_path / "out" / "report.html").read_text()
    for element in ('id="summary"', 'id="hosts"', 'id="loss"', 'id="speed"', 'id="grad-norm"', 'id="timeline"'):
        assert element in html
    assert "data:image/png;base64," in html and "iterations 10, 20" in html and "7.0" not in html.split("lm loss")[0][-5:]
    assert "6.9000 -&gt; 5.0000" in html
    for name in ("loss.png", "speed.png", "grad_norm.png", "timeline.png"):
        assert _png_is_drawn(tmp_path / "out" / name), name
    assert "likely cause" not in html


def test_report_of_a_failed_run_names_the_host(tmp_path):
    run = _write_run(tmp_path / "qwen25-7b", iterations=5, fail=True)
    r = _report(str(run))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "likely cause: NPU out of memory on npu-a (rank 0)"
    html = (run / "report" / "report.html").read_text()
    assert 'id="diagnosis"' in html and 'class="status failed">failed<' in html


def test_log_text_is_escaped(tmp_path):
    run = _write_run(tmp_path / "qwen25-7b", iterations=2)
    with open(run / "npu-a.log", "a") as f:
        f.write("<script>alert(1)</script>\n")
    assert _report(str(run)).returncode == 0
    html = (run / "report" / "report.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_attempts_and_inventory_source(tmp_path):
    runs = tmp_path / ".q7x2" / "runs"
    _write_run(runs / "qwen25-7b" / "earlier" / "20261130-100000", iterations=3, fail=True)
    (runs / "qwen25-7b" / "earlier" / "20261130-100000" / "plan.json").unlink()  # as up leaves them
    _write_run(runs / "qwen25-7b", iterations=8)
    inv = tmp_path / "inventory.yaml"
    inv.write_text((ROOT / "inventory.example.yaml").read_text())
    r = _report("inventory.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "8 iterations" in r.stdout
    r = _report("inventory.yaml", "--attempt", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "3 iterations" in r.stdout and "status failed" in r.stdout
    r = _report("inventory.yaml", "--attempt", "5", cwd=tmp_path)
    assert r.returncode == 2 and "attempt 5 does not exist" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("bad", ["missing-dir", "empty-dir"])
def test_bad_sources_get_one_line(tmp_path, bad):
    src = tmp_path / bad
    if bad == "empty-dir":
        src.mkdir()
    r = _report(str(src))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_report_of_a_running_job(tmp_path):
    run = _write_run(tmp_path / "qwen25-7b", iterations=4)
    (run / "result.json").unlink()
    lines = (run / "deployer.tsv").read_text().splitlines()
    (run / "deployer.tsv").write_text("\n".join(ln for ln in lines if "pretrain finished" not in ln) + "\n")
    r = _report(str(run))
    assert r.returncode == 0 and "status running" in r.stdout
    assert json.loads((run / "plan.json").read_text())["job_name"] == "qwen25-7b"
