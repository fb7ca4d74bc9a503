"""`up` and `down` on Kubernetes, against a fake at the client boundary (tests/kubernetes/fake_api.py).

No API server runs on these machines: these tests show what the apply path sends, in which
order, how it follows pods and streams their logs, and what it says when something fails.
They do not show that a real cluster accepts it (the offline schema tests come closest).
"""

from __future__ import annotations

import io

import pytest
from urllib3.exceptions import MaxRetryError

from q7x2_deploy.backends.kubernetes import apply
from q7x2_deploy.backends.kubernetes.manifests import Manifests, build_manifests
from q7x2_deploy.errors import DeployError
from q7x2_deploy.runs.output import LogSink
from q7x2_deploy.validation import validate_data
from q7x2_runtime.errors import UserError
from tests.kubernetes.fake_api import FakeServer, PodState, Tick, api_error
from tests.kubernetes.test_manifests import kubernetes_data

ASCENDJOBS = "ascendjobs.mindxdl.gitee.com/v1"
VCJOBS = "jobs.batch.volcano.sh/v1alpha1"


def _manifests(kind: str = "AscendJob", **changes) -> Manifests:
    inv, violations = validate_data(kubernetes_data(2, kind, **changes))
    assert not violations
    return build_manifests(inv)


def _sink(out: io.StringIO) -> LogSink:
    return LogSink("qwen25-7b", stream=out, keep_files=False)


def _prepare_ticks(last_phase: str = "Succeeded", codes: dict[str, int] | None = None) -> list[Tick]:
    done = {"succeeded": 1} if last_phase == "Succeeded" else {"failed": 1}
    return [
        Tick([PodState("npu-a", None, "prepare", "Pending")], {"active": 1}),
        Tick([PodState("npu-a", None, "prepare", "Running")], {"active": 1}),
        Tick([PodState("npu-a", None, "prepare", last_phase, codes or {"convert": 0, "preprocess": 0})], done),
    ]


def _ascend_status(last: str) -> dict:
    return {"conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "False"}, {"type": last, "status": "True"}]}


def _train_ticks(final_status: dict, worker_phase: str = "Succeeded", worker_code: int = 0) -> list[Tick]:
    running = {"conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]}
    return [
        Tick([PodState("npu-a", "0", "master", "Pending"), PodState("npu-b", "1", "worker", "Pending")], {"conditions": [{"type": "Created", "status": "True"}]}),
        Tick([PodState("npu-a", "0", "master", "Running"), PodState("npu-b", "1", "worker", "Running")], running),
        Tick([PodState("npu-a", "0", "master", "Succeeded", {"ascend": 0}), PodState("npu-b", "1", "worker", worker_phase, {"ascend": worker_code})], final_status),
    ]


LOGS = {
    ("qwen25-7b-prepare-x7k2q", "convert"): ["converted 4 shards"],
    ("qwen25-7b-prepare-x7k2q", "preprocess"): ["wrote /apps/datasets/alpaca/alpaca_text_document.bin"],
    ("qwen25-7b-master-0", "ascend"): ["q7x2-runtime pretrain: node 0: start point: first", "iteration 1/2000 | lm loss 11.9"],
    ("qwen25-7b-worker-0", "ascend"): ["q7x2-runtime pretrain: node 1: start point: first"],
}


def test_up_prepares_then_trains_and_streams_every_pod():
    m = _manifests()
    server = FakeServer({"prepare": _prepare_ticks(), "train": _train_ticks(_ascend_status("Succeeded"))}, LOGS)
    out = io.StringIO()
    assert apply.up(server, m, _sink(out), sleep=lambda s: None) == 0
    text = out.getvalue()
    # What went to the server is exactly what `plan` prints, in apply order.
    created = [c for c in server.calls if c[0] == "create"]
    assert [(c[1], c[2]) for c in created] == [("configmaps", "qwen25-7b-jobspec"), ("configmaps", "rings-config-qwen25-7b"),
                                              ("jobs", "qwen25-7b-prepare"), (ASCENDJOBS, "qwen25-7b")]  # fmt: skip
    assert [o for o in server.created("configmaps")] == m.objects[:2]
    assert {k: v for k, v in server.created(ASCENDJOBS)[0].items() if k != "status"} == m.training
    # Training is created only once prepare has succeeded (its last poll came first).
    polls = [i for i, c in enumerate(server.calls) if c == ("read", "jobs", "qwen25-7b-prepare")]
    assert server.calls.index(("create", ASCENDJOBS, "qwen25-7b")) > polls[-1]
    for line in ["[npu-a prepare] converted 4 shards", "[npu-a prepare] wrote /apps/datasets/alpaca/alpaca_text_document.bin",
                 "[npu-a 0] iteration 1/2000 | lm loss 11.9", "[npu-b 1] q7x2-runtime pretrain: node 1: start point: first",
                 "pod qwen25-7b-master-0 (node rank 0) on npu-a: Pending", "pod qwen25-7b-worker-0 (node rank 1) on npu-b: Running",
                 "pod qwen25-7b-master-0 (node rank 0) on npu-a: Succeeded", "train: AscendJob qwen25-7b succeeded"]:  # fmt: skip
        assert line in text.splitlines(), line
    # Each phase change once, not once per poll.
    assert text.count("on npu-a: Running") == 2  # the prepare pod and the master


def test_a_failed_prepare_names_the_step_and_never_starts_training():
    m = _manifests()
    server = FakeServer({"prepare": _prepare_ticks("Failed", {"convert": 0, "preprocess": 2})}, LOGS)
    with pytest.raises(DeployError) as e:
        apply.up(server, m, _sink(io.StringIO()), sleep=lambda s: None)
    assert str(e.value) == ("prepare (Job qwen25-7b-prepare) failed: pod qwen25-7b-prepare-x7k2q on npu-a (node rank prepare): "
                            "preprocess exited 2; training was not started")  # fmt: skip
    assert not server.created(ASCENDJOBS)


def test_a_failed_node_is_named_with_its_rank():
    m = _manifests()
    server = FakeServer({"prepare": _prepare_ticks(), "train": _train_ticks(_ascend_status("Failed"), "Failed", 1)}, LOGS)
    with pytest.raises(DeployError, match=r"^training \(AscendJob qwen25-7b\) failed: pod qwen25-7b-worker-0 on npu-b \(node rank 1\): ascend exited 1$"):
        apply.up(server, m, _sink(io.StringIO()), sleep=lambda s: None)


def test_volcano_job_outcome_is_its_phase():
    m = _manifests("VolcanoJob", job__storage="per-node")
    assert m.prepare is None
    running = {"state": {"phase": "Running"}}
    server = FakeServer({"train": [Tick([PodState("n1", "0", "master", "Running"), PodState("n2", "1", "worker", "Running")], running),
                                   Tick([PodState("n1", "0", "master", "Succeeded"), PodState("n2", "1", "worker", "Succeeded")],
                                        {"state": {"phase": "Completed"}})]})  # fmt: skip
    assert apply.up(server, m, _sink(io.StringIO()), sleep=lambda s: None) == 0
    assert [c[1] for c in server.calls if c[0] == "create"] == ["configmaps", "configmaps", VCJOBS]
    # per-node storage: the init containers' logs are streamed before the trainer's
    logged = [c[2] for c in server.calls if c[0] == "log" and c[2].startswith("qwen25-7b-master-0/")]
    assert logged == ["qwen25-7b-master-0/convert", "qwen25-7b-master-0/preprocess", "qwen25-7b-master-0/ascend"]
    server = FakeServer({"train": [Tick([PodState("n1", "0", "master", "Failed", {"ascend": 137})], {"state": {"phase": "Aborted"}})]})
    with pytest.raises(DeployError, match="ascend exited 137"):
        apply.up(server, m, _sink(io.StringIO()), sleep=lambda s: None)


def test_up_refuses_a_job_that_exists_and_creates_nothing():
    m = _manifests()
    server = FakeServer()
    server.create(ASCENDJOBS, "llm", m.training)
    server.calls.clear()
    with pytest.raises(UserError, match=r"AscendJob qwen25-7b already exist\(s\) in namespace llm: `q7x2-deploy down --scheduler kubernetes`"):
        apply.up(server, m, _sink(io.StringIO()), sleep=lambda s: None)
    assert not [c for c in server.calls if c[0] == "create"]


def test_configmaps_left_by_an_earlier_run_are_replaced():
    m = _manifests(job__storage="per-node")
    server = FakeServer({"train": _train_ticks(_ascend_status("Succeeded"))})
    stale = {**m.objects[0], "data": {"job.json": "{}"}}
    server.create("configmaps", "llm", stale)
    apply.up(server, m, _sink(io.StringIO()), sleep=lambda s: None)
    assert ("replace", "configmaps", "qwen25-7b-jobspec") in server.calls
    assert server.objects[("configmaps", "llm", "qwen25-7b-jobspec")] == m.objects[0]


def test_a_refusing_server_is_one_line():
    m = _manifests()
    server = FakeServer()
    server.fail[("create", "configmaps")] = api_error(403, "Forbidden", 'configmaps is forbidden: User "ci" cannot create resource "configmaps" in the namespace "llm"')
    with pytest.raises(DeployError) as e:
        apply.up(server, m, _sink(io.StringIO()), sleep=lambda s: None)
    assert str(e.value) == ('creating ConfigMap qwen25-7b-jobspec: the API server answered 403 Forbidden: configmaps is forbidden: '
                            'User "ci" cannot create resource "configmaps" in the namespace "llm"')  # fmt: skip


def test_an_unreachable_server_is_one_line():
    m = _manifests()
    server = FakeServer()
    server.fail[("read", "jobs")] = MaxRetryError(None, "/apis/batch/v1/namespaces/llm/jobs/qwen25-7b-prepare", "Connection refused")
    with pytest.raises(DeployError, match=r"^reading Job qwen25-7b-prepare: cannot reach the API server \(MaxRetryError"):
        apply.up(server, m, _sink(io.StringIO()), sleep=lambda s: None)


def test_down_deletes_everything_once_and_is_idempotent():
    m = _manifests()
    server = FakeServer({"prepare": _prepare_ticks(), "train": _train_ticks(_ascend_status("Succeeded"))}, LOGS)
    apply.up(server, m, _sink(io.StringIO()), sleep=lambda s: None)
    assert apply.down(server, m) == ["AscendJob qwen25-7b", "Job qwen25-7b-prepare", "ConfigMap qwen25-7b-jobspec", "ConfigMap rings-config-qwen25-7b"]
    assert server.objects == {}
    # the training job first, so its pods stop before anything they read goes; pods go with their job
    assert server.deletes[:2] == [(ASCENDJOBS, "qwen25-7b", "Background"), ("jobs", "qwen25-7b-prepare", "Background")]
    assert apply.down(server, m) == []


def test_pod_view_reads_the_clients_own_models():
    from kubernetes import client

    pod = client.V1Pod.from_dict({
        "metadata": {"name": "qwen25-7b-worker-2"},
        "spec": {"nodeName": "npu-d", "containers": [{"name": "ascend", "image": "i", "env": [{"name": "RANK", "value": "3"}]}]},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "ascend", "image": "i", "imageID": "", "ready": False, "restartCount": 0,
                                                            "state": {"terminated": {"exitCode": 1}}}]},
    })  # fmt: skip
    view = apply.pod_view(pod)
    assert (view.name, view.node, view.rank, view.phase, view.exit_codes) == ("qwen25-7b-worker-2", "npu-d", "3", "Failed", {"ascend": 1})


def _inventory_file(tmp_path, **kube):
    import yaml

    data = kubernetes_data(2, "AscendJob", job__storage="per-node")
    data["scheduler"]["kubernetes"].update(kube)
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_commands_dispatch_to_the_kubernetes_backend(tmp_path, monkeypatch, capsys):
    import json

    from q7x2_deploy.cli import main

    monkeypatch.setenv("Q7X2_RUNS_DIR", str(tmp_path / "runs"))
    server = FakeServer({"train": _train_ticks(_ascend_status("Succeeded"))}, LOGS)
    kubeconfigs = []
    monkeypatch.setattr(apply, "connect", lambda path: kubeconfigs.append(path) or server)
    path = _inventory_file(tmp_path, kubeconfig="~/.kube/site.yaml")
    assert main(["up", str(path), "--detach"]) == 0
    assert kubeconfigs == ["~/.kube/site.yaml"]
    assert [c[1] for c in server.calls if c[0] == "create"] == ["configmaps", "configmaps", ASCENDJOBS]
    assert main(["status", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    status = json.loads(out[out.index("{"):])
    assert status["state"] == "running" and [p["rank"] for p in status["pods"]] == ["0", "1"]
    assert main(["logs", str(path)]) == 0
    out = capsys.readouterr().out
    assert "[npu-a 0] iteration 1/2000 | lm loss 11.9" in out and "[npu-b 1] q7x2-runtime pretrain: node 1: start point: first" in out
    assert ("log", "pods", "qwen25-7b-master-0/ascend") in server.calls
    assert main(["logs", str(path), "--host", "npu-b"]) == 0
    out = capsys.readouterr().out
    assert "[npu-b 1]" in out and "[npu-a 0]" not in out
    assert main(["logs", str(path), "--since", "10m"]) == 2
    assert "logs --since: not with --scheduler kubernetes" in capsys.readouterr().err
    assert main(["down", str(path)]) == 0
    assert "deleted from namespace llm: AscendJob qwen25-7b, ConfigMap qwen25-7b-jobspec, ConfigMap rings-config-qwen25-7b" in capsys.readouterr().out
    assert main(["down", str(path)]) == 0
    assert "nothing of job qwen25-7b in namespace llm" in capsys.readouterr().out


def test_a_missing_kubeconfig_is_one_line(tmp_path, capsys):
    from q7x2_deploy.cli import main

    path = _inventory_file(tmp_path, kubeconfig=str(tmp_path / "no-such-config"))
    assert main(["up", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"scheduler.kubernetes.kubeconfig: {tmp_path / 'no-such-config'} does not exist" in err and "Traceback" not in err
    bad = tmp_path / "bad-config"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    path = _inventory_file(tmp_path, kubeconfig=str(bad))
    assert main(["down", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"kubeconfig {bad}:" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
