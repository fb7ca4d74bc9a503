"""Reading the Slurm job's output: host/rank tags from srun --label, the failed node named."""

from __future__ import annotations

from q7x2_deploy.backends.slurm.job import OutputFollower, failure_summary
from q7x2_deploy.sandbox import inventory_file
from q7x2_deploy.sandbox.config import SandboxConfig
from q7x2_deploy.validation import validate_data


def test_labeled_lines_get_the_node_and_rank():
    got: list[tuple[str, str, str]] = []
    f = OutputFollower(None, "out", lambda h, r, t: got.append((h, r, t)))  # type: ignore[arg-type]
    f.nodes = ["sbx-1", "sbx-2"]
    for line in ["q7x2: Slurm job 3 on sbx-[1-2]", "0: converted", " 1:  [2026] iteration 1/30", "srun: error: x", "7: late"]:
        f._tag(line)
    assert got == [("slurm", "-", "q7x2: Slurm job 3 on sbx-[1-2]"), ("sbx-1", "0", "converted"),
                   ("sbx-2", "1", " [2026] iteration 1/30"), ("slurm", "-", "srun: error: x"), ("node7", "7", "late")]


def test_failure_summary_names_the_node_of_the_failed_step():
    lines = ["srun: error: sbx-1: task 0: Exited with exit code 143",
             "1: q7x2: train: pretrain failed on sbx-2 (node rank 1): exit status 137"]
    assert failure_summary(lines) == "pretrain (train) failed on sbx-2 (node rank 1) with exit status 137"
    assert failure_summary(lines[:1]) == "task 0 failed on sbx-1 with exit status 143"
    assert failure_summary(["0: fine"]) is None


def test_the_slurm_sandbox_inventory_validates():
    cfg = SandboxConfig(name="t")
    data = inventory_file.build(cfg, 2, slurm=True)
    data["job"]["model"] = {"preset": "qwen2.5-7b"}  # the sample's config.json exists only once `sandbox up` wrote it
    inv, violations = validate_data(data)
    assert violations == [] and inv is not None
    assert (inv.scheduler.kind, inv.nnodes, inv.slurm().login) == ("slurm", 2, "sbx-1")
    _, ssh_view = validate_data({**data, "scheduler": {**data["scheduler"], "kind": "ssh"}})
    assert [v.dotted for v in ssh_view] == ["scheduler.nodes"]
