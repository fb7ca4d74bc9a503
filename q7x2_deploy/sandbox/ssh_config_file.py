"""The sandbox's OpenSSH client config (`up --bastion`): every host through the bastion.

The deployer's inventory points at it (`ssh.config`), so the deployer logs in exactly as
`ssh -F FILE sbx-1` does: the bastion first, then each host through it, both host keys
checked against the sandbox's known_hosts.
"""

from __future__ import annotations

from q7x2_deploy.sandbox.config import SandboxConfig

MARKER = "# Written by `q7x2-deploy sandbox up --bastion`"


def render(cfg: SandboxConfig, count: int) -> str:
    jump = cfg.bastion()
    lines = [f"{MARKER} (sandbox {cfg.name!r}); `sandbox down` removes it.",
             f"# Only {jump.name} ({jump.address}) accepts connections from this machine; every other host",
             "# is reached through it (ProxyJump). Use it as `ssh -F THIS_FILE sbx-1`.",
             "",
             f"Host {jump.name} {jump.address}",
             f"    HostName {jump.address}",
             ""]
    for i in range(1, count + 1):
        h = cfg.host(i)
        # Both the host's name and its address select the entry: the inventory names hosts
        # by address (what the other hosts reach them at), an operator types the name.
        lines += [f"Host {h.name} {h.address}", f"    HostName {h.address}", f"    ProxyJump {jump.name}", ""]
    lines += ["Host *",
              "    User root",
              f"    IdentityFile {cfg.identity}",
              "    IdentitiesOnly yes",
              f"    UserKnownHostsFile {cfg.known_hosts}",
              "    StrictHostKeyChecking yes",
              "    ConnectTimeout 10",
              "    ServerAliveInterval 5",
              ""]
    return "\n".join(lines)


def write(cfg: SandboxConfig, count: int) -> None:
    path = cfg.ssh_config
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(cfg, count), encoding="ascii")
    tmp.replace(path)
