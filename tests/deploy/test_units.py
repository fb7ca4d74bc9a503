"""Pure pieces of the executor: parsing, quoting helpers, the per-job lock, the image tee."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from deploy_fixtures import megatron_line
from hypothesis import given
from hypothesis import strategies as st

from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.lock import JobLock
from q7x2_deploy.backends.docker_cli import split_stamp
from q7x2_deploy.executor.metrics import last_progress, losses
from q7x2_deploy.executor.preflight import _df_free_gib, _listening_ports, host_needs
from q7x2_deploy.executor.image_delivery import _Tee
from q7x2_deploy.plan import HostPlan, Mount


def test_progress_from_megatron_lines() -> None:
    lines = ["noise", megatron_line(1, 10, 3.5), "[default0]: " + megatron_line(2, 10, 3.25), "more noise"]
    p = last_progress(lines)
    assert p is not None and (p.iteration, p.train_iters, p.lm_loss) == (2, 10, 3.25)
    assert p.ms_per_iteration == pytest.approx(123.4) and p.tflops_per_device == pytest.approx(1.5)
    assert losses(lines) == [(1, 3.5), (2, 3.25)]


def test_host_needs_reads_devices_and_mounts_from_the_typed_plan() -> None:
    host = HostPlan(name="a", address="192.0.2.1", node_rank=0, ssh={}, env={},
                    job_file="/var/lib/q7x2/jobs/j/job.json", docker_run=[],
                    devices=["/dev/davinci3", "/dev/hisi_hdc"],
                    mounts=[Mount("/usr/local/Ascend/driver", "/usr/local/Ascend/driver", True), Mount("/apps", "/apps"),
                            Mount("/var/lib/q7x2/jobs/j", "/etc/q7x2", True)])
    needs = host_needs(host)
    assert needs.devices == ["/dev/davinci3", "/dev/hisi_hdc"]
    assert needs.mounts == ["/usr/local/Ascend/driver", "/apps"]  # the job directory is made by `up`
    assert needs.npu_indices == [3]


def test_docker_run_is_derived_from_the_typed_host_fields() -> None:
    from q7x2_deploy.validation import load_inventory
    from q7x2_deploy.plan import build_plan

    plan = build_plan(load_inventory(Path(__file__).resolve().parents[2] / "inventory.example.yaml"))
    for host in plan.hosts:
        run = host.docker_run
        assert [run[i + 1] for i, a in enumerate(run) if a == "--device"] == host.devices
        assert [run[i + 1] for i, a in enumerate(run) if a == "-v"] == [m.option() for m in host.mounts]
        assert host.mounts[-1].source == host.job_dir and host.mounts[-1].read_only
    assert [h.is_master for h in plan.hosts] == [True, False]


def test_proc_net_tcp_and_df_parsing() -> None:
    tcp = ("  sl  local_address rem_address   st tx_queue\n"
           "   0: 00000000:1770 00000000:0000 0A 00000000:00000000\n"
           "   1: 0100007F:1771 0100007F:9999 01 00000000:00000000\n")
    assert _listening_ports(tcp) == {6000}
    df = ("Filesystem 1024-blocks Used Available Capacity Mounted on\n"
          "/dev/vda 264000000 25000000 83886080 23% /\n")
    assert _df_free_gib(df) == {"/": 80.0}


def test_docker_timestamps_are_split_off() -> None:
    ln = split_stamp("2026-11-28T03:37:41.123456789Z hello world")
    assert (ln.stamp, ln.text) == ("2026-11-28T03:37:41.123456789Z", "hello world")
    assert split_stamp("no stamp here").stamp == ""


def test_second_lock_holder_is_refused(tmp_path: Path) -> None:
    with JobLock(tmp_path / "up.lock", "j"):
        with pytest.raises(DeployError, match=r"another `up` for job j is running .*pid \d+"):
            JobLock(tmp_path / "up.lock", "j").acquire()
    JobLock(tmp_path / "up.lock", "j").acquire()  # released with the first holder


@given(st.lists(st.binary(min_size=1, max_size=64), max_size=50))
def test_tee_gives_every_consumer_the_whole_stream(chunks: list[bytes]) -> None:
    tee = _Tee(["a", "b", "c"])
    got: dict[str, bytes] = {}

    def consume(name: str) -> None:
        got[name] = b"".join(tee.chunks(name))

    threads = [threading.Thread(target=consume, args=(n,)) for n in ("a", "b", "c")]
    for t in threads:
        t.start()
    tee.feed(iter(chunks))
    for t in threads:
        t.join(5)
    assert got == {n: b"".join(chunks) for n in ("a", "b", "c")}


def test_tee_keeps_feeding_others_when_one_consumer_dies() -> None:
    tee = _Tee(["ok", "dead"])
    tee.abandon("dead")
    out: list[bytes] = []
    t = threading.Thread(target=lambda: out.extend(tee.chunks("ok")))
    t.start()
    tee.feed(iter([b"x"] * 500))  # far more than one queue holds
    t.join(5)
    assert b"".join(out) == b"x" * 500


def test_probe_sections() -> None:
    from q7x2_deploy.executor.probe import parse_probe, split_rc as _rc

    sec = parse_probe("@image\nsha256:abc\n@rc 0\n@paths\n/dev/davinci9\n@tools\nnpu-smi\n@df\nFilesystem\n@end\n")
    assert _rc(sec["image"]) == (0, ["sha256:abc"])
    assert sec["paths"] == ["/dev/davinci9"] and sec["tools"] == ["npu-smi"] and sec["end"] == []


@pytest.mark.parametrize("want_ports", ["0", "1"])
def test_probe_script_quotes_hostile_paths_and_lists_ports_only_when_asked(tmp_path: Path, want_ports: str) -> None:
    """The probe as a host runs it (sh), with the docker CLI replaced by a stand-in on PATH."""
    import os
    import subprocess

    from q7x2_deploy.backends.docker_cli import DockerCLI
    from q7x2_deploy.executor.preflight import probe_script
    from q7x2_deploy.executor.probe import parse_probe

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text('#!/bin/sh\necho "sha256:feed $*"\n')
    (bin_dir / "docker").chmod(0o755)
    present = [tmp_path / "with space", tmp_path / "q'uote", tmp_path / "$(touch pwned)"]
    for d in present:
        d.mkdir()
    missing = [str(tmp_path / "gone; touch pwned2"), str(tmp_path / "-rf")]
    out = subprocess.run(["sh", "-c", probe_script(DockerCLI.probe_image_script), "sh", "img:1", want_ports, *map(str, present), *missing],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, cwd=tmp_path).stdout
    sec = parse_probe(out)
    assert sec["image"] == ["sha256:feed image inspect --format {{.Id}} img:1", "@rc 0"]
    assert sec["paths"] == missing
    assert not list(tmp_path.glob("pwned*"))
    free = _df_free_gib("\n".join(sec["df"]))
    assert free and all(v > 0 for v in free.values())
    assert (len(sec["tcp"]) > 0) == (want_ports == "1")
    assert sec["end"] == []


def test_converge_decisions_from_container_states() -> None:
    from deploy_fixtures import make_plan

    from q7x2_deploy.executor.cluster import Cluster
    from q7x2_deploy.backends.container_runtime import ContainerState
    from q7x2_deploy.executor.up import _all_done, _running_phase

    plan = make_plan("j", {"a": {}, "b": {}}, {"a": [("convert", "prepare", "x"), ("pretrain", "train", "x")],
                                               "b": [("pretrain", "train", "x")]}, Path("/tmp/none"))

    def st(name: str, phase: str, status: str, code: int = 0) -> ContainerState:
        return ContainerState(name, "id", status, code, {"q7x2.phase": phase}, "img", "", "")

    done = {"a": {"q7x2-j-convert-0": st("q7x2-j-convert-0", "prepare", "exited"),
                  "q7x2-j-pretrain-0": st("q7x2-j-pretrain-0", "train", "exited")},
            "b": {"q7x2-j-pretrain-1": st("q7x2-j-pretrain-1", "train", "exited")}}
    cluster = Cluster(plan)
    assert _all_done(cluster, done) and _running_phase(done) is None
    failed = {**done, "b": {"q7x2-j-pretrain-1": st("q7x2-j-pretrain-1", "train", "exited", 1)}}
    assert not _all_done(cluster, failed)
    preparing = {"a": {"q7x2-j-convert-0": st("q7x2-j-convert-0", "prepare", "running")}}
    assert _running_phase(preparing) == "prepare"


def test_each_attempt_sets_the_previous_logs_aside_and_keeps_the_last_ten(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from q7x2_deploy.runs.rundir import KEPT_ATTEMPTS, mark_finished, run_dir, start_attempt

    monkeypatch.setenv("Q7X2_RUNS_DIR", str(tmp_path))
    assert start_attempt("j") is None  # nothing to set aside
    moved = []
    for i in range(KEPT_ATTEMPTS + 2):
        (run_dir("j") / "h0.log").write_text(f"attempt {i}\n")
        mark_finished("j")
        for f in ("h0.log", "result.json"):  # every attempt ended in the same second
            os.utime(run_dir("j") / f, (1_700_000_000, 1_700_000_000))
        moved.append(start_attempt("j"))
        assert not (run_dir("j") / "h0.log").exists() and not (run_dir("j") / "result.json").exists()
    kept = sorted((run_dir("j") / "earlier").iterdir())
    assert len(kept) == KEPT_ATTEMPTS and len(set(moved)) == KEPT_ATTEMPTS + 2
    assert {(d / "h0.log").read_text() for d in kept} == {f"attempt {i}\n" for i in range(2, KEPT_ATTEMPTS + 2)}


NPU_SMI_TABLE = """\
+------------------------------------------------------------------------------------------------+
| npu-smi 23.0.1                   Version: 23.0.1                                               |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     910B3               | OK            | 90.1        38                0    / 0             |
| 0                         | 0000:C1:00.0  | 0           0    / 0          3300 / 65536         |
+===========================+===============+====================================================+
| 1     910B3               | Warning       | 91.0        39                0    / 0             |
| 0                         | 0000:C2:00.0  | 0           0    / 0          3300 / 65536         |
+===========================+===============+====================================================+
| 2     910B3               | Alarm         | 92.0        40                0    / 0             |
| 0                         | 0000:81:00.0  | 0           0    / 0          3300 / 65536         |
+===========================+===============+====================================================+
+---------------------------+---------------+----------------------------------------------------+
| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |
+===========================+===============+====================================================+
| No running processes found in NPU 0                                                            |
+===========================+===============+====================================================+
"""


def test_npu_smi_health_per_npu_and_verdicts() -> None:
    from q7x2_deploy.executor.npu_health import judge_npu_smi, parse_npu_smi

    assert parse_npu_smi(NPU_SMI_TABLE) == {0: "OK", 1: "Warning", 2: "Alarm"}
    lines = NPU_SMI_TABLE.splitlines() + ["@rc 0"]
    # NPUs the job does not use only warn, whatever their state.
    assert (judge_npu_smi(lines, [0]).level, judge_npu_smi(lines, [0]).detail) == ("warn", "not used: NPU 1 Warning, NPU 2 Alarm")
    assert (judge_npu_smi(lines, [0, 1]).level, judge_npu_smi(lines, [0, 1]).detail) == ("warn", "NPU 1 Warning; not used: NPU 2 Alarm")
    bad = judge_npu_smi(lines, [0, 1, 2])
    assert (bad.level, bad.detail) == ("fail", "unhealthy: NPU 2 Alarm, NPU 1 Warning")
    missing = judge_npu_smi(lines, [0, 7])  # a used NPU npu-smi does not know fails
    assert (missing.level, missing.detail) == ("fail", "NPU 7 not listed by npu-smi; not used: NPU 1 Warning, NPU 2 Alarm")
    assert judge_npu_smi(lines, []).level == "warn"  # the job uses no NPU: an Alarm elsewhere only warns
    healthy = [ln for ln in lines if "Warning" not in ln and "Alarm" not in ln]
    assert (judge_npu_smi(healthy, [0]).level, judge_npu_smi(healthy, [0]).detail) == ("ok", "NPU 0 healthy")
    failed = judge_npu_smi(["dcmi module initialize failed. ret is -8005", "@rc 8"], [0])
    assert (failed.level, failed.detail) == ("fail", "npu-smi info failed (exit 8): dcmi module initialize failed. ret is -8005")
    assert judge_npu_smi([], [0]).level == "fail"  # the probe never got to the end


def test_link_states_from_hccn_tool_lines() -> None:
    from q7x2_deploy.executor.npu_health import judge_links

    lines = ["1 0 link status: UP ", "0 0 link status: DOWN ", "3 255 hccn_tool: device 3 not found "]
    r = judge_links(lines, [0, 1, 2, 3])
    assert (r.level, r.detail) == ("fail", "link down on NPU 0, 2, 3")
    assert judge_links(lines, [1]).level == "ok"


def test_sandbox_npu_tools_speak_the_real_formats(tmp_path: Path) -> None:
    import subprocess

    from q7x2_deploy.executor.npu_health import judge_links, judge_npu_smi
    from q7x2_deploy.sandbox import ascend

    faults = tmp_path / "faults"
    smi, hccn = tmp_path / "npu-smi", tmp_path / "hccn_tool"
    smi.write_text(ascend._NPU_SMI.format(last=3, faults=faults))
    hccn.write_text(ascend._HCCN_TOOL.format(faults=faults, net=ascend.DEVICE_NET))
    smi.chmod(0o755)
    hccn.chmod(0o755)

    def probe() -> tuple[str, str]:
        out = subprocess.run([str(smi), "info"], capture_output=True, text=True)
        links = [f"{i} 0 " + subprocess.run([str(hccn), "-i", str(i), "-link", "-g"], capture_output=True,
                                            text=True).stdout.strip() for i in range(4)]
        return (judge_npu_smi(out.stdout.splitlines() + [f"@rc {out.returncode}"], [0, 1, 2, 3]).detail,
                judge_links(links, [0, 1, 2, 3]).detail)

    assert probe() == ("NPU 0-3 healthy", "4 links up")
    faults.write_text("health 2 Critical\nlink 1 DOWN\n")
    assert probe() == ("unhealthy: NPU 2 Critical", "link down on NPU 1")


def test_status_reads_the_newest_line_age_against_the_hosts_clock() -> None:
    from q7x2_deploy.backends.docker_cli import split_tail
    from q7x2_deploy.executor.status import _epoch, quiet_for

    assert _epoch("1970-01-01T00:00:10.5Z") == 10.5
    assert _epoch("1970-01-01T00:00:10.123456789Z") == pytest.approx(10.123456789)
    assert _epoch("1970-01-01T08:00:10+08:00") == 10.0
    with pytest.raises(ValueError):
        _epoch("yesterday")
    tail = split_tail("1970-01-01T00:00:01.000000000Z hello\nError: No such container\n@now 42\n")
    assert [ln.text for ln in tail.lines] == ["hello", "Error: No such container"] and tail.host_now == 42.0
    assert [quiet_for(x) for x in (None, 4.9, 187, 7500)] == ["-", "4s", "3m07s", "2h05m"]
