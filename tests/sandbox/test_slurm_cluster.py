"""`sandbox up N --slurm` is a real Slurm cluster: nodes idle, steps on both hosts, the sandbox's
NPUs scheduled as GPUs of Type=npu (SLURM_STEP_GPUS), and `sandbox down` leaves no daemon."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from tests import isolation

pytestmark = [pytest.mark.sandbox]

DAEMONS = ("munged", "slurmd", "slurmctld")


def _daemons(init_pids: list[int]) -> dict[int, str]:
    """The Slurm daemons running on these sandbox hosts (in their PID namespaces): pid -> name."""
    from q7x2_deploy.sandbox.sysutil import pids_in_pidns_of

    found = {}
    for init in init_pids:
        for p in pids_in_pidns_of(init):
            try:
                comm = Path(f"/proc/{p}/comm").read_text().strip()
            except OSError:
                continue
            if comm in DAEMONS:
                found[p] = comm
    return found


def _alive(daemons: dict[int, str]) -> list[str]:
    left = []
    for p, comm in daemons.items():
        try:
            if Path(f"/proc/{p}/comm").read_text().strip() == comm:
                left.append(f"{p} {comm}")
        except OSError:
            pass
    return left


def test_slurm_sandbox_with_npus(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the sandbox needs root")
    from q7x2_deploy.sandbox import cluster, slurm
    from q7x2_deploy.sandbox.state import State

    name, subnet = isolation.sandbox("slurmn", "10.213.8.0/24")
    cfg = cluster.config_for(name, subnet)
    etc_before = sorted(os.listdir("/etc/slurm")) if os.path.isdir("/etc/slurm") else None
    inv = tmp_path / "inventory.yaml"
    daemons: dict[int, str] = {}
    try:
        t0 = time.monotonic()
        cluster.up(cfg, 2, slurm=True, ascend_devices=2, inventory=inv, with_base_image=False, with_sample=False,
                   log=lambda m: print(f"sandbox: {m}"))
        print(f"\nsandbox up 2 --slurm --ascend-devices 2: {time.monotonic() - t0:.1f} s")
        st = State.load(cfg.state_file)
        assert st is not None and st.slurm
        pid = st.host(1).init_pid or 0

        def on_login(*argv: str) -> str:
            r = slurm.host_exec(pid, list(argv), timeout=60)
            assert r.returncode == 0, f"{argv}: {r.stderr}"
            return r.stdout

        assert on_login("sinfo", "-h", "-N", "-o", "%N %t %G").split() == ["sbx-1", "idle", "gpu:npu:2", "sbx-2", "idle", "gpu:npu:2"]
        got = on_login("srun", "-N2", "--gres=gpu:npu:2", "sh", "-c", 'echo "$(hostname) $SLURM_NODEID $SLURM_STEP_GPUS"')
        assert sorted(got.splitlines()) == ["sbx-1 0 0,1", "sbx-2 1 0,1"]
        refused = slurm.host_exec(pid, ["srun", "-N1", "--gres=gpu:npu:3", "true"], timeout=60)
        assert refused.returncode != 0 and "Requested node configuration is not available" in refused.stderr
        written = yaml.safe_load(inv.read_text())
        assert written["scheduler"]["kind"] == "slurm" and written["scheduler"]["slurm"]["login"] == "sbx-1"
        daemons = _daemons([h.init_pid or 0 for h in st.hosts])
        assert sorted(daemons.values()) == ["munged", "munged", "slurmctld", "slurmd", "slurmd"]
    finally:
        cluster.down(cfg, log=lambda m: print(f"sandbox: {m}"))
    assert _alive(daemons) == []
    assert not cfg.state_dir.exists()
    # /etc/slurm on the machine was only ever bound over inside the hosts
    assert (sorted(os.listdir("/etc/slurm")) if os.path.isdir("/etc/slurm") else None) == etc_before
