"""On a sandbox of its own (16 simulated Ascend NPUs per host, no registry use: images go over
SSH): the ascend-flavor run spec starts and sees exactly the job's /dev/davinci* devices, NPU
drills are named by `check`, and a host that loses power or its network mid-training fails `up`
fast, naming the host, with the other host stopped.

Powering hosts off would disturb the shared session sandbox, hence the separate one.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests import isolation
from conftest import build_cpu_image
from e2e_support import cli, cli_background, derive_inventory, wait_for

from q7x2_deploy.executor.cluster import open_cluster
from q7x2_deploy.transport.factory import ssh_factory
from q7x2_deploy.executor.image_delivery import deliver_image, local_image_id
from q7x2_deploy.validation import load_inventory
from q7x2_deploy.plan import build_plan
from q7x2_deploy.sandbox.ascend import FAULTS_FILE

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

NAME, SUBNET = isolation.sandbox("q7x2e", "10.213.9.0/24")
HOST_NPUS = 16  # simulated on every host; a job uses only some of them
DEVICES = 2
IMAGE = isolation.tag("q7x2/qwen25-cpu:e2e-ssh")


@pytest.fixture(scope="module")
def own_sandbox():  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("the sandbox cluster needs root")
    from q7x2_deploy.sandbox import cluster
    from q7x2_deploy.sandbox.config import SandboxConfig
    from tests.sandbox_fixture import cluster_from_status

    cfg = SandboxConfig(name=NAME, subnet=SUBNET)
    cluster.down(cfg, log=lambda _m: None)  # leftovers of an interrupted run
    try:
        cluster.up(cfg, 2, ascend_devices=HOST_NPUS, inventory=cfg.state_dir / "inventory.sandbox.yaml",
                   log=lambda _m: None)
        build_cpu_image(IMAGE, push=False)
        yield cfg, cluster, cluster_from_status(cluster.status(cfg))
    finally:
        cluster.down(cfg, log=lambda _m: None)


def test_ascend_run_spec_starts_with_its_devices(own_sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _cfg, _cluster, sbx = own_sandbox
    inv = derive_inventory(sbx.inventory, tmp_path / "inv.yaml", job="e2e-ascend", image_ref=IMAGE, port=6221,
                           distribution="ssh", image__flavor="ascend", container__devices=DEVICES,
                           job__parallelism__npus_per_node=DEVICES)
    r = cli("check", str(inv), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr  # devices, management devices and driver mounts present
    plan = build_plan(load_inventory(inv))
    assert plan.flavor == "ascend"
    with open_cluster(plan, ssh_factory()) as cl:
        t0 = time.monotonic()
        deliveries = deliver_image(cl)
        took = time.monotonic() - t0
        want = local_image_id(IMAGE)
        assert {d.image_id for d in deliveries} == {want}
        assert all(d.action in ("loaded", "skipped") for d in deliveries)
        again = deliver_image(cl)
        assert [d.action for d in again] == ["skipped", "skipped"]  # same image ID: nothing sent
        for h in plan.hosts:
            t = cl.transport(h)
            t.write_file(h.job_file, plan.job_spec.to_json().encode())
            # The plan's container spec exactly as `up` uses it, with a probe as the command.
            run = ["docker", "run", "--rm", "--label", "q7x2.job=e2e-ascend", *h.docker_run[3:],
                   "sh", "-c", "ls /dev/davinci* && echo NODE_RANK=$NODE_RANK && ls -d /usr/local/Ascend/driver"]
            assert h.docker_run[:3] == ["docker", "run", "-d"]
            out = t.check(run, timeout=300).stdout
            for dev in [f"/dev/davinci{i}" for i in range(DEVICES)] + ["/dev/davinci_manager"]:
                assert dev in out.split(), out
            assert f"NODE_RANK={h.node_rank}" in out and "/usr/local/Ascend/driver" in out
    print(f"\nssh delivery of {IMAGE} to 2 hosts: {took:.1f}s")


def _probe_containers(cl, plan, command: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Each host's output of `command` in a container of the plan's spec, exactly as `up` starts it."""
    out = {}
    for h in plan.hosts:
        t = cl.transport(h)
        t.write_file(h.job_file, plan.job_spec.to_json().encode())
        assert h.docker_run[:3] == ["docker", "run", "-d"]
        run = ["docker", "run", "--rm", "--label", f"q7x2.job={plan.job_name}", *h.docker_run[3:], "sh", "-c", command]
        out[h.name] = t.check(run, timeout=300).stdout
    return out


def test_a_per_node_job_sees_exactly_its_npus(own_sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _cfg, _cluster, sbx = own_sandbox
    common = dict(job="e2e-npus", image_ref=IMAGE, port=6226, distribution="ssh", storage="per-node",
                  image__flavor="ascend", job__parallelism__npus_per_node=8, job__training__global_batch_size=32,
                  job__env={"HCCL_CONNECT_TIMEOUT": "1200"})
    # The sandbox's inventory says `devices: 0` (cpu); null restores the default, the job's 8 NPUs.
    inv = derive_inventory(sbx.inventory, tmp_path / "inv.yaml", container__devices=None, **common)
    r = cli("validate", str(inv), cwd=tmp_path)
    assert r.returncode == 0 and "warning" not in r.stdout, r.stdout + r.stderr
    plan = build_plan(load_inventory(inv))
    for h in plan.hosts:
        davinci = [a for a in h.docker_run if a.startswith("/dev/davinci") and a[12:].isdigit()]
        assert davinci == [f"/dev/davinci{i}" for i in range(8)], h.docker_run
        assert h.env["ASCEND_RT_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7" and h.npus == list(range(8))
        assert "ASCEND_RT_VISIBLE_DEVICES=0,1,2,3,4,5,6,7" in h.step("pretrain").docker_run
    with open_cluster(plan, ssh_factory()) as cl:
        deliver_image(cl)
        seen = _probe_containers(cl, plan, "ls /dev/davinci*; echo VISIBLE=$ASCEND_RT_VISIBLE_DEVICES")
        # An unused NPU's trouble only warns; check names the NPUs each host's job uses.
        cl.transport("sbx-2").write_file(FAULTS_FILE, b"health 12 Alarm\n")
        try:
            r = cli("check", str(inv), cwd=tmp_path, timeout=300)
        finally:
            cl.transport("sbx-2").check(["rm", "-f", FAULTS_FILE])
    for host, out in seen.items():
        nodes = sorted(w for w in out.split() if w.startswith("/dev/davinci") and w[12:].isdigit())
        assert nodes == sorted(f"/dev/davinci{i}" for i in range(8)), (host, out)  # 8 of the host's 16
        assert "VISIBLE=0,1,2,3,4,5,6,7" in out, out
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "sbx-1: the job uses NPU 0-7" in out and "sbx-2: the job uses NPU 0-7" in out, out
    assert "sbx-2: npu: not used: NPU 12 Alarm" in out, out

    # The deliberate mismatch: 16 visible NPUs for 8 ranks per host.
    wide = derive_inventory(sbx.inventory, tmp_path / "wide.yaml", container__devices=HOST_NPUS, **common)
    r = cli("validate", str(wide), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "job.storage: per-node storage needs each host's containers to see exactly npus_per_node = 8 NPUs" in r.stderr, r.stderr
    assert "'sbx-2' (16 NPUs visible, ranks 8-15: none is one)" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_check_names_an_unhealthy_npu_and_a_down_link(own_sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _cfg, _cluster, sbx = own_sandbox
    inv = derive_inventory(sbx.inventory, tmp_path / "inv.yaml", job="e2e-npu", image_ref=IMAGE, port=6224,
                           distribution="ssh", image__flavor="ascend", container__devices=DEVICES,
                           job__parallelism__npus_per_node=DEVICES)
    plan = build_plan(load_inventory(inv))
    with open_cluster(plan, ssh_factory()) as cl:
        sbx2 = cl.transport("sbx-2")
        sbx2.write_file(FAULTS_FILE, b"health 1 Alarm\nlink 0 DOWN\n")
        try:
            r = cli("check", str(inv), cwd=tmp_path, timeout=300)
        finally:
            sbx2.check(["rm", "-f", FAULTS_FILE])
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "sbx-2: npu: unhealthy: NPU 1 Alarm" in out and "sbx-2: links: link down on NPU 0" in out, out
    assert "sbx-1:" not in out.split("preflight failed")[-1], out  # the healthy host is not blamed
    r = cli("check", str(inv), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_new_build_replaces_the_hosts_previous_image_unless_it_is_in_use(own_sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from q7x2_deploy.image.base_image import ensure_base_image

    _cfg, _cluster, sbx = own_sandbox
    base, ref = ensure_base_image(log=lambda _m: None), isolation.tag("q7x2-test/rebuilt:e2e")

    def build(version: int) -> str:  # a small image of its own under the same reference each time
        subprocess.run(["docker", "build", "-q", "-t", ref, "-"], input=f"FROM {base}\nLABEL v={version}\n",
                       text=True, check=True, capture_output=True)
        return local_image_id(ref) or ""

    inv = derive_inventory(sbx.inventory, tmp_path / "inv.yaml", job="e2e-rebuilt", image_ref=ref, port=6225,
                           distribution="ssh")
    plan = build_plan(load_inventory(inv))
    with open_cluster(plan, ssh_factory()) as cl:
        def on_hosts(image_id: str) -> list[bool]:
            return [cl.transport(h).run(["docker", "image", "inspect", image_id]).ok for h in plan.hosts]

        first = build(1)
        assert [d.action for d in deliver_image(cl)] == ["loaded", "loaded"]
        second = build(2)
        done = deliver_image(cl)
        assert [(d.action, d.image_id, d.previous, d.previous_removed) for d in done] == [("loaded", second, first, True)] * 2
        assert on_hosts(first) == [False, False] and on_hosts(second) == [True, True]
        # A (stopped) container still uses the image on sbx-1: there it stays.
        holder = cl.transport("sbx-1").check(["docker", "create", "--label", "q7x2.test=holder", ref, "true"]).stdout.strip()
        try:
            third = build(3)
            done = deliver_image(cl)
            assert [(d.previous, d.previous_removed) for d in done] == [(second, False), (second, True)]
            assert "kept (a container or another tag uses it)" in done[0].describe()
            assert on_hosts(second) == [True, False] and on_hosts(third) == [True, True]
        finally:
            cl.transport("sbx-1").run(["docker", "rm", "-f", holder])
        for h in plan.hosts:
            cl.transport(h).run(["docker", "image", "rm", "-f", ref, second])
    subprocess.run(["docker", "image", "rm", "-f", ref], capture_output=True)


def _start_training(sbx, tmp_path: Path, job: str, port: int):  # type: ignore[no-untyped-def]
    inv = derive_inventory(sbx.inventory, tmp_path / "inv.yaml", job=job, image_ref=IMAGE, port=port,
                           distribution="ssh", train_iters=100_000,
                           job__recovery__max_restarts=0)  # fail fast: no recovery
    cli("down", str(inv), cwd=tmp_path)
    log = tmp_path / "up.log"
    proc = cli_background("up", str(inv), cwd=tmp_path, log=log)
    wait_for(log, "[sbx-2 1]  [", 900, proc)  # rank 1 prints iteration lines: training is on
    return inv, log, proc


@pytest.mark.parametrize("fault", ["stop", "cut"])
def test_lost_host_fails_up_naming_it_and_stops_the_other(own_sandbox, tmp_path: Path, fault: str) -> None:  # type: ignore[no-untyped-def]
    cfg, cluster, sbx = own_sandbox
    job = f"e2e-{fault}"
    inv, log, proc = _start_training(sbx, tmp_path, job, 6222 if fault == "stop" else 6223)
    try:
        t0 = time.monotonic()
        getattr(cluster, fault)(cfg, "sbx-2", log=lambda _m: None)  # power loss / cable pulled
        rc = proc.wait(timeout=180)
        reaction = time.monotonic() - t0
        text = log.read_text()
        assert rc != 0
        assert "sbx-2 (rank 1) failed" in text, text[-2000:]
        assert "stopped answering" in text or "connection lost" in text, text[-2000:]
        running = [c for c in sbx.engine(0).containers.list(filters={"label": f"q7x2.job={job}"})]
        assert running == []  # sbx-1's training was stopped
        print(f"\n{fault}: up failed {reaction:.1f}s after the fault")
        print("\n".join(ln for ln in text.splitlines() if ln.startswith("q7x2-deploy"))[-1500:])
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.start(cfg, "sbx-2", log=lambda _m: None) if fault == "stop" else cluster.heal(cfg, "sbx-2", log=lambda _m: None)
        cli("down", str(inv), cwd=tmp_path)


def test_check_names_npu_network_faults_by_both_ends(own_sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from q7x2_deploy.sandbox.ascend import device_ip

    _cfg, _cluster, sbx = own_sandbox
    inv = derive_inventory(sbx.inventory, tmp_path / "inv.yaml", job="e2e-hccn", image_ref=IMAGE, port=6227,
                           distribution="ssh", image__flavor="ascend", container__devices=None,
                           job__parallelism__npus_per_node=8, job__training__global_batch_size=32)
    r = cli("check", str(inv), cwd=tmp_path, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "NPU ping" in out and out.count("8/8") == 2, out  # sbx-1 -> sbx-2 and back, 8 NPU pairs each
    plan = build_plan(load_inventory(inv))
    with open_cluster(plan, ssh_factory()) as cl:
        s1, s2 = cl.transport("sbx-1"), cl.transport("sbx-2")
        conf = s2.check(["cat", "/etc/hccn.conf"]).stdout
        assert f"address_5={device_ip(2, 5)}\n" in conf
        try:
            s2.write_file(FAULTS_FILE, f"ip 3 {device_ip(2, 99)}\n".encode())  # NPU 3 readdressed by hand
            s2.write_file("/etc/hccn.conf", conf.replace(f"address_5={device_ip(2, 5)}", f"address_5={device_ip(1, 5)}").encode())
            s1.write_file(FAULTS_FILE, f"unreachable {device_ip(2, 2)}\n".encode())  # one RoCE path broken
            r = cli("check", str(inv), cwd=tmp_path, timeout=300)
        finally:
            s1.check(["rm", "-f", FAULTS_FILE])
            s2.check(["rm", "-f", FAULTS_FILE])
            s2.write_file("/etc/hccn.conf", conf.encode())
        out = r.stdout + r.stderr
        assert r.returncode != 0, out
        flat = " ".join(out.split())  # rich may wrap long detail lines
        # sbx-2's row keeps its own finding and adds the clash; sbx-1 is told of the clash too.
        assert (f"sbx-2: devip: NPU 3 has device IP {device_ip(2, 99)} but /etc/hccn.conf says {device_ip(2, 3)}; "
                f"NPU 5 device IP {device_ip(1, 5)} is also sbx-1 NPU 5's") in flat, out
        assert f"sbx-1: devip: NPU 5 device IP {device_ip(1, 5)} is also sbx-2 NPU 5's" in flat, out
        assert (f"sbx-1: ping: unreachable: NPU 2 ({device_ip(1, 2)}) -> sbx-2 NPU 2 ({device_ip(2, 2)}): "
                "0 of 3 replies") in flat, out
        assert "7/8" in out, out  # the matrix shows the one broken pair
    r = cli("check", str(inv), cwd=tmp_path, timeout=300)  # healed
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sbx-1: reach" not in r.stdout and "sbx-2: port" not in r.stdout


def test_up_pins_gloo_to_the_detected_nic_of_hosts_without_one(own_sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    import yaml

    cfg, _cluster, sbx = own_sandbox
    inv = derive_inventory(sbx.inventory, tmp_path / "inv.yaml", job="e2e-nic", image_ref=IMAGE, port=6228,
                           distribution="ssh", train_iters=3)
    data = yaml.safe_load(inv.read_text())
    for h in data["hosts"]:
        del h["nic"]  # gloo picks a wrong address without an interface pinned (see environment notes)
    inv.write_text(yaml.safe_dump(data, sort_keys=False))
    r = cli("plan", str(inv), cwd=tmp_path)
    assert r.returncode == 0 and "NIC: detected by `up`" in r.stdout, r.stdout + r.stderr
    try:
        r = cli("up", str(inv), cwd=tmp_path, timeout=1200)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-4000:]
        nics = {h.name: h.nic for h in (cfg.host(1), cfg.host(2))}
        assert f"NICs detected: sbx-1 {nics['sbx-1']}, sbx-2 {nics['sbx-2']}" in out, out[-4000:]
        from q7x2_deploy.runs.rundir import RUNS_ROOT_ENV

        runs = Path(os.environ.get(RUNS_ROOT_ENV, tmp_path / ".q7x2" / "runs"))  # the CLI ran in tmp_path
        ran = json.loads((runs / "e2e-nic" / "plan.json").read_text())
        for h in ran["hosts"]:
            assert h["env"]["GLOO_SOCKET_IFNAME"] == h["env"]["HCCL_SOCKET_IFNAME"] == nics[h["name"]]
            assert f"GLOO_SOCKET_IFNAME={nics[h['name']]}" in h["steps"][-1]["docker_run"]
    finally:
        cli("down", str(inv), cwd=tmp_path)
