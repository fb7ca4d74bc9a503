"""Seeing a run on the real sandbox: `watch` in a real terminal (tmux) against a detached job, then
`report` on the finished run rendered by headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import build_cpu_image
from e2e_support import E2E_ROOT, cli, derive_inventory

from tests import isolation

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]
JOB = "e2e-watch"
# Long enough for `watch` to show the iteration advance on a fast machine (60 took under 2 s).
ITERS = 600
SAVE_INTERVAL = 200


@pytest.fixture(scope="module")
def image_ref(sandbox_cluster) -> str:  # type: ignore[no-untyped-def]
    ref = isolation.tag(f"{sandbox_cluster.registry}/q7x2/qwen25-cpu:e2e")
    build_cpu_image(ref, push=True)
    return ref


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30).stdout


def _iteration_shown(screen: str) -> int | None:
    m = re.search(r"iteration (\d+)/%d" % ITERS, screen)
    return int(m.group(1)) if m else None


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_watch_in_a_terminal_then_report_in_a_browser(sandbox_cluster, image_ref: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inv = derive_inventory(sandbox_cluster.inventory, tmp_path / "inv.yaml", job=JOB, image_ref=image_ref,
                           port=6231, train_iters=ITERS, job__training__save_interval=SAVE_INTERVAL)
    cli("down", str(inv), cwd=tmp_path)
    shutil.rmtree(sandbox_cluster.shared_dir / E2E_ROOT / JOB, ignore_errors=True)
    session = f"q7x2-watch-{isolation.slot()}"
    try:
        r = cli("up", str(inv), "--detach", cwd=tmp_path, timeout=1500)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        _tmux("kill-session", "-t", session)
        cmd = f"cd {tmp_path} && {sys.executable} -m q7x2_deploy.cli watch {inv} --interval 1"
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "140", "-y", "40", cmd], check=True)
        seen: list[int] = []
        screen = ""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and len(set(seen)) < 2:
            time.sleep(1.5)
            screen = _tmux("capture-pane", "-p", "-t", session)
            if (it := _iteration_shown(screen)) is not None:
                seen.append(it)
        assert len(set(seen)) >= 2 and seen == sorted(seen), f"iteration did not advance: {seen}\n{screen}"
        assert re.search(r"^\s*sbx-1\s+0\s+running\s+pretrain", screen, re.M), screen
        assert re.search(r"^\s*sbx-2\s+1\s+running\s+pretrain", screen, re.M), screen
        assert "lm loss" in screen and "last lines" in screen
        _tmux("send-keys", "-t", session, "q")
        for _ in range(40):
            time.sleep(0.5)
            if session not in _tmux("list-sessions", "-F", "#{session_name}"):
                break
        else:
            pytest.fail("watch did not exit on q:\n" + _tmux("capture-pane", "-p", "-t", session))
        # The sample model may finish its iterations while watch quits: the job is untouched when
        # its pretrain containers still run or have exited 0 by themselves (a stop would leave
        # 137/143, a `down` no container at all).
        for i, host in enumerate(h.name for h in sandbox_cluster.hosts[:2]):
            pretrain = sandbox_cluster.engine(i).containers.list(
                all=True, filters={"label": [f"q7x2.job={JOB}", "q7x2.step=pretrain"]})
            assert pretrain, f"{host}: quitting watch removed the job's containers"
            states = [c.attrs["State"] for c in pretrain]
            assert all(st["Running"] or (st["Status"] == "exited" and st["ExitCode"] == 0) for st in states), \
                f"{host}: quitting watch touched the job: {states}"

        # The job runs on under its detached supervisor; wait for it to finish, then report on it.
        deadline = time.monotonic() + 1200
        while True:
            st = cli("status", str(inv), "--json", cwd=tmp_path, timeout=300)
            hosts = json.loads(st.stdout)["hosts"] if st.returncode == 0 else []
            if hosts and all(h["steps"].get("pretrain") == "exited(0)" for h in hosts):
                break
            assert time.monotonic() < deadline, st.stdout[-2000:]
            time.sleep(5)
        for _ in range(60):  # the supervisor records the finish once it sees every container exit
            if '"finished"' in (tmp_path / ".q7x2" / "runs" / JOB / "result.json").read_text(errors="replace") \
                    if (tmp_path / ".q7x2" / "runs" / JOB / "result.json").is_file() else False:
                break
            time.sleep(1)
        out = tmp_path / "report"
        r = cli("report", str(inv), "-o", str(out), cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr
        assert f"{ITERS} iterations" in r.stdout and "status finished" in r.stdout, r.stdout
        _render_in_chromium(out / "report.html", tmp_path)
    finally:
        _tmux("kill-session", "-t", session)
        cli("down", str(inv), cwd=tmp_path)
        shutil.rmtree(sandbox_cluster.shared_dir / E2E_ROOT / JOB, ignore_errors=True)


def _render_in_chromium(html: Path, tmp: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is not installed (scripts/install-host-deps.sh installs it)")
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            "--disable-background-networking", "--disable-sync", "--disable-component-update",
            f"--user-data-dir={tmp / 'chromium-profile'}"]
    dom = subprocess.run([*base, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for element in ('id="summary"', 'id="hosts"', 'id="loss"', 'id="timeline"', 'id="checkpoints"'):
        assert element in dom.stdout, element
    assert "iterations " + ", ".join(str(i) for i in range(SAVE_INTERVAL, ITERS + 1, SAVE_INTERVAL)) in dom.stdout
    shot = tmp / "report.png"
    r = subprocess.run([*base, f"--screenshot={shot}", "--window-size=1200,2400", "--hide-scrollbars", html.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    # The loss figure: the first image on the page, drawn in matplotlib's default blue.
    px = np.asarray(img)
    blue = int(((px[..., 2] > 150) & (px[..., 0] < 80) & (px[..., 1] < 150)).sum())
    assert blue > 500, f"no loss curve in the screenshot ({blue} blue pixels)"
    lo, hi = img.convert("L").getextrema()
    assert hi - lo > 150
