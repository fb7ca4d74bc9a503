"""How the deployer reaches a host: run an argv, stream its lines, write a file, feed stdin.

The orchestration above this package only sees `Transport`; paramiko stays in `ssh.py`.
"""

from q7x2_deploy.transport.base import (
    CommandResult,
    HostUnreachable,
    RemoteProcess,
    Transport,
    TransportError,
    quote_argv,
)
from q7x2_deploy.transport.ssh import SSHConfig, SSHTransport

__all__ = [
    "CommandResult",
    "HostUnreachable",
    "RemoteProcess",
    "SSHConfig",
    "SSHTransport",
    "Transport",
    "TransportError",
    "quote_argv",
]
