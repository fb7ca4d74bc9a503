"""doctor's comparison rules and what it reads, on files laid out as in an image."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

from q7x2_deploy.render import AscendStack, image_pins
from q7x2_runtime.cli import main as runtime_main
from q7x2_runtime.doctor.cli import record
from q7x2_runtime.doctor.compare import compare, judge, versions_match
from q7x2_runtime.doctor.installed import cann_version, megatron_core_version, source_ref
from q7x2_runtime.doctor.pins import Pin, Pins, load_pins
from q7x2_runtime.errors import UserError
from q7x2_runtime.preprocess import unicode_classes


@pytest.mark.parametrize(("kind", "want", "have", "ok"), [
    ("dist", "2.1.0", "2.1.0", True),
    ("dist", "2.1.0", "2.1.0+cpu", True),  # pip's ==2.1.0 takes the +cpu build too
    ("dist", "2.1.0+cpu", "2.1.0", False),
    ("dist", "2.1.0", "2.1.0.post12", False),  # torch_npu's post releases are different builds
    ("dist", "2.1.0.post12", "2.1.0.post8", False),
    ("dist", "2.1.0", "2.1.1", False),
    ("python", "3.10", "3.10.14", True),
    ("python", "3.10", "3.11.2", False),
    ("python", "3.1", "3.10.14", False),  # components, not characters
    ("source", "2.0.0", "v2.0.0", True),
    ("source", "2.0.0", "2.1.0", False),
    ("cann", "8.0.RC3", "8.0.RC3", True),
    ("cann", "8.0.RC3", "8.0.RC2", False),
])
def test_versions_match(kind: str, want: str, have: str, ok: bool) -> None:
    assert versions_match(kind, want, have) is ok


def test_findings_say_what_differs() -> None:
    pins = [Pin("torch", "dist", "2.1.0", dist="torch"), Pin("torch_npu", "dist", "2.1.0.post12", dist="torch_npu"),
            Pin("apex", "dist", None, dist="apex"), Pin("CANN", "cann", "8.0.RC3")]
    found = compare(pins, {"torch": "2.1.0", "torch_npu": "2.1.0.post8", "apex": "0.1", "CANN": None})
    assert [f.verdict for f in found] == ["ok", "mismatch", "ok", "missing"]
    assert found[1].line() == "torch_npu: 2.1.0.post8 installed, pinned 2.1.0.post12"
    assert found[3].line() == "CANN: not found (pinned 8.0.RC3)"
    assert judge(Pin("apex", "dist", None, dist="apex"), None).line() == "apex: not found (pinned any version)"


def test_ascend_pins_are_the_stack_the_dockerfile_installs() -> None:
    stack = AscendStack()
    pins = {p.name: p for p in image_pins("ascend", python_version="3.10").components}
    assert pins["torch"].want == stack.torch_version == "2.1.0"
    assert pins["torch_npu"].want == stack.torch_npu_version == "2.1.0.post12"
    assert pins["MindSpeed-LLM"].want == stack.mindspeed_llm_ref and pins["MindSpeed sources"].want == stack.mindspeed_ref
    assert pins["Megatron core"].path == "/opt/MindSpeed-LLM/megatron" and pins["Megatron core"].want == "0.8.0"
    assert pins["Python"].want == "3.10" and not pins["Python"].record
    assert pins["CANN"].record and pins["CANN"].want is None  # taken from the base image at build time
    assert set(pins) >= {"Python", "CANN", "torch", "torch_npu", "apex", "MindSpeed", "MindSpeed-LLM", "Megatron core"}
    again = Pins.from_json(image_pins("ascend").to_json())
    assert again == image_pins("ascend")


def test_cann_version_from_the_toolkit_file(tmp_path: Path) -> None:
    info = tmp_path / "latest" / f"{platform.machine()}-linux" / "ascend_toolkit_install.info"
    info.parent.mkdir(parents=True)
    info.write_text("package_name=Ascend-cann-toolkit\nversion=8.0.RC3\ninnerversion=V100R001C19\n")
    assert cann_version({"ASCEND_TOOLKIT_HOME": str(tmp_path / "latest")}) == "8.0.RC3"
    other = tmp_path / "other" / "aarch64-linux" / "ascend_toolkit_install.info"  # any arch directory
    other.parent.mkdir(parents=True)
    other.write_text("version=8.1.RC1\n")
    assert cann_version({"ASCEND_HOME_PATH": str(tmp_path / "other")}, arch="none") == "8.1.RC1"


def test_megatron_and_source_versions_read_as_text(tmp_path: Path) -> None:
    core = tmp_path / "megatron" / "core"
    core.mkdir(parents=True)
    (core / "package_info.py").write_text('MAJOR = 0\nMINOR = 8\nPATCH = 0\nPRE_RELEASE = ""\nimport torch\n')
    assert megatron_core_version(tmp_path / "megatron") == "0.8.0"
    assert megatron_core_version(tmp_path / "nowhere") is None
    (tmp_path / ".q7x2-source.json").write_text(json.dumps({"tag": "v2.0.0", "commit": "3a712f5"}))
    assert source_ref(tmp_path) == "v2.0.0"
    (tmp_path / ".q7x2-source.json").write_text(json.dumps({"tag": None, "branch": "2.0.0_core_r0.8.0", "commit": "c721"}))
    assert source_ref(tmp_path) == "2.0.0_core_r0.8.0"  # a checkout of the branch the pin names


def _write_pins(path: Path, comps: list[Pin]) -> Path:
    path.write_text(Pins("cpu", comps).to_json())
    return path


def test_cli_exit_and_one_line_per_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    good = _write_pins(tmp_path / "good.json", [Pin("Python", "python", platform.python_version()),
                                               Pin("torch", "dist", torch.__version__.split("+")[0], dist="torch")])
    assert runtime_main(["doctor", "--pins", str(good)]) == 0
    assert "all 2 components match" in capsys.readouterr().out
    bad = _write_pins(tmp_path / "bad.json", [Pin("torch", "dist", "2.1.0", dist="torch"),
                                             Pin("torch_npu", "dist", "2.1.0.post12", dist="torch_npu"),
                                             Pin("Python", "python", "3.10")])
    assert runtime_main(["doctor", "--pins", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"torch: {torch.__version__} installed, pinned 2.1.0", "torch_npu: not found (pinned 2.1.0.post12)",
                   f"Python: {platform.python_version()} installed, pinned 3.10"]
    assert runtime_main(["doctor", "--pins", str(bad), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and [f["verdict"] for f in out["findings"]] == ["mismatch", "missing", "mismatch"]


def test_record_fills_only_open_pins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    # What preprocess checks once per installation is recorded too; the libraries' real
    # comparison is the image test's.
    monkeypatch.setenv("Q7X2_SHARE_DIR", str(tmp_path / "share"))
    monkeypatch.setattr(unicode_classes, "disagreement", lambda c: "differs on U+00AA" if c == r"\p{L}" else None)
    pins = _write_pins(tmp_path / "p.json", [Pin("Python", "python", None, record=True),
                                            Pin("numpy", "dist", None, dist="numpy", record=True),
                                            Pin("torch", "dist", None, dist="torch")])
    assert runtime_main(["doctor", "--pins", str(pins), "--record"]) == 0
    filled = {p.name: p for p in load_pins(pins).components}
    assert filled["Python"].want == platform.python_version() and not filled["Python"].record
    assert filled["numpy"].want is not None and filled["torch"].want is None  # not recordable: stays open
    out = capsys.readouterr().out
    assert "preprocess: differs on U+00AA: preprocess will use the exact HF path; recorded in" in out
    tables = sorted((tmp_path / "share" / "transformers-imports").glob("*.json"))
    assert f"preprocess: transformers' import tables: {len(tables)} recorded" in out and tables
    assert unicode_classes.cached_verdict(tmp_path / "user-cache") == (True, "differs on U+00AA")
    _write_pins(pins, [Pin("CANN", "cann", None, record=True)])
    with pytest.raises(UserError, match="CANN: not found while building the image"):
        record(load_pins(pins))


def test_missing_or_broken_pins_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert runtime_main(["doctor", "--pins", str(tmp_path / "none.json")]) == 2
    assert "no pins file" in capsys.readouterr().err
    (tmp_path / "x.json").write_text("{}")
    assert runtime_main(["doctor", "--pins", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreadable pins" in err[0]


def test_check_deep_container_gets_env_and_read_only_mounts_only() -> None:
    from q7x2_deploy.backends.docker_cli import run_once_argv
    from q7x2_deploy.executor.image_doctor import DOCTOR_COMMAND, DOCTOR_LABEL, doctor_mounts
    from q7x2_deploy.plan import build_plan
    from q7x2_deploy.validation import load_inventory

    host = build_plan(load_inventory(Path(__file__).resolve().parents[2] / "inventory.example.yaml")).hosts[0]
    argv = run_once_argv("img:1", DOCTOR_COMMAND, env=host.env, mounts=doctor_mounts(host), labels={DOCTOR_LABEL: "1"})
    assert argv[:5] == ["docker", "run", "--rm", "--network", "none"]
    assert argv[-4:] == ["img:1", "q7x2-runtime", "doctor", "--json"]
    assert "--device" not in argv and "-d" not in argv
    mounts = [v for f, v in zip(argv, argv[1:]) if f == "-v"]
    assert mounts and all(m.endswith(":ro") for m in mounts)
    assert not any(m.split(":")[1] == "/etc/q7x2" for m in mounts)  # the job dir, created by `up`
    assert "/usr/local/Ascend/driver:/usr/local/Ascend/driver:ro" in mounts
    assert sum(f == "-e" for f in argv) == sum(f == "-e" for f in host.docker_run)


def test_check_deep_verdicts() -> None:
    from q7x2_deploy.executor.image_doctor import judge_doctor
    from q7x2_deploy.transport import CommandResult

    def result(rc: int, findings: list[dict], stderr: str = "") -> CommandResult:
        return CommandResult(("docker",), rc, json.dumps({"flavor": "ascend", "ok": rc == 0, "findings": findings}),
                             stderr)

    ok = judge_doctor(result(0, [{"name": "torch", "want": "2.1.0", "have": "2.1.0", "verdict": "ok"}]), "img")
    assert ok.level == "ok" and ok.detail.startswith("1 versions match the image's pins (torch 2.1.0")
    bad = judge_doctor(result(1, [
        {"name": "torch", "want": "2.1.0", "have": "2.1.0", "verdict": "ok"},
        {"name": "torch_npu", "want": "2.1.0.post12", "have": "2.1.0.post8", "verdict": "mismatch"},
        {"name": "CANN", "want": "8.0.RC3", "have": None, "verdict": "missing"}]), "img")
    assert bad.level == "fail"
    assert bad.detail == "torch_npu: 2.1.0.post8 installed, pinned 2.1.0.post12; CANN: not found (pinned 8.0.RC3)"
    old = judge_doctor(CommandResult(("docker",), 2, "", "q7x2-runtime doctor: error: no pins file\n"), "img")
    assert old.level == "fail" and "could not run in img (exit 2)" in old.detail and "no pins file" in old.detail
    absent = judge_doctor(CommandResult(("docker",), 127, "", "exec: q7x2-runtime: not found\n"), "img")
    assert absent.level == "fail" and "exit 127" in absent.detail
