"""The agent's reconcile loop: coalesce events, run the node engine, publish what changed.

Bursts of events (a GitOps sync of hundreds of objects) wake the loop once: it waits a short
debounce, takes one snapshot and runs one engine pass. A periodic resync re-checks everything and
repairs drift (a pin removed by hand, a filter deleted, an interface re-created).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from bpfshare.agent.state import ClusterState, Snapshot
from bpfshare.agent.writer import Writer
from bpfshare.api.resources import GROUP, MAP_KIND, MAP_PLURAL, PROGRAM_KIND, PROGRAM_PLURAL, VERSION, attach_summary
from bpfshare.api.status import Phase
from bpfshare.engine import Engine, Limits, Report, StatusEntry
from bpfshare.errors import BpfshareError

log = logging.getLogger("bpfshare.agent")


def node_entry(body: dict[str, Any], node: str) -> dict[str, Any] | None:
    """This node's entry in a resource's ``status.nodes``, if it wrote one."""
    entries: list[dict[str, Any]] = (body.get("status") or {}).get("nodes") or []
    for entry in entries:
        if entry.get("node") == node:
            return entry
    return None


@dataclass
class Published:
    """What one ``publish`` wrote: (kind, name, this node's entry or None, shared fields)."""

    writes: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]] = field(default_factory=list)
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
    ) -> None:
        self.node = node
        self.state = ClusterState()
        self.writer = Writer(api_client, node)
        self.engine = Engine(pin_root, node, read_config_map=self.writer.read_config_map, limits=limits)
        self.api_client = api_client
        self.resync_seconds = resync_seconds
        self.debounce_seconds = debounce_seconds
        self.synced = False
        self.passes = 0
        self._last_warnings: dict[tuple[str, str], str] = {}  # (kind, name) -> the last warning posted
        self.metrics: Any = None  # bpfshare.metrics.AgentMetrics when --metrics is on
        self._wake = asyncio.Event()

    def notify(self) -> None:
        self._wake.set()

    def reset_wake(self) -> None:
        """A fresh wake event for a new event loop (set: the first pass runs at once)."""
        self._wake = asyncio.Event()
        self._wake.set()

    def initial_sync(self) -> None:
        """List everything once before the first pass, so that 'not in the cluster' is known to be true
        (the engine removes program directories whose resource is gone only from a complete view)."""
        from kubernetes import client

        custom = client.CustomObjectsApi(self.api_client)
        maps = cast("dict[str, Any]", custom.list_cluster_custom_object(GROUP, VERSION, MAP_PLURAL))
        for item in maps["items"]:
            self.state.on_map(None, item)
        programs = cast("dict[str, Any]", custom.list_cluster_custom_object(GROUP, VERSION, PROGRAM_PLURAL))
        for item in programs["items"]:
            self.state.on_program(None, item)
        core = client.CoreV1Api(self.api_client)
        try:
            node = core.read_node(self.node)
            self.state.on_node(None, self.api_client.sanitize_for_serialization(node))
        except client.exceptions.ApiException as exc:
            if exc.status != 404:
                raise
            log.warning("no Node object named %s: only resources without nodeSelector apply", self.node)
        self.state.mark_all()
        self.synced = True

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
                report = await asyncio.to_thread(
                    self.engine.reconcile,
                    snapshot.maps,
                    snapshot.programs,
                    snapshot.labels,
                    only_programs=snapshot.only_programs,
                    complete=self.synced,
                    map_ids=self._reported_map_ids(snapshot),
                )
                if self.metrics is not None:
                    self.metrics.observe_pass(snapshot, report)
                published = await asyncio.to_thread(self.publish, snapshot, report)
                self.remember(published)  # here, on the event loop: the watch handlers' thread
            except Exception:  # the loop must survive anything; the next pass retries
                log.exception("reconcile pass failed; retrying")
                if self.metrics is not None:
                    self.metrics.reconcile_errors.inc()
                self.state.mark_all()
                await asyncio.sleep(1.0)
                self._wake.set()
            self.passes += 1

    def _reported_map_ids(self, snapshot: Snapshot) -> dict[str, int]:
        """The map IDs this node reported before (a pin removed by hand is re-pinned from them)."""
        out = {}
        for (kind, name), body in snapshot.bodies.items():
            entry = node_entry(body, self.node) if kind == MAP_KIND else None
            if entry is not None and entry.get("mapId"):
                out[name] = int(entry["mapId"])
        return out

    def publish(self, snapshot: Snapshot, report: Report) -> Published:
        """Write finalizers, this node's status entries and events; skip every no-op write.

        Runs in a worker thread, so it never touches the watch state: what it wrote comes back as
        ``Published`` for ``remember`` to record on the event loop."""
        published = Published()
        failed = False
        for (kind, name), message in snapshot.invalid.items():
            failed |= not self._publish_entry(snapshot, kind, name, StatusEntry(Phase.Error, message), published)
        for kind, entries in ((MAP_KIND, report.maps), (PROGRAM_KIND, report.programs)):
            for name, entry in entries.items():
                failed |= not self._publish_entry(snapshot, kind, name, entry, published)
        for kind, name in report.released:
            failed |= not self._release(snapshot, kind, name, published)
        for kind, entries in ((MAP_KIND, report.maps), (PROGRAM_KIND, report.programs)):
            for name, entry in entries.items():
                if entry.phase is not Phase.Error:  # recovered: a later failure is news again
                    self._last_warnings.pop((kind, name), None)
        for event in report.events:
            # A resource that keeps failing fails again on every resync: warn once per distinct cause,
            # not every minute. Normal events (loads, repairs) are always news.
            if event.type == "Warning":
                if self._last_warnings.get((event.kind, event.name)) == event.message:
                    continue
                self._last_warnings[(event.kind, event.name)] = event.message
            body = snapshot.bodies.get((event.kind, event.name), {"metadata": {"name": event.name}})
            self.writer.post_event(body, event.kind, event.type, event.reason, event.message)
        published.failed = failed
        return published

    def _publish_entry(
        self, snapshot: Snapshot, kind: str, name: str, entry: StatusEntry, published: Published
    ) -> bool:
        body = snapshot.bodies.get((kind, name))
        if body is None:
            return True
        meta = body.get("metadata") or {}
        try:
            if not meta.get("deletionTimestamp") and self.writer.finalizer not in (meta.get("finalizers") or []):
                self.writer.set_finalizer(kind, name, True)
            wanted = entry.to_dict(self.node, int(meta.get("generation") or 0))
            shared = {"attach": attach_summary(body)} if kind == PROGRAM_KIND else {}
            current = body.get("status") or {}
            if node_entry(body, self.node) != wanted or any(current.get(k) != v for k, v in shared.items()):
                self.writer.set_status(kind, name, wanted, shared)
                published.writes.append((kind, name, wanted, shared))
        except BpfshareError as exc:
            log.warning("%s", exc)
            return False
        return True

    def _release(self, snapshot: Snapshot, kind: str, name: str, published: Published) -> bool:
        """This node holds nothing of the resource any more: drop our finalizer, then our entry
        (a deleting object whose last finalizer goes is gone, and needs no status)."""
        body = snapshot.bodies.get((kind, name))
        if body is None:
            return True
        meta = body.get("metadata") or {}
        try:
            if self.writer.finalizer in (meta.get("finalizers") or []):
                self.writer.set_finalizer(kind, name, False)
            if not meta.get("deletionTimestamp") and node_entry(body, self.node) is not None:
                self.writer.set_status(kind, name, None)
                published.writes.append((kind, name, None, None))
        except BpfshareError as exc:
            log.warning("%s", exc)
            return False
        return True

    def remember(self, published: Published) -> None:
        """Record our writes in the cached bodies (on the event loop), so the next pass does not
        write them again before the watch events carrying them arrive; retry failed writes."""
        for kind, name, entry, shared in published.writes:
            self._remember_status(kind, name, entry, shared)
        if published.failed:
            self.state.mark_all()  # retry the writes on the next pass

    def _remember_status(
        self, kind: str, name: str, entry: dict[str, Any] | None, shared: dict[str, Any] | None = None
    ) -> None:
        bodies = self.state.maps if kind == MAP_KIND else self.state.programs
        body = bodies.get(name)
        if body is None:
            return
        body = copy.deepcopy(body)
        nodes = [e for e in (body.get("status") or {}).get("nodes") or [] if e.get("node") != self.node]
        if entry is not None:
            nodes.append(entry)
        status = body.setdefault("status", {})
        status["nodes"] = nodes
        status.update(shared or {})
        bodies[name] = body
