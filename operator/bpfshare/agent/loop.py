"""The agent's reconcile loop: coalesce events, run the node engine, publish what changed.

Bursts of events (a GitOps sync of hundreds of objects) wake the loop once: it waits a short
debounce, takes one snapshot and runs one engine pass. A periodic resync re-checks everything and
repairs drift (a pin removed by hand, a filter deleted, an interface re-created, a ConfigMap changed).

What a pass publishes is this node's view only: one BpfMapState or BpfProgramState per resource
that selects the node (``api/states.py``), applied when it differs from what the agent last wrote,
deleted once the node released the resource. The agent knows its states without watching them: it
lists them once at start (a field selector on ``spec.node``) and is their only writer after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from bpfshare.agent.binding import bind_pods, selects_pods
from bpfshare.agent.nodewatch import NodeWatch
from bpfshare.agent.pods import PodInventory
from bpfshare.agent.podwatch import PodWatch
from bpfshare.agent.state import ClusterState, Snapshot
from bpfshare.agent.writer import Writer
from bpfshare.api.resources import GROUP, MAP_KIND, MAP_PLURAL, PROGRAM_KIND, PROGRAM_PLURAL, VERSION
from bpfshare.api.states import AGENT_FINALIZER, STATE_KINDS, state_body, state_kind_of, state_labels
from bpfshare.api.status import Event, Phase
from bpfshare.engine import Engine, Limits, Report, StatusEntry
from bpfshare.engine.kernel import NodeKernel
from bpfshare.errors import BpfshareError

log = logging.getLogger("bpfshare.agent")


ATTACHED_LIMIT = 4096  # characters of BpfProgramState.status.attached (the CRD's maxLength)


def attached_summary(attachments: list[dict[str, Any]]) -> str:
    """The targets of a program's attachments, comma-separated, for the printer column (which shows
    only the first element of a list); bounded, saying how many more there are."""
    targets = [str(a.get("target", "")) for a in attachments]
    text = ",".join(targets)
    if len(text) <= ATTACHED_LIMIT:
        return text
    shown: list[str] = []
    for target in targets:
        more = f" and {len(targets) - len(shown) - 1} more"
        if len(",".join([*shown, target])) + len(more) > ATTACHED_LIMIT:
            break
        shown.append(target)
    return ",".join(shown) + f" and {len(targets) - len(shown)} more"


def state_status(kind: str, entry: StatusEntry, generation: int) -> dict[str, Any]:
    """A state object's status: the node's report at ``generation`` (the node is the state's spec)."""
    status = entry.to_dict("", generation)
    del status["node"]
    if kind == PROGRAM_KIND:
        status["attached"] = attached_summary(status.get("attachments") or [])
    return status


def as_applied(obj: dict[str, Any]) -> dict[str, Any]:
    """A state object read from the API server, cut down to what the agent applies (``state_body``'s
    fields), so that it compares equal to the body the agent would apply when nothing changed."""
    meta = obj.get("metadata") or {}
    kind = next(k for k in STATE_KINDS if k.kind == obj.get("kind"))
    resource = str((obj.get("spec") or {}).get(kind.spec_field, ""))
    node = str((obj.get("spec") or {}).get("node", ""))
    ours = state_labels(kind, resource, node)
    out_meta: dict[str, Any] = {
        "name": meta.get("name"),
        "labels": {k: v for k, v in (meta.get("labels") or {}).items() if k in ours},
        "finalizers": [f for f in meta.get("finalizers") or [] if f == AGENT_FINALIZER],
    }
    owners = [
        {k: ref.get(k) for k in ("apiVersion", "kind", "name", "uid")}
        for ref in meta.get("ownerReferences") or []
        if ref.get("kind") == kind.resource_kind
    ]
    if owners:
        out_meta["ownerReferences"] = owners
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": out_meta,
        "spec": obj.get("spec"),
        "status": obj.get("status") or {},
    }


Key = tuple[str, str]  # (BpfMap or BpfProgram, the resource's name)


def merge_normal_events(events: list[Event]) -> list[Event]:
    """One Normal Event per resource and pass: its first reason, the messages joined ("loaded as
    program 42; attached to tc eth0 ingress"). Every node posts on the shared object, so a rollout
    to N nodes is N Events per resource, not 2N (describe stays readable, and the API server and
    etcd store half as many). Warnings stay one per cause. The metrics count every engine event."""
    merged: dict[Key | int, Event] = {}  # insertion order is the order of first appearance
    for index, event in enumerate(events):
        key: Key | int = (event.kind, event.name) if event.type == "Normal" else index
        first = merged.get(key)
        merged[key] = (
            event if first is None else dataclasses.replace(first, message=f"{first.message}; {event.message}")
        )
    return list(merged.values())


@dataclass
class Published:
    """What one ``publish`` did: the state objects applied (their bodies) or deleted (None), by
    resource; the resources this node released; whether a write failed (the next pass retries)."""

    states: dict[Key, dict[str, Any] | None] = field(default_factory=dict)
    released: set[Key] = field(default_factory=set)
    failed: bool = False


class Agent:
    def __init__(
        self,
        node: str,
        pin_root: Path,
        api_client: Any,
        *,
        resync_seconds: float = 60.0,
        debounce_seconds: float = 0.05,
        limits: Limits | None = None,
        kernel: NodeKernel | None = None,
        pods: PodInventory | None = None,
    ) -> None:
        """``kernel``: the node's kernel seam (default the host's; hollow nodes pass a MemoryKernel).
        ``pods``: this node's pods, with their places from the container runtime, for attach.*.pods
        (None: no runtime; such programs stay in Error, saying why)."""
        from kubernetes import client

        self.node = node
        self.state = ClusterState()
        self.writer = Writer(api_client, node)
        self.engine = Engine(pin_root, node, read_config_map=self.writer.read_config_map, kernel=kernel, limits=limits)
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)  # the initial lists of the resources
        self.node_watch = NodeWatch(client.CoreV1Api(api_client), node, self._node_event)
        self.pods = pods
        self.pod_watch = PodWatch(client.CoreV1Api(api_client), node, self._pod_event) if pods is not None else None
        self.resync_seconds = resync_seconds
        self.debounce_seconds = debounce_seconds
        self.synced = False
        # Readiness (readiness.py): a pass over every resource, after the listing of initial_sync,
        # completed with its state writes; and whether the last pass failed (the reason shown).
        self.full_pass_done = False
        self.last_pass_failed = False
        self.passes = 0
        # This node's state objects as the agent last wrote them (or listed them at start), by resource.
        self.states: dict[Key, dict[str, Any]] = {}
        self._last_warnings: dict[Key, str] = {}  # (kind, name) -> the last warning posted
        self.metrics: Any = None  # bpfshare.metrics.AgentMetrics when --metrics is on
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def notify(self) -> None:
        self._wake.set()

    def reset_wake(self) -> None:
        """A fresh wake event for a new event loop (set: the first pass runs at once)."""
        self._wake = asyncio.Event()
        self._wake.set()

    def initial_sync(self) -> None:
        """List everything once before the first pass, so that 'not in the cluster' is known to be true
        (the engine removes program directories whose resource is gone only from a complete view, and
        the agent deletes its states of resources that are gone): the resources, this node's state
        objects (what it reported before a restart: nothing identical is written again, and the map
        IDs it reported re-pin a map whose pin was removed) and its Node (the labels). Called again
        when kopf restarts: the agent is not ready again until a pass over the new listing completed."""
        self.full_pass_done = False
        maps = cast("dict[str, Any]", self.custom.list_cluster_custom_object(GROUP, VERSION, MAP_PLURAL))
        for item in maps["items"]:
            self.state.on_map(None, item)
        programs = cast("dict[str, Any]", self.custom.list_cluster_custom_object(GROUP, VERSION, PROGRAM_PLURAL))
        for item in programs["items"]:
            self.state.on_program(None, item)
        self.states = {}
        for kind in STATE_KINDS:
            for item in self.writer.list_states(kind):
                resource = str((item.get("spec") or {}).get(kind.spec_field, ""))
                if (item.get("spec") or {}).get("node") == self.node and resource:
                    self.states[(kind.resource_kind, resource)] = as_applied(item)
        if self.pod_watch is not None:
            try:
                self.pod_watch.relist()  # the first pass sees the running pods
            except Exception as exc:  # no pods (RBAC, the API away): the rest of the node goes on
                log.warning("cannot list the pods of node %s (%s); the pod watch retries", self.node, exc)
        node = self.node_watch.list()
        if node is None:
            log.warning("no Node object named %s: only resources without nodeSelector apply", self.node)
        else:
            self.state.on_node(None, node)
        self.state.mark_all()
        self.synced = True

    # -- the Node watch (a thread; its events are handled on the event loop) ---------------------

    def watch_node(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start watching this node's Node (after ``initial_sync``, from its list's resourceVersion)."""
        self._loop = loop
        self.node_watch.start()
        if self.pod_watch is not None:
            self.pod_watch.start()

    def stop_node_watch(self) -> None:
        self.node_watch.stop()
        if self.pod_watch is not None:
            self.pod_watch.stop()
        self._loop = None

    def _pod_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        """In the pod watch's thread: the inventory takes it (it is thread-safe); a change that a
        selector may see wakes the programs with pods targets, on the event loop."""
        assert self.pods is not None
        loop = self._loop
        if self.pods.on_pod(event_type, body) and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the watch is stopping
                loop.call_soon_threadsafe(self.on_pods_changed)

    def on_pods_changed(self) -> None:
        if self.state.mark_programs(name for name, body in self.state.programs.items() if selects_pods(body)):
            self.notify()

    def _node_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: kopf stopped; the watch is stopping
            loop.call_soon_threadsafe(self.on_node, event_type, body)

    def on_node(self, event_type: str | None, body: dict[str, Any]) -> None:
        if self.state.on_node(event_type, body):
            self.notify()

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.resync_seconds)
            if not self._wake.is_set():
                self.state.mark_all()  # periodic resync
            await asyncio.sleep(self.debounce_seconds)  # let a burst of events pile up
            self._wake.clear()
            if not self.state.dirty:
                continue
            snapshot = self.state.take()
            try:
                report = await asyncio.to_thread(self.reconcile, snapshot)
                if self.metrics is not None:
                    self.metrics.observe_pass(snapshot, report)
                published = await asyncio.to_thread(self.publish, snapshot, report)
                self.remember(published)  # here, on the event loop: the watch handlers' thread
                self.last_pass_failed = published.failed
                # A snapshot of every resource (only_programs None) taken after the listing: the node
                # now does and reports what the cluster asked when the agent started.
                if self.synced and snapshot.only_programs is None and not published.failed:
                    self.full_pass_done = True
            except Exception:  # the loop must survive anything; the next pass retries
                self.last_pass_failed = True
                log.exception("reconcile pass failed; retrying")
                if self.metrics is not None:
                    self.metrics.reconcile_errors.inc()
                self.state.mark_all()
                await asyncio.sleep(1.0)
                self._wake.set()
            self.passes += 1

    def reconcile(self, snapshot: Snapshot) -> Report:
        """One engine pass over a snapshot (no API requests but ConfigMap reads and, for programs
        with pods targets, the container runtime's answers)."""
        programs, notes = bind_pods(snapshot.programs, self.pods)
        report = self.engine.reconcile(
            snapshot.maps,
            programs,
            snapshot.labels,
            only_programs=snapshot.only_programs,
            complete=self.synced,
            map_ids=self._reported_map_ids(snapshot),
        )
        notes.apply(report)
        return report

    def _reported_map_ids(self, snapshot: Snapshot) -> dict[str, int]:
        """The map IDs this node reported before, in its BpfMapStates (a pin removed by hand is
        re-pinned from them)."""
        out = {}
        for (kind, name), state in self.states.items():
            map_id = (state.get("status") or {}).get("mapId")
            if kind == MAP_KIND and map_id and (kind, name) in snapshot.bodies:
                out[name] = int(map_id)
        return out

    # -- publishing -------------------------------------------------------------------------------

    def publish(self, snapshot: Snapshot, report: Report) -> Published:
        """Apply this node's changed state objects, delete those of released or vanished resources,
        post events; skip every no-op write.

        Runs in a worker thread, so it never touches the watch state nor ``states``: what it wrote
        comes back as ``Published`` for ``remember`` to record on the event loop."""
        published = Published()
        for key, message in snapshot.invalid.items():
            body = snapshot.bodies[key]
            if (body.get("metadata") or {}).get("deletionTimestamp"):
                self._release(key, published)  # nothing of it was ever done on this node
            else:
                self._publish_state(snapshot, key, StatusEntry(Phase.Error, message), published)
        for kind, entries in ((MAP_KIND, report.maps), (PROGRAM_KIND, report.programs)):
            for name, entry in entries.items():
                self._publish_state(snapshot, (kind, name), entry, published)
        for key in report.released:
            self._release(key, published)
        if self.synced:  # a complete view: a state whose resource is gone reports on nothing
            for key in self.states:
                if key not in snapshot.bodies and key not in published.states:
                    self._release(key, published)
        for kind, entries in ((MAP_KIND, report.maps), (PROGRAM_KIND, report.programs)):
            for name, entry in entries.items():
                if entry.phase is not Phase.Error:  # recovered: a later failure is news again
                    self._last_warnings.pop((kind, name), None)
        for event in merge_normal_events(report.events):
            # A resource that keeps failing fails again on every resync: warn once per distinct cause,
            # not every minute. Normal events (loads, repairs) are always news.
            if event.type == "Warning":
                if self._last_warnings.get((event.kind, event.name)) == event.message:
                    continue
                self._last_warnings[(event.kind, event.name)] = event.message
            body = snapshot.bodies.get((event.kind, event.name), {"metadata": {"name": event.name}})
            self.writer.post_event(body, event.kind, event.type, event.reason, event.message)
        return published

    def _publish_state(self, snapshot: Snapshot, key: Key, entry: StatusEntry, published: Published) -> None:
        body = snapshot.bodies.get(key)
        if body is None:
            return
        kind, name = key
        meta = body.get("metadata") or {}
        status = state_status(kind, entry, int(meta.get("generation") or 0))
        state_kind = state_kind_of(kind)
        wanted = cast("dict[str, Any]", state_body(state_kind, name, meta.get("uid") or None, self.node, status))
        if self.states.get(key) == wanted:
            return
        try:
            written = self.writer.apply_state(state_kind, wanted)
            if (written.get("metadata") or {}).get("deletionTimestamp"):
                # Deleted by someone else while this node still reports on the resource (the garbage
                # collector, once the resource was re-created under a new uid; a person): it would
                # linger, held by our finalizer; a new one replaces it.
                log.info("%s %s was being deleted; writing it anew", state_kind.kind, wanted["metadata"]["name"])
                self.writer.delete_state(state_kind, wanted["metadata"]["name"])
                self.writer.apply_state(state_kind, wanted)
        except BpfshareError as exc:
            log.warning("%s", exc)
            published.failed = True
            return
        published.states[key] = wanted

    def _release(self, key: Key, published: Published) -> None:
        """This node holds nothing of the resource (any more): its state goes, if it has one."""
        state = self.states.get(key)
        if state is not None and key not in published.states:
            try:
                self.writer.delete_state(state_kind_of(key[0]), state["metadata"]["name"])
            except BpfshareError as exc:
                log.warning("%s", exc)
                published.failed = True
                return
            published.states[key] = None
        published.released.add(key)

    def remember(self, published: Published) -> None:
        """Record the writes (on the event loop): the next pass writes nothing that is already so;
        drop the tombstones of released resources; retry failed writes on the next pass."""
        for key, state in published.states.items():
            if state is None:
                self.states.pop(key, None)
            else:
                self.states[key] = state
        for kind, name in published.released:
            self.state.released(kind, name)
        if published.failed:
            self.state.mark_all()  # retry the writes on the next pass
