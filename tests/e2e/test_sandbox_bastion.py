"""The sandbox behind a bastion: only the jump host accepts connections from this machine, the
two training hosts only through it (ProxyJump in the ssh config `sandbox up --bastion` writes).
check, up (the sample job, a short run), logs -f and down go through it; an unknown key on the
bastion or a changed key behind it is refused."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import isolation
from conftest import build_cpu_image
from e2e_support import E2E_ROOT, cli, cli_background, derive_inventory, wait_for

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

NAME, SUBNET = isolation.sandbox("q7x2j", "10.213.5.0/24")
TRAIN_ITERS = 10


@pytest.fixture(scope="module")
def bastion_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    if os.geteuid() != 0:
        pytest.skip("the sandbox needs root")
    from q7x2_deploy.sandbox import cluster

    cfg = cluster.config_for(NAME, SUBNET)
    inventory = tmp_path_factory.mktemp("bastion") / "inventory.yaml"
    try:
        cluster.up(cfg, 2, inventory=inventory, bastion=True, log=lambda m: print(f"sandbox: {m}"))
        yield cluster.status(cfg)
    finally:
        cluster.down(cfg, log=lambda m: print(f"sandbox: {m}"))


def _refused_from_here(address: str) -> bool:
    try:
        socket.create_connection((address, 22), timeout=5).close()
    except OSError:
        return True
    return False


def test_jobs_run_through_the_bastion(bastion_sandbox: dict, tmp_path: Path) -> None:
    s = bastion_sandbox
    assert not _refused_from_here(s["bastion"]["address"])
    assert all(_refused_from_here(h["address"]) for h in s["hosts"])  # only through the bastion
    ref = isolation.tag(f"{s['registry']['address']}/q7x2/qwen25-cpu:e2e")
    build_cpu_image(ref, push=True)
    job = "e2e-bastion"
    inv = derive_inventory(Path(s["inventory"]), tmp_path / "inv.yaml", job=job, image_ref=ref, port=6215,
                           train_iters=TRAIN_ITERS, job__recovery={"max_restarts": 0})

    plan = cli("plan", str(inv), cwd=tmp_path, timeout=120)
    assert plan.returncode == 0, plan.stderr
    assert f"via jump host 1: root@{s['bastion']['address']}:22 (sbx-bastion -> HostName" in plan.stdout

    r = cli("check", str(inv), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr

    up = cli("up", str(inv), "--detach", cwd=tmp_path, timeout=1500)
    assert up.returncode == 0, f"{up.stdout[-4000:]}\n{up.stderr[-2000:]}"
    log = tmp_path / "logs-f.out"
    follow = cli_background("logs", str(inv), "-f", cwd=tmp_path, log=log)
    try:  # -f follows until interrupted, across the steps of both hosts
        # The last rank prints the iterations and the end; rank 0 saves the checkpoint.
        wait_for(log, "[sbx-2 1] training finished", 900, follow)
        wait_for(log, f"/ckpt/iter_{TRAIN_ITERS:07d}", 120, follow)
    finally:
        follow.send_signal(signal.SIGINT)
        follow.wait(timeout=60)
    text = log.read_text()
    assert "[sbx-1 0] converted" in text and f"iteration {TRAIN_ITERS:8d}/{TRAIN_ITERS:8d}" in text, text[-3000:]

    assert cli("down", str(inv), cwd=tmp_path).returncode == 0
    st = cli("status", str(inv), "--json", cwd=tmp_path, timeout=300)  # through the bastion too
    assert st.returncode == 0, st.stderr
    assert {h["host"]: (h["reachable"], h["state"]) for h in json.loads(st.stdout)["hosts"]} == {
        "sbx-1": (True, "absent"), "sbx-2": (True, "absent")}
    shared = Path(s["shared"]) / E2E_ROOT / job
    assert (shared / "ckpt" / f"iter_{TRAIN_ITERS:07d}").is_dir()


def _config_with_known_hosts(s: dict, tmp_path: Path, lines: list[str]) -> Path:
    known = tmp_path / "known_hosts"
    known.write_text("".join(lines))
    original = Path(s["bastion"]["ssh_config"]).read_text()
    config = tmp_path / "ssh_config"
    config.write_text(original.replace(f"UserKnownHostsFile {s['known_hosts']}", f"UserKnownHostsFile {known}"))
    return config


def test_unknown_bastion_key_and_changed_key_behind_it_are_refused(bastion_sandbox: dict, tmp_path: Path) -> None:
    s = bastion_sandbox
    entries = Path(s["known_hosts"]).read_text().splitlines(keepends=True)
    bastion_line = next(l for l in entries if l.startswith("sbx-bastion,"))
    others = [l for l in entries if l is not bastion_line]
    inv = Path(s["inventory"])

    unknown = _config_with_known_hosts(s, tmp_path, others)
    r = cli("check", str(inv), "--ssh-config", str(unknown), cwd=tmp_path, timeout=300)
    assert r.returncode != 0 and "jump host sbx-bastion: unknown host key" in r.stdout + r.stderr, r.stdout + r.stderr

    # sbx-1's entry now holds another key (the bastion's): to us sbx-1's key has changed.
    bastion_key = " ".join(bastion_line.split()[1:3])
    changed = [f"sbx-1,{s['hosts'][0]['address']} {bastion_key}\n" if l.startswith("sbx-1,") else l for l in entries]
    config = _config_with_known_hosts(s, tmp_path, changed)
    r = cli("check", str(inv), "--ssh-config", str(config), "--accept-new-host-keys", cwd=tmp_path, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and f"host key for {s['hosts'][0]['address']} CHANGED" in out, out
    assert "preflight failed on 1 host(s): sbx-1" in out, out  # sbx-2's key is still the known one
