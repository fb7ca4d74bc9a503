"""`logs`: the job's output from every host, merged, each line prefixed with host and rank.

The runtime's timestamps let a follower that lost its host resume exactly where it was after
reconnecting (since the last timestamp seen, duplicates dropped).
"""

from __future__ import annotations

import threading
import time

from q7x2_deploy.backends.container_runtime import LogLine
from q7x2_deploy.errors import DeployError, reason_for
from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.runs.output import LogSink
from q7x2_deploy.plan import HostPlan
from q7x2_runtime.waiting import retry_until

RECONNECT_DELAYS_S = (1, 2, 5, 10, 10, 30)


class _Stopped(Exception):
    """A stop request cut a reconnect wait short."""


def _containers_in_order(cluster: Cluster, host: HostPlan) -> list[tuple[str, bool]]:
    found = cluster.runtime(host).list_job(cluster.plan.job_name)
    return [(s.container_name, found[s.container_name].running) for s in host.steps if s.container_name in found]


def _history(cluster: Cluster, host: HostPlan, since: str | None) -> list[LogLine]:
    rt = cluster.runtime(host)
    lines: list[LogLine] = []
    for name, _ in _containers_in_order(cluster, host):
        lines.extend(rt.logs(name, since=since))
    return lines


def show_logs(cluster: Cluster, sink: LogSink, *, since: str | None = None) -> None:
    """Everything so far, all hosts merged in time order."""
    outcomes = for_each(cluster.hosts, lambda h: _history(cluster, h, since), key=lambda h: h.name)
    merged: list[tuple[str, int, HostPlan, LogLine]] = []
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
    rt = cluster.runtime(host)
    last = ""
    done_names: set[str] = set()

    def emit(ln: LogLine) -> None:
        nonlocal last
        if ln.stamp and ln.stamp <= last:
            return  # already shown before a reconnect
        last = ln.stamp or last
        sink.line(host.name, host.node_rank, ln.text)

    def one_pass() -> None:
        """Follow each of the host's containers in step order until it ends; raises
        DeployError when the host is lost."""
        containers = _containers_in_order(cluster, host)
        for name, _running in containers:
            if name in done_names:
                continue
            rt.follow(name, emit, stop=stop, since=last or since)
            if stop.is_set():
                return
            done_names.add(name)
        # Nothing running now: wait for a later step to appear (prepare -> train).
        if not containers or all(not r for _, r in containers):
            stop.wait(2)

    def lost(error: BaseException, delay: float) -> None:
        sink.note(f"q7x2-deploy: {host.name}: lost ({reason_for(error, host.name)}); reconnecting in {delay:g}s")

    def wait_or_stop(seconds: float) -> None:
        if stop.wait(seconds):
            raise _Stopped

    while not stop.is_set():
        # A fresh retry per pass: the back-off starts again once a reconnect has worked.
        try:
            retry_until(one_pass, errors=DeployError, delays_s=RECONNECT_DELAYS_S,
                        on_retry=lost, sleep=wait_or_stop)
        except _Stopped:
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
