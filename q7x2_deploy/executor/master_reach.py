"""Can every host open a TCP connection to MASTER_ADDR:MASTER_PORT? Checked before the job runs
by a short-lived listener on the master (the port is free, so nothing else answers there): it
accepts one connection per host and exits, or gives up after LISTEN_S seconds.

"Free on the master" is not enough: a firewall between hosts, or a MASTER_ADDR that only
resolves on some of them, lets every rank start and then wait for the rendezvous until
torchrun's timeout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.executor.probe import Check

if TYPE_CHECKING:
    from q7x2_deploy.executor.preflight import HostReport

LISTEN_S = 30
CONNECT_S = 5

# argv: family (4|6), port, connections to wait for, seconds. Waits for each peer to close
# first, so the TIME_WAIT state stays on the peers and the master port is free again at once;
# ends as soon as its stdin closes (the checker is done or gone), so it never holds the port.
_LISTENER = r"""
import select, socket, sys, time
fam, port, want, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET6 if fam == "6" else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("::" if fam == "6" else "0.0.0.0", port))
    s.listen(128)
except OSError as e:
    print("error", e, flush=True)
    sys.exit(1)
print("listening", flush=True)
deadline, got = time.time() + limit, 0
while got < want and time.time() < deadline:
    ready = select.select([s, sys.stdin], [], [], 0.5)[0]
    if sys.stdin in ready and not sys.stdin.buffer.read1(1):
        break
    if s not in ready:
        continue
    c, peer = s.accept()
    c.settimeout(2)
    try:
        c.recv(1)
    except OSError:
        pass
    c.close()
    got += 1
    print("from", peer[0], flush=True)
print("done", got, flush=True)
"""

# $1 address, $2 port. python3 where it exists, else bash's /dev/tcp.
_CONNECT = r"""
if command -v python3 >/dev/null 2>&1; then
  exec python3 -c '
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
except OSError as e:
    print(e); sys.exit(1)' "$1" "$2" "$3"
elif command -v bash >/dev/null 2>&1; then
  exec timeout "$3" bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>&1
fi
echo "neither python3 nor bash on this host to test a TCP connection with"; exit 3
"""


def check_master_reachable(cluster: Cluster, reports: list[HostReport]) -> None:
    """The `reach` row of every host."""
    plan = cluster.plan
    master = cluster.master
    by_host = {r.host: r for r in reports}
    port_row = by_host[master.name].get("port")
    if port_row is None or port_row.level != "ok":
        for r in reports:
            r.replace(Check("reach", "skip", "master port not free to listen on"))
        return
    able = [h for h in cluster.hosts if (ssh := by_host[h.name].get("ssh")) is not None and ssh.level == "ok"]
    fam = "6" if ":" in plan.master_addr else "4"
    try:
        listener = cluster.transport(master).start(
            ["python3", "-c", _LISTENER, fam, str(plan.master_port), str(len(able)), str(LISTEN_S)])
    except DeployError as e:
        for r in reports:
            r.replace(Check("reach", "warn", f"cannot listen on the master to test: {e}"))
        return
    lines = listener.lines()
    first = next(lines, "")
    if first.strip() != "listening":
        listener.close()
        for r in reports:
            r.replace(Check("reach", "warn", f"cannot listen on {master.name}:{plan.master_port} to test it: "
                                             f"{first.strip()[:120] or 'no python3 there?'}"))
        return
    try:
        outcomes = for_each(able, lambda h: cluster.transport(h).run(
            ["sh", "-c", _CONNECT, "sh", plan.master_addr, str(plan.master_port), str(CONNECT_S)],
            timeout=CONNECT_S + 30), key=lambda h: h.name)
    finally:
        listener.close_stdin()  # done: the listener ends now, whoever did not connect
        for _ in lines:
            pass
        listener.close()
    target = f"{plan.master_addr}:{plan.master_port}"
    for h in cluster.hosts:
        o = outcomes.get(h.name)
        r = by_host[h.name]
        if o is None:
            r.replace(Check("reach", "skip", "host not checked"))
        elif o.value is None:
            r.replace(Check("reach", "fail", f"cannot test a connection to master {target}: {o.error}"))
        elif o.value.ok:
            r.replace(Check("reach", "ok", f"connects to master {target}"))
        else:
            why = (o.value.stdout.strip() or o.value.stderr.strip() or f"exit {o.value.exit_status}").splitlines()[-1]
            r.replace(Check("reach", "fail", f"cannot connect to master {master.name} at {target}: {why[:120]}"))
