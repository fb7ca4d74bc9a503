"""`q7x2-runtime run`: CANN env sourcing, log directory creation, tee, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from q7x2_runtime.run_step import cann_environment


def _runtime(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "q7x2_runtime.cli", *args], capture_output=True, text=True, env=env)


def test_sourcing_takes_over_the_scripts_environment(tmp_path):
    a = tmp_path / "toolkit set_env.sh"  # a space in the path must not matter
    a.write_text('export ASCEND_TOOLKIT_HOME=/usr/local/Ascend/ascend-toolkit/latest\nexport LD_LIBRARY_PATH="/opt/x:${LD_LIBRARY_PATH:-}"\n')
    b = tmp_path / "atb.sh"
    b.write_text("export ATB_HOME_PATH=/usr/local/Ascend/nnal/atb\n")
    env = cann_environment({"PATH": "/usr/bin:/bin", "KEEP": "1"}, (str(a), str(b), str(tmp_path / "absent.sh")))
    assert env["ASCEND_TOOLKIT_HOME"] == "/usr/local/Ascend/ascend-toolkit/latest"
    assert env["LD_LIBRARY_PATH"].startswith("/opt/x:")
    assert env["ATB_HOME_PATH"] == "/usr/local/Ascend/nnal/atb"
    assert env["KEEP"] == "1"


def test_no_scripts_leaves_the_environment_alone():
    assert cann_environment({"A": "b"}, ("/nonexistent/set_env.sh",)) == {"A": "b"}


def test_run_tees_to_a_log_in_a_new_directory_and_keeps_the_exit_code(tmp_path):
    log = tmp_path / "logs" / "deep" / "step.log"
    proc = _runtime("run", "--log", str(log), "--cwd", str(tmp_path), "--", sys.executable, "-c", "import os,sys; print('hello from', os.getcwd()); sys.exit(3)")
    assert proc.returncode == 3
    assert f"hello from {tmp_path}" in proc.stdout
    assert log.read_text() == proc.stdout


def test_run_reports_a_missing_command_in_one_line(tmp_path):
    proc = _runtime("run", "--", "no-such-command-q7x2")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"q7x2-runtime run: error: no-such-command-q7x2: command not found in the image (cwd {Path.cwd()})"]
    proc = _runtime("run", "--cwd", str(tmp_path / "missing"), "--", "true")
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
