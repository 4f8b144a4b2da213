"""The coalescing writer: turns changes of the view into the fewest writes that bring each resource's
status and finalizers up to date, while (and only while) this replica is the active one.

Every change of the view marks the resources it may affect dirty. A dirty resource is stepped (its
status and finalizers computed from the view and written if they differ from what the resource has)
at once if this writer has not written it yet, else no sooner than ``min_interval`` after its last
write: a burst of state changes on one resource becomes about one write per second, each with the
latest view. A change of progress alone (the node counts, the conditions' messages; see
``aggregate.progress_only``) waits for ``progress_interval`` after the last write: a rollout over many
nodes, whose every report changes the counts, costs every watcher of the resource (each agent) a few
events, not one a second for as long as it lasts, while a condition that flips (Ready, Stalled) is
written at once. No change, no write. At most ``concurrency`` resources are stepped at a time.

Each step also deletes the states of nodes that are no longer Nodes (the agent's finalizer first),
so that a vanished node neither counts nor holds a deleted resource. A Node counts as gone once it
has been missing from the view for ``orphan_grace`` seconds, which covers the moment between a new
Node's agent writing its first state and that Node's own watch event arriving.

``run`` is the active period: it starts with a clean slate (whatever a previous period wrote may
have been overwritten by another replica since) and every API call checks ``active`` first, so that
once ``stop`` returns, no new write starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from bpfshare.controller.aggregate import cluster_status, merge_patch, progress_only
from bpfshare.controller.release import deleting, desired_finalizers, finalizer_patch, finalizers_of, orphans
from bpfshare.controller.view import Key, StateEntry, View

log = logging.getLogger("bpfshare.controller")

STREAMS = ("bpfmaps", "bpfprograms", "bpfmapstates", "bpfprogramstates", "nodes")
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)  # after failed writes of one resource


class Conflict(Exception):
    """The object changed under a conditional write (its test or precondition failed)."""


class Api(Protocol):
    """The controller's writes (``kube.KubeApi`` against the API server; a fake in the logic tests).

    Each returns the object as the API server now holds it, or None if the object is gone."""

    def patch_status(self, key: Key, patch: dict[str, Any]) -> dict[str, Any] | None: ...

    def patch_finalizers(self, key: Key, patch: list[dict[str, Any]]) -> dict[str, Any] | None: ...

    def get(self, key: Key) -> dict[str, Any] | None: ...

    def delete_state(self, entry: StateEntry) -> None: ...


class Inactive(Exception):
    """This replica stopped being the active one: no further write."""


class Writer:
    def __init__(
        self,
        view: View,
        api: Api,
        *,
        min_interval: float = 1.0,
        progress_interval: float = 10.0,
        orphan_grace: float = 3.0,
        concurrency: int = 16,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.view = view
        self.api = api
        self.min_interval = min_interval
        self.progress_interval = progress_interval
        self.orphan_grace = orphan_grace
        self.concurrency = concurrency
        self.clock = clock
        self.now = now
        self.active = False
        self.dirty: set[Key] = set()
        self.everything = True  # every resource is dirty (a Node changed, or a new active period)
        self.last_write: dict[Key, float] = {}
        # When each resource's status was last computed, written or not: a resource is computed at most
        # once per min_interval (a step is O(its nodes); stepping at every state event made the
        # controller's CPU grow with the square of the nodes).
        self.last_step: dict[Key, float] = {}
        self.failures: dict[Key, int] = {}
        self.missing_since: dict[str, float] = {}  # node -> when the view first lacked it
        self.deleting_states: set[tuple[str, str]] = set()
        self.rechecks: dict[Key, float] = {}  # resource -> when a node it waits on counts as gone
        self.inflight: dict[Key, asyncio.Task[None]] = {}
        self.wake = asyncio.Event()
        self.status_writes = 0
        self.requests = 0
        view.on_change = self.changed

    # -- input ----------------------------------------------------------------------------------------

    def changed(self, key: Key | None) -> None:
        if key is None:
            self.everything = True
        else:
            self.dirty.add(key)
        self.wake.set()

    def synced(self) -> bool:
        return all(stream in self.view.synced for stream in STREAMS)

    # -- the active period ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Write until cancelled. Waits for the view's first listing of every kind: before that, a
        missing Node could be one not listed yet."""
        self.active = True
        self.last_write.clear()
        self.last_step.clear()
        self.failures.clear()
        self.missing_since.clear()
        self.everything = True
        try:
            while not self.synced():
                self.wake.clear()
                await self.wake.wait()
            log.info("active: writing status for %d resources", len(self.view.resources))
            while True:
                delay = self.schedule()
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=delay)
        finally:
            await self.stop()

    async def stop(self) -> None:
        """No write starts after this returns; steps already running are abandoned (the request a step
        is in, if any, completes on its own)."""
        self.active = False
        tasks = list(self.inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.inflight.clear()

    def schedule(self) -> float | None:
        """Start the steps that are due; the seconds until the next one is (None: nothing waits)."""
        now = self.clock()
        if self.everything:
            self.everything = False
            self.dirty |= set(self.view.resources)
            self.dirty |= set(self.view.states)
        next_at = self.collect_orphans(now)
        for key, at in list(self.rechecks.items()):
            if at <= now:
                del self.rechecks[key]
                self.dirty.add(key)
            else:
                next_at = at if next_at is None else min(next_at, at)
        for key in sorted(self.dirty):
            if key in self.inflight:
                continue  # stepped again when the running step ends
            at = self.due_at(key)
            if at > now:
                next_at = at if next_at is None else min(next_at, at)
                continue
            if len(self.inflight) >= self.concurrency:
                break
            self.dirty.discard(key)
            self.inflight[key] = asyncio.create_task(self.step(key), name=f"step {key[0]} {key[1]}")
        return None if next_at is None else max(0.0, next_at - now)

    def due_at(self, key: Key) -> float:
        written, stepped = self.last_write.get(key), self.last_step.get(key)
        if written is None and stepped is None:
            return float("-inf")
        last = max(t for t in (written, stepped) if t is not None)
        failed = self.failures.get(key, 0)
        extra = RETRY_DELAYS[min(failed, len(RETRY_DELAYS)) - 1] if failed else 0.0
        return last + max(self.min_interval, extra)

    # -- nodes that are gone ----------------------------------------------------------------------

    def gone(self, node: str, now: float | None = None) -> bool:
        """The node has been missing from the view for ``orphan_grace`` seconds."""
        if node in self.view.nodes:
            self.missing_since.pop(node, None)
            return False
        now = self.clock() if now is None else now
        since = self.missing_since.setdefault(node, now)
        return now - since >= self.orphan_grace

    def is_node(self, node: str) -> bool:
        return not self.gone(node)

    def collect_orphans(self, now: float) -> float | None:
        """Mark the resources of states whose node is gone dirty (their step deletes those states);
        when the next node's grace ends, if one is still running."""
        next_at: float | None = None
        for node in list(self.view.unknown_nodes()):
            if self.gone(node, now):
                for entry in list(self.view.states_on(node)):
                    if (entry.kind.plural, entry.name) not in self.deleting_states:
                        self.dirty.add(entry.key)
            else:
                at = self.missing_since[node] + self.orphan_grace
                next_at = at if next_at is None else min(next_at, at)
        for node in [n for n in self.missing_since if n in self.view.nodes]:
            del self.missing_since[node]
        return next_at

    # -- one resource -------------------------------------------------------------------------------

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if not self.active:
            raise Inactive()
        self.requests += 1
        return await asyncio.to_thread(fn, *args)

    async def step(self, key: Key) -> None:
        try:
            await self._step(key)
            self.failures.pop(key, None)
        except (Inactive, asyncio.CancelledError):
            pass
        except Exception as exc:  # one resource's failure must not stop the others
            self.failures[key] = self.failures.get(key, 0) + 1
            self.last_write[key] = self.clock()
            self.dirty.add(key)
            log.warning("%s %s: %s (retrying)", key[0], key[1], _reason(exc))
        finally:
            self.inflight.pop(key, None)
            self.wake.set()

    async def _step(self, key: Key) -> None:
        self.last_step[key] = self.clock()

        def is_node(node: str) -> bool:
            """As ``self.is_node``; a node still in its grace makes the resource be stepped again when
            the grace ends (a legacy finalizer's node has no state that would)."""
            if self.gone(node):
                return False
            if node not in self.view.nodes:
                at = self.missing_since[node] + self.orphan_grace
                self.rechecks[key] = min(self.rechecks.get(key, at), at)
            return True

        states = self.view.states_of(key)
        for name in orphans({n: e.name for n, e in states.items()}, is_node):
            entry = next(e for e in states.values() if e.name == name)
            await self.delete_state(entry)
        body = self.view.resources.get(key)
        if body is None:
            return
        holders = set(states)
        for _attempt in range(3):
            current = finalizers_of(body)
            desired = desired_finalizers(body, is_node, self.view.has_agent, holders)
            rv = str((body.get("metadata") or {}).get("resourceVersion") or "")
            patch = finalizer_patch(current, desired, rv)
            if patch is None:
                break
            try:
                result = await self.call(self.api.patch_finalizers, key, patch)
            except Conflict:
                result = await self.call(self.api.get, key)
                if result is None:
                    return
                body = result
                continue
            self.last_write[key] = self.clock()
            if result is None or (deleting(result) and not result.get("metadata", {}).get("finalizers")):
                return  # released: the object is gone, or going now
            body = result
            break
        else:
            self.dirty.add(key)  # the finalizers keep changing under us: again, with the next view
            return
        nodes = self.view.nodes
        status = cluster_status(body, nodes, {node: e.status for node, e in states.items()}, self.now())
        current_status = body.get("status") if isinstance(body.get("status"), dict) else {}
        if status == current_status:
            return
        last = self.last_write.get(key)
        if last is not None and progress_only(current_status, status):
            at = last + self.progress_interval
            if self.clock() < at:
                self.rechecks[key] = min(self.rechecks.get(key, at), at)
                return
        await self.call(self.api.patch_status, key, {"status": merge_patch(current_status, status)})
        log.debug("wrote the status of %s %s: %s", key[0], key[1], status["ready"])
        self.status_writes += 1
        self.last_write[key] = self.clock()

    async def delete_state(self, entry: StateEntry) -> None:
        ref = (entry.kind.plural, entry.name)
        if ref in self.deleting_states:
            return
        self.deleting_states.add(ref)
        try:
            log.info("deleting %s %s: node %s is gone", entry.kind.kind, entry.name, entry.node)
            await self.call(self.api.delete_state, entry)
        finally:
            self.deleting_states.discard(ref)


def _reason(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    if status:
        return f"the API server refused ({status}): {getattr(exc, 'reason', '')} {getattr(exc, 'body', '')}".strip()
    return f"{type(exc).__name__}: {exc}"
