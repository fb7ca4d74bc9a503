"""The `scheduler:` section: which keys apply to which kind, what each kind needs, `--scheduler`."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from q7x2_deploy.inventory import InventoryError
from q7x2_deploy.validation import load_inventory
from q7x2_deploy.validation import validate_data, with_scheduler_kind

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "inventory.example.yaml").read_text())


def messages(data: object) -> list[str]:
    _, violations = validate_data(data)
    return [f"{v.dotted}: {v.message}" for v in violations]


def slurm_inventory(**slurm: object) -> dict:
    """The example job on 2 Slurm nodes: no hosts, spares or master host."""
    data = copy.deepcopy(BASE)
    for key in ("hosts", "spares", "master"):
        data.pop(key)
    data["scheduler"] = {"kind": "slurm", "nodes": 2, "slurm": {"login": "login01.example.org", **slurm}}
    return data


def test_slurm_needs_no_hosts():
    assert messages(slurm_inventory()) == []
    assert messages(slurm_inventory(partition="npu", account="team-a", gres="gpu:npu:8", time="7-00:00:00", container="none")) == []


def test_kubernetes_needs_no_hosts():
    data = slurm_inventory()
    data["scheduler"] = {"kind": "kubernetes", "nodes": 2, "kubernetes": {"namespace": "train", "kind": "VolcanoJob", "queue": "q1"}}
    assert messages(data) == []


def test_ssh_needs_hosts_and_takes_no_node_count():
    data = slurm_inventory()
    data["scheduler"]["kind"] = "ssh"
    assert messages(data) == [
        "hosts: required with scheduler kind ssh (the default): list the hosts, or set scheduler.kind to slurm or kubernetes with scheduler.nodes",
        "scheduler.nodes: applies only to kind slurm or kubernetes; with ssh the job runs on every host in hosts[]",
    ]


def test_placed_kinds_refuse_ssh_only_keys():
    data = copy.deepcopy(BASE)
    data["scheduler"] = {"kind": "slurm", "slurm": {"login": "npu-a"}}
    data["image"]["distribution"] = "ssh"
    data["container"]["devices"] = 8
    data["hosts"][1]["node_rank"] = 0
    data["hosts"][0]["node_rank"] = 1
    assert messages(data) == [
        "spares: applies only to kind ssh: with slurm the scheduler places the nodes and replaces failed ones",
        "master.host: applies only to kind ssh: with slurm the scheduler places the nodes; the first node of the allocation is the master",
        "hosts[0].node_rank: applies only to kind ssh: with slurm the scheduler places the nodes (ranks follow the allocation's node order)",
        "hosts[0].nic: applies only to kind ssh: with slurm the scheduler places the nodes (set GLOO_SOCKET_IFNAME/HCCL_SOCKET_IFNAME in job.env)",
        "hosts[1].node_rank: applies only to kind ssh: with slurm the scheduler places the nodes (ranks follow the allocation's node order)",
        "hosts[1].nic: applies only to kind ssh: with slurm the scheduler places the nodes (set GLOO_SOCKET_IFNAME/HCCL_SOCKET_IFNAME in job.env)",
        "image.distribution: ssh streams the image to hosts known in advance; with slurm the nodes pull it: use registry",
        "container.devices: applies only to kind ssh: with slurm each node's NPUs come from its allocation (SLURM_STEP_GPUS)",
    ]


def test_slurm_needs_login_and_a_node_count():
    data = slurm_inventory()
    del data["scheduler"]["nodes"]
    data["scheduler"]["slurm"] = {}
    assert messages(data) == [
        "scheduler.nodes: required with kind slurm: how many nodes the scheduler places (each runs npus_per_node NPUs)",
        "scheduler.slurm.login: required with kind slurm: the login host sbatch runs on (a name from hosts[] or an address)",
    ]


def test_world_size_uses_the_node_count():
    data = slurm_inventory()
    data["scheduler"]["nodes"] = 3
    assert messages(data) == ["job.training.global_batch_size: 64 is not divisible by micro_batch_size x data-parallel size = 1 x 3"]


@pytest.mark.parametrize(("key", "value", "message"), [
    ("gres", "gpu:npu:4", "scheduler.slurm.gres: asks for 4 per node but npus_per_node is 8"),
    ("gres", "gpu npu 8", "scheduler.slurm.gres: 'gpu npu 8' is not a GRES request name[:type]:count such as gpu:npu:8 or npu:8"),
    ("time", "$(reboot)", "scheduler.slurm.time: '$(reboot)' is not a Slurm time limit such as 7-00:00:00, 12:00:00 or 90 (minutes)"),
    ("partition", "npu;rm", "scheduler.slurm.partition: 'npu;rm' is not a Slurm name ([A-Za-z0-9_.-], at most 64)"),
    ("account", "-x", "scheduler.slurm.account: '-x' is not a Slurm name ([A-Za-z0-9_.-], at most 64)"),
    ("container", "podman", "scheduler.slurm.container: Input should be 'docker' or 'none' (got 'podman')"),
    ("output_dir", "out", "scheduler.slurm.output_dir: 'out' must be an absolute path"),
    ("login", "login host", "scheduler.slurm.login: 'login host' is neither an IP address nor a DNS name"),
])  # fmt: skip
def test_slurm_values(key, value, message):
    got = messages(slurm_inventory(**{key: value}))
    assert got == [message]


def test_scheduler_override_replaces_the_kind_only():
    data = {"scheduler": {"kind": "ssh", "nodes": 2}, "hosts": []}
    assert with_scheduler_kind(data, "slurm") == {"scheduler": {"kind": "slurm", "nodes": 2}, "hosts": []}
    assert data["scheduler"]["kind"] == "ssh"  # the input is not changed
    assert with_scheduler_kind({"hosts": []}, "kubernetes") == {"hosts": [], "scheduler": {"kind": "kubernetes"}}


def test_load_inventory_with_scheduler_override(tmp_path):
    data = copy.deepcopy(BASE)
    for key in ("spares", "master"):
        data.pop(key)
    for h in data["hosts"]:
        h.pop("nic")
    data["scheduler"] = {"slurm": {"login": "npu-a"}}
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_inventory(path).scheduler.kind == "ssh"
    inv = load_inventory(path, scheduler="slurm")
    assert (inv.scheduler.kind, inv.nnodes) == ("slurm", 2)
    assert load_inventory(path, scheduler="kubernetes").nnodes == 2
    data["hosts"][0]["nic"] = "eth0"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InventoryError) as e:
        load_inventory(path, scheduler="slurm")
    assert len(e.value.lines) == 1 and "hosts[0].nic: applies only to kind ssh" in e.value.lines[0]
    # the CLI: one line per violation, exit 2
    data["scheduler"]["slurm"]["gres"] = "gpu:1"
    data["image"]["flavor"] = "ascend"
    path.write_text(yaml.safe_dump(data))
    r = subprocess.run([sys.executable, "-m", "q7x2_deploy.cli", "validate", str(path), "--scheduler", "slurm"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "scheduler.slurm.gres: asks for 1 per node but npus_per_node is 8" in r.stderr
    assert "Traceback" not in r.stderr
