"""The commands themselves (argparse, exit status, one-line errors) on a one-host inventory
whose host is this machine's throwaway sshd and root Docker engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from deploy_sshd import LocalSSHD

# Real containers on the root engine through a real sshd: seconds per test, so not in the fast tier.
pytestmark = [pytest.mark.skipif(subprocess.run(["docker", "info"], capture_output=True).returncode != 0,
                                 reason="no Docker engine answers"), pytest.mark.slow]


def _inventory(tmp: Path, sshd: LocalSSHD, port: int | None = None) -> Path:
    known = tmp / "known_hosts"
    known.write_text(sshd.known_hosts_line())
    apps = tmp / "apps"
    apps.mkdir(exist_ok=True)
    inv = {
        "ssh": {"user": "root", "port": port or sshd.port, "identity": str(sshd.identity),
                "known_hosts": str(known)},
        "hosts": [{"name": "local", "address": "127.0.0.1"}],
        "master": {"port": 6399},
        "image": {"repository": "q7x2-test/absent", "tag": "0", "flavor": "cpu", "distribution": "ssh"},
        "container": {"volumes": [str(apps)], "shm_size": "1g", "state_dir": str(tmp / "state")},
        "job": {"name": "cli-local", "paths": {k: f"{apps}/{k}" for k in
                ("hf_weights", "mcore_weights", "raw_dataset", "dataset_prefix", "save_dir", "logs")}},
    }
    path = tmp / "inventory.yaml"
    path.write_text(yaml.safe_dump(inv))
    return path


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "q7x2_deploy.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_check_status_logs_down_on_one_host(sshd: LocalSSHD, tmp_path: Path) -> None:
    inv = _inventory(tmp_path, sshd)
    r = _cli("check", str(inv), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "local: image: q7x2-test/absent:0 not present" in r.stdout and "all 1 hosts ready" in r.stdout
    r = _cli("status", str(inv), "--json", cwd=tmp_path)
    assert r.returncode == 0 and '"state": "absent"' in r.stdout
    r = _cli("logs", str(inv), cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == ""
    r = _cli("down", str(inv), cwd=tmp_path)
    assert r.returncode == 0 and "local: removed 0 container(s) of job cli-local" in r.stdout


def test_up_refuses_an_image_that_was_never_built(sshd: LocalSSHD, tmp_path: Path) -> None:
    r = _cli("up", str(_inventory(tmp_path, sshd)), cwd=tmp_path)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == (
        "q7x2-deploy up: error: image q7x2-test/absent:0 is not in the local Docker engine; "
        "run `q7x2-deploy build-image` first")


def test_unreachable_host_is_one_line_naming_it(sshd: LocalSSHD, tmp_path: Path) -> None:
    r = _cli("check", str(_inventory(tmp_path, sshd, port=1)), cwd=tmp_path)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("q7x2-deploy check: error: preflight failed on 1 host(s): local: ssh: cannot reach")
    assert "Traceback" not in r.stderr


def test_up_on_an_unreachable_host_shows_the_preflight_reason(sshd: LocalSSHD, tmp_path: Path) -> None:
    r = _cli("up", str(_inventory(tmp_path, sshd, port=1)), cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "preflight failed on 1 host(s): local: ssh: cannot reach root@127.0.0.1:1" in r.stderr
