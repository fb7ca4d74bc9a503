"""The sandbox: a real multi-host cluster on one Linux machine.

Each sandbox host is a network namespace on a bridge with its own address, hostname (UTS
namespace), mount namespace (private /data, shared /shared, its own /run and /dev), PID
namespace, OpenSSH server and Docker engine. The deployer reaches it exactly as it reaches a
real host: SSH with a verified host key, then `docker` on the default socket.
"""
