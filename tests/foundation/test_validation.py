"""One test per validation rule, with its exact message; and the CLI's one-line, exit-2 contract."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from q7x2_deploy.validation import validate_data, validate_text

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "inventory.example.yaml").read_text())


def messages(data: dict) -> list[str]:
    _, violations = validate_data(data)
    return [f"{v.dotted}: {v.message}" for v in violations]


def edited(**changes) -> dict:
    """The example inventory with dotted-path changes, e.g. {'job.parallelism.tp': 3}."""
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = data
        for p in parents:
            node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
        if value is ...:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return data


def test_example_is_valid():
    assert messages(BASE) == []


def test_tp_must_divide_query_groups_and_heads():
    assert messages(edited(job__parallelism__tp=8)) == [
        "job.parallelism.tp: tp 8 does not divide the model's 4 query groups (choose tp in 1, 2, 4)",
        "job.parallelism.tp: tp 8 does not divide the model's 28 attention heads",
    ]


def test_pp_must_divide_layers():
    assert messages(edited(job__parallelism__pp=3, job__parallelism__tp=1)) == [
        "job.parallelism.pp: pp 3 does not divide the model's 28 layers (choose pp in 1, 2, 4, 7, 14, 28 or give num_layer_list)",
        "job.parallelism: world size 16 (2 hosts x 8 npus_per_node) is not divisible by tp x pp = 3",
    ]


def test_num_layer_list_length_and_sum():
    assert messages(edited(job__parallelism__num_layer_list=[10, 10, 8])) == [
        "job.parallelism.num_layer_list: has 3 entries but pp is 2: give one entry per pipeline stage",
    ]
    assert messages(edited(job__parallelism__num_layer_list=[13, 14])) == [
        "job.parallelism.num_layer_list: sums to 27 but the model has 28 layers",
    ]
    assert messages(edited(job__parallelism__num_layer_list=[12, 16])) == []


def test_world_must_be_divisible_by_tp_times_pp():
    assert messages(edited(job__parallelism__npus_per_node=6)) == [
        "job.parallelism: world size 12 (2 hosts x 6 npus_per_node) is not divisible by tp x pp = 8",
    ]


def test_global_batch_divisible_by_micro_times_dp():
    assert messages(edited(job__training__global_batch_size=63)) == [
        "job.training.global_batch_size: 63 is not divisible by micro_batch_size x data-parallel size = 1 x 2",
    ]


def test_npus_per_node_at_most_the_hosts_devices():
    assert messages(edited(hosts__1__devices=4)) == [
        "hosts[1].devices: npus_per_node 8 exceeds the 4 NPU devices given to host 'npu-b'",
    ]
    assert messages(edited(container__devices=[0, 1, 2, 3, 4, 5, 6])) == [
        "job.parallelism.npus_per_node: npus_per_node 8 exceeds the 7 NPU devices given to host 'npu-a'",
        "job.parallelism.npus_per_node: npus_per_node 8 exceeds the 7 NPU devices given to host 'npu-b'",
        "job.parallelism.npus_per_node: npus_per_node 8 exceeds the 7 NPU devices given to host 'npu-c'",  # the spare
    ]


def test_unique_names_addresses_and_ranks():
    assert messages(edited(hosts__1__name="npu-a")) == ["hosts[1].name: 'npu-a' is also used by hosts[0]; each host needs its own name"]
    assert messages(edited(hosts__1__address="192.0.2.11")) == ["hosts[1].address: '192.0.2.11' is also used by hosts[0]; each host needs its own address"]
    assert messages(edited(hosts__1__node_rank=0)) == ["hosts[1].node_rank: node_rank 0 is also hosts[0]'s (a host without node_rank takes its position)"]
    assert messages(edited(hosts__0__node_rank=5, hosts__1__node_rank=0)) == ["hosts[0].node_rank: node_rank 5 is out of range: ranks must be exactly 0..1"]
    assert messages(edited(hosts__0__node_rank=1, hosts__1__node_rank=0)) == []


def test_loopback_master_refused_with_several_hosts():
    assert messages(edited(hosts__0__address="localhost")) == [
        "hosts[0].address: 'localhost' is a loopback address: with 2 hosts every node must reach each host at a routable address"
    ]
    assert messages(edited(hosts__0__address="127.0.0.2")) == [
        "hosts[0].address: '127.0.0.2' is a loopback address: with 2 hosts every node must reach each host at a routable address"
    ]


def test_the_seed_guides_typo_is_not_an_address():
    assert messages(edited(hosts__0__address="locahost")) == [], "a DNS name is allowed"  # resolvable or not is `check`'s job
    assert messages(edited(hosts__0__address="loca host")) == ["hosts[0].address: 'loca host' is neither an IP address nor a DNS name"]


def test_master_host_must_exist():
    assert messages(edited(master__host="npu-c")) == ["master.host: 'npu-c' is not one of the hosts (npu-a, npu-b)"]


def test_ports_in_range():
    assert messages(edited(master__port=70000)) == ["master.port: Input should be less than or equal to 65535 (got 70000)"]
    assert messages(edited(ssh__port=0)) == ["ssh.port: Input should be greater than or equal to 1 (got 0)"]


def test_unknown_keys_rejected():
    assert messages(edited(job__parallelism__tensor_parallel=4)) == [
        "job.parallelism.tensor_parallel: unknown key (check its spelling; see inventory.example.yaml)"
    ]
    assert messages(edited(hosts__0__adress="x")) == ["hosts[0].adress: unknown key (check its spelling; see inventory.example.yaml)"]


def test_reserved_env_cannot_be_overridden():
    assert messages(edited(job__env={"MASTER_ADDR": "locahost"})) == [
        "job.env.MASTER_ADDR: MASTER_ADDR is computed by q7x2-deploy for every host and cannot be set here"
    ]
    assert messages(edited(hosts__1__env={"GPUS_PER_NODE": "8"})) == [
        "hosts[1].env.GPUS_PER_NODE: GPUS_PER_NODE is computed by q7x2-deploy for every host and cannot be set here"
    ]


def test_paths_must_be_under_a_volume():
    assert messages(edited(job__paths__save_dir="/data/ckpt")) == [
        "job.paths.save_dir: '/data/ckpt' is not under any container volume (/apps, /home); add its directory to container.volumes"
    ]


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"hosts__0__name": "a;rm -rf /"}, "hosts[0].name: 'a;rm -rf /' is not a host name ([A-Za-z0-9_.-], at most 63, starting with a letter or digit)"),
        ({"job__paths__logs": "/apps/logs; reboot"}, "job.paths.logs: path '/apps/logs; reboot' may contain only letters, digits and _ . / @ % + = : , ~ - (no spaces, quotes or shell metacharacters)"),
        ({"job__paths__logs": "/apps/../etc"}, "job.paths.logs: path '/apps/../etc' must not contain '..'"),
        ({"job__env": {"A": "x\ny"}}, "job.env.A: value 'x\\ny' contains a non-printing character (U+000A: newline, NUL, bidi override, ...)"),
        ({"job__env": {"A B": "x"}}, "job.env.'A B': environment variable name 'A B' must match [A-Za-z_][A-Za-z0-9_]* (at most 255 characters)"),
        ({"hosts__0__nic": "eth0 $(id)"}, "hosts[0].nic: 'eth0 $(id)' is not a network interface name (at most 15 of [A-Za-z0-9_.:-])"),
        ({"image__repository": "Q7X2/Bad Name"}, "image.repository: 'Q7X2/Bad Name' is not a Docker repository name (lowercase, at most 255 characters, e.g. registry:5000/team/image)"),
        ({"job__paths__hf_weights": "relative/dir"}, "job.paths.hf_weights: must be an absolute path, got 'relative/dir'"),
    ],
)
def test_hostile_values_rejected(change, expected):
    assert messages(edited(**change)) == [expected]


def test_cpu_flavor_cannot_run_mindspeed_tools():
    assert messages(edited(image__flavor="cpu", job__tools={"convert": "mindspeed"})) == [
        "job.tools.convert: mindspeed needs the ascend image flavor; the cpu image has only q7x2"
    ]


def test_min_lr_not_above_lr():
    assert messages(edited(job__training__min_lr=1.0)) == ["job.training.min_lr: min_lr 1.0 is larger than lr 1.25e-06"]


def test_hf_config_supplies_dims(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text('{"num_hidden_layers": 24, "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": true}')
    data = edited(job__model={"hf_config": str(cfg)})
    assert messages(data) == [
        "job.parallelism.tp: tp 4 does not divide the model's 2 query groups (choose tp in 1, 2)",
        "job.parallelism.tp: tp 4 does not divide the model's 14 attention heads",
    ]
    missing = edited(job__model={"hf_config": str(tmp_path / "nope.json")})
    assert messages(missing) == [f"job.model: {tmp_path / 'nope.json'}: no such file; give the HF checkpoint's config.json"]


def test_line_numbers_and_duplicate_keys():
    text = (ROOT / "inventory.example.yaml").read_text().replace("    tp: 4\n", "    tp: 3\n    tp: 3\n")
    _, violations = validate_text(text)
    lines = [v.format("inv.yaml") for v in violations]
    tp_line = text.splitlines().index("    tp: 3") + 1
    assert lines[0] == f"inv.yaml:{tp_line + 1}: job.parallelism.tp: duplicate key: YAML would silently keep only the last one"
    # YAML keeps the last duplicate, so the rule points at that one.
    assert lines[1].startswith(f"inv.yaml:{tp_line + 1}: job.parallelism.tp: tp 3 does not divide")


def test_yaml_syntax_error_names_the_line():
    _, violations = validate_text("hosts:\n  - name: a\n    address: [\n")
    assert len(violations) == 1 and violations[0].line is not None
    assert violations[0].format("x.yaml").startswith("x.yaml:")


def test_cli_prints_one_line_per_violation_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "inventory.example.yaml").read_text().replace("tp: 4", "tp: 8").replace("address: 192.0.2.12", "address: 192.0.2.11"))
    proc = subprocess.run([sys.executable, "-m", "q7x2_deploy.cli", "validate", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 3
    assert all(line.startswith(f"{bad}:") for line in err)
    ok = subprocess.run([sys.executable, "-m", "q7x2_deploy.cli", "validate", str(ROOT / "inventory.example.yaml")], capture_output=True, text=True)
    assert ok.returncode == 0 and "world size 16" in ok.stdout


def test_cli_missing_file(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "q7x2_deploy.cli", "plan", str(tmp_path / "none.yaml")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"{tmp_path / 'none.yaml'}: (top level): no such file"
