"""`logs`: the job's output from every host, merged, each line prefixed with host and rank.

`docker logs --timestamps` lets a follower that lost its host resume exactly where it was
after reconnecting (`--since` the last timestamp seen, duplicates dropped).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.executor.containers import list_job_containers
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.executor.output import LogSink
from q7x2_deploy.plan import HostPlan

RECONNECT_DELAYS_S = (1, 2, 5, 10, 10, 30)


@dataclass(frozen=True)
class Line:
    stamp: str  # RFC 3339 with nanoseconds, sorts as text
    text: str


def split_stamp(raw: str) -> Line:
    stamp, sep, text = raw.partition(" ")
    if sep and len(stamp) > 20 and stamp[4] == "-" and stamp[10] == "T":
        return Line(stamp, text)
    return Line("", raw)


def _containers_in_order(cluster: Cluster, host: HostPlan) -> list[tuple[str, bool]]:
    found = list_job_containers(cluster.transport(host), cluster.plan.job_name)
    return [(s.container_name, found[s.container_name].running) for s in host.steps if s.container_name in found]


def _history(cluster: Cluster, host: HostPlan, since: str | None) -> list[Line]:
    t = cluster.transport(host)
    lines: list[Line] = []
    for name, _ in _containers_in_order(cluster, host):
        argv = ["docker", "logs", "--timestamps", *(["--since", since] if since else []), name]
        r = t.run(argv, timeout=600)
        if not r.ok and "No such container" not in r.stderr:
            raise DeployError(f"{host.name}: `docker logs {name}` failed: {r.last_lines(1)}")
        # stdout and stderr arrive separately; the timestamps put them back in order.
        raw = r.stdout.splitlines() + r.stderr.splitlines()
        lines.extend(sorted((split_stamp(x) for x in raw), key=lambda ln: ln.stamp))
    return lines


def show_logs(cluster: Cluster, sink: LogSink, *, since: str | None = None) -> None:
    """Everything so far, all hosts merged in time order."""
    outcomes = for_each(cluster.hosts, lambda h: _history(cluster, h, since), key=lambda h: h.name)
    merged: list[tuple[str, int, HostPlan, Line]] = []
    for i, h in enumerate(cluster.hosts):
        o = outcomes[h.name]
        if o.error is not None:
            sink.note(f"q7x2-deploy: {h.name}: {o.error}")
            continue
        merged.extend((ln.stamp, i, h, ln) for ln in (o.value or []))
    for _, _, h, ln in sorted(merged, key=lambda m: (m[0], m[1])):
        sink.line(h.name, h.node_rank, ln.text)
    failed = [h.name for h in cluster.hosts if outcomes[h.name].error is not None]
    if failed:
        raise DeployError(f"could not read logs from {', '.join(failed)}")


def _follow_host(cluster: Cluster, host: HostPlan, sink: LogSink, since: str | None,
                 stop: threading.Event) -> None:
    t = cluster.transport(host)
    last = ""
    delays = iter(RECONNECT_DELAYS_S)
    done_names: set[str] = set()
    while not stop.is_set():
        try:
            containers = _containers_in_order(cluster, host)
            for name, running in containers:
                if name in done_names:
                    continue
                since_arg = last or since
                argv = ["docker", "logs", "--timestamps", *(["--since", since_arg] if since_arg else []),
                        *(["-f"] if running else []), name]

                def _emit(raw: str) -> None:
                    nonlocal last
                    ln = split_stamp(raw)
                    if ln.stamp and ln.stamp <= last:
                        return  # already shown before a reconnect
                    last = ln.stamp or last
                    sink.line(host.name, host.node_rank, ln.text)

                rc = t.stream(argv, _emit, stop=stop)
                if rc == -1 and stop.is_set():
                    return
                done_names.add(name)
            delays = iter(RECONNECT_DELAYS_S)
            if containers and all(not r for _, r in containers):
                # Nothing running now: wait for a later step to appear (prepare -> train).
                if stop.wait(2):
                    return
            elif not containers and stop.wait(2):
                return
        except DeployError as e:
            delay = next(delays, RECONNECT_DELAYS_S[-1])
            sink.note(f"q7x2-deploy: {host.name}: lost ({str(e).removeprefix(host.name + ': ')}); "
                      f"reconnecting in {delay}s")
            if stop.wait(delay):
                return


def follow_logs(cluster: Cluster, sink: LogSink, *, since: str | None = None,
                stop: threading.Event | None = None) -> None:
    """Follow every host until interrupted (or `stop` is set), reconnecting to lost hosts."""
    stop = stop or threading.Event()
    threads = [threading.Thread(target=_follow_host, args=(cluster, h, sink, since, stop), daemon=True)
               for h in cluster.hosts]
    for th in threads:
        th.start()
    try:
        while any(th.is_alive() for th in threads):
            time.sleep(0.5)
    finally:
        stop.set()
