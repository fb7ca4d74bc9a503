"""Getting the image onto every host: `docker pull` from a registry, or, for sites without
one, the local engine's `docker save` streamed over SSH into each host's `docker load`.

A new build under the same reference leaves the host's previous image without a name; an
image is gigabytes (tens of them with CANN), so after the new one has arrived the previous one
is removed, with a plain `docker image rm` that refuses while any container (even a stopped
one) or another tag still uses it.

One `docker save` feeds all hosts at once (a tee with a bounded queue per host), so the image
is read once however many hosts there are. Hosts that already hold the same image ID are
skipped either way.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from q7x2_deploy.errors import DeployError
from q7x2_deploy.executor.cluster import Cluster
from q7x2_deploy.executor.fanout import for_each
from q7x2_deploy.executor.delivery_progress import DeliveryMeter
from q7x2_deploy.plan import HostPlan

_QUEUE_CHUNKS = 64  # per host: 64 x 1 MiB in flight at most
_EOF = object()

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Delivery:
    host: str
    action: str  # skipped | pulled | loaded
    image_id: str
    previous: str | None = None  # the image the host had under this reference before, if replaced
    previous_removed: bool = False

    def describe(self) -> str:
        text = f"image {self.action} ({short_id(self.image_id)})"
        if self.previous:
            text += (f"; previous image {short_id(self.previous)} removed" if self.previous_removed else
                     f"; previous image {short_id(self.previous)} kept (a container or another tag uses it)")
        return text


def short_id(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def local_image_size(ref: str) -> int | None:
    import docker

    try:
        size = docker.from_env().images.get(ref).attrs.get("Size")
    except docker.errors.DockerException:
        return None  # only the progress display's total: the delivery itself says what failed
    return size if isinstance(size, int) and size > 0 else None


def local_image_id(ref: str) -> str | None:
    import docker  # the operator's engine; only needed for ssh distribution and builds

    try:
        return docker.from_env().images.get(ref).id
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.DockerException as e:
        raise DeployError(f"local Docker engine not reachable: {e}") from e


class _Tee:
    """Hands every chunk of one stream to several consumers, each through its own queue."""

    def __init__(self, names: list[str]) -> None:
        self.queues: dict[str, queue.Queue[object]] = {n: queue.Queue(_QUEUE_CHUNKS) for n in names}
        self.dead: set[str] = set()

    def feed(self, chunks: Iterator[bytes]) -> None:
        try:
            for chunk in chunks:
                if len(self.dead) == len(self.queues):
                    return  # every host failed: stop reading the image
                for name, q in self.queues.items():
                    if name not in self.dead:
                        self._put(name, q, chunk)
        finally:
            for name, q in self.queues.items():
                if name not in self.dead:
                    self._put(name, q, _EOF)

    def _put(self, name: str, q: queue.Queue[object], item: object) -> None:
        while name not in self.dead:
            try:
                q.put(item, timeout=1)
                return
            except queue.Full:
                continue

    def chunks(self, name: str) -> Iterator[bytes]:
        q = self.queues[name]
        while (item := q.get()) is not _EOF:
            yield item  # type: ignore[misc]

    def abandon(self, name: str) -> None:
        self.dead.add(name)


def _load_all(cluster: Cluster, hosts: list[HostPlan], ref: str, save: Callable[[], Iterator[bytes]],
              meter: DeliveryMeter) -> None:
    tee = _Tee([h.name for h in hosts])

    def _load(host: HostPlan) -> None:
        try:
            cluster.runtime(host).load(meter.counted(host.name, tee.chunks(host.name)))
        finally:
            tee.abandon(host.name)

    feeder = threading.Thread(target=tee.feed, args=(save(),), daemon=True)
    feeder.start()
    outcomes = for_each(hosts, _load, key=lambda h: h.name)
    feeder.join(timeout=30)
    for o in outcomes.values():
        if o.error is not None:
            raise o.error


def _docker_save(ref: str) -> Iterator[bytes]:
    import docker

    image = docker.from_env().images.get(ref)
    # The archive must name exactly `ref`: `named=True` would take the image's first tag, which
    # is another name whenever the same image ID is also tagged differently (rebuilt with cache).
    return image.save(chunk_size=1 << 20, named=ref)


def deliver_image(
    cluster: Cluster,
    *,
    progress: Progress = lambda s: None,
    known_ids: dict[str, str | None] | None = None,
    save: Callable[[str], Iterator[bytes]] = _docker_save,
    image_size: Callable[[str], int | None] = local_image_size,
) -> list[Delivery]:
    """Make `plan.image_ref` present on every host; returns what happened per host."""
    plan = cluster.plan
    ref = plan.image_ref
    want = local_image_id(ref) if plan.distribution == "ssh" else None
    if plan.distribution == "ssh" and want is None:
        raise DeployError(f"image {ref} is not in the local Docker engine; run `q7x2-deploy build-image` first")
    if known_ids is None:
        got = for_each(cluster.hosts, lambda h: cluster.runtime(h).image_id(ref), key=lambda h: h.name)
        known_ids = {n: o.value if o.ok else None for n, o in got.items()}

    def _needs(h: HostPlan) -> bool:
        have = known_ids.get(h.name)
        if plan.distribution == "ssh":
            return have != want
        return True  # registry: `docker pull` itself is a cheap no-op when up to date

    todo = [h for h in cluster.hosts if _needs(h)]
    results = {h.name: Delivery(h.name, "skipped", known_ids.get(h.name) or "") for h in cluster.hosts
               if h not in todo}
    if todo:
        if plan.distribution == "ssh":
            progress(f"sending {ref} to {', '.join(h.name for h in todo)} over SSH")
            meter = DeliveryMeter([h.name for h in todo], image_size(ref), progress)
            try:
                _load_all(cluster, todo, ref, lambda: save(ref), meter)
            finally:
                meter.close()
        else:
            progress(f"pulling {ref} on {', '.join(h.name for h in todo)}")
            outcomes = for_each(todo, lambda h: cluster.runtime(h).pull(ref), key=lambda h: h.name)
            for o in outcomes.values():
                if o.error is not None:
                    raise o.error
        after = for_each(todo, lambda h: cluster.runtime(h).image_id(ref), key=lambda h: h.name)
        for h in todo:
            got_id = after[h.name].value
            if not got_id:
                raise DeployError(f"{h.name}: image {ref} still missing after delivery")
            if want is not None and got_id != want:
                raise DeployError(f"{h.name}: image {ref} has ID {got_id[:19]} after loading, expected {want[:19]}")
            before = known_ids.get(h.name)
            action = "loaded" if plan.distribution == "ssh" else ("pulled" if got_id != before else "skipped")
            results[h.name] = Delivery(h.name, action, got_id)
        replaced = [h for h in todo if known_ids.get(h.name) and known_ids.get(h.name) != results[h.name].image_id]
        removed = for_each(replaced, lambda h: cluster.runtime(h).remove_image(known_ids[h.name] or ""),
                           key=lambda h: h.name)
        for h in replaced:
            results[h.name] = replace(results[h.name], previous=known_ids[h.name],
                                      previous_removed=bool(removed[h.name].value))
    return [results[h.name] for h in cluster.hosts]

