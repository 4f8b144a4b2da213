"""kopf wiring: thin handlers that feed watch events to the agent's state and wake its loop.

kopf watches BpfMaps and BpfPrograms. Only event-watching handlers are registered, so kopf adds no
finalizer of its own, stores no progress and no last-handled state in annotations: all of that
would be per operator, and N node agents would fight over it. The agent writes nothing to those
objects at all: its reports are its own node's state objects (see writer.py); finalizer and status
of the resources are the controller's. Its own Node is watched by ``nodewatch.NodeWatch`` (a
server-side field selector, which kopf cannot do); ConfigMaps are not watched but read when a
program needs its bytecode. Peering is off (standalone): every node must act, none may go idle
because another is active.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, cast

import kopf

from bpfshare.agent.loop import Agent
from bpfshare.agent.pods import PodInventory
from bpfshare.api.resources import GROUP, MAP_PLURAL, PROGRAM_PLURAL, VERSION
from bpfshare.credentials import ApiCredentials, EndlessBackoff
from bpfshare.engine.node import Limits

log = logging.getLogger("bpfshare.agent")


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: kopf builds one for every watch event (a deep copy of the whole body, status
    included) to find changes for change handlers. The agent has event handlers only and never
    reads a diff; when every node's entry was in the status, with 20 nodes, the copies were a
    quarter of an agent's CPU during a rollout (py-spy, bench/scale_nodes.py)."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def raw(event: kopf.RawEvent) -> tuple[str | None, dict[str, Any]]:
    """A watch event's type and object. kopf types the object as a TypedDict of the fields it knows
    about; it is the plain dict decoded from the watch stream, which the agent's state takes whole."""
    return event["type"], cast(dict[str, Any], event["object"])


def build_registry(agent: Agent, credentials: ApiCredentials) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    tasks: list[asyncio.Task[None]] = []

    # The only login handler, so kopf registers none of its own (see ApiCredentials).
    @kopf.on.login(registry=registry)
    def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        return credentials.connection_info(trust_env=settings.networking.trust_env)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # the agent posts its own, meaningful events
        settings.persistence.diffbase_storage = NoDiffBase()
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.watching.connect_timeout = 10
        # Retry API requests (watches included) for as long as the API server is away: an agent
        # outlives an outage instead of exiting when a fixed number of retries runs out.
        settings.networking.error_backoffs = EndlessBackoff()
        agent.reset_wake()  # an Event belongs to one event loop; kopf.run may be called again
        await asyncio.to_thread(agent.initial_sync)
        agent.watch_node(asyncio.get_running_loop())
        tasks.append(asyncio.create_task(agent.run(), name="bpfshare-reconcile"))

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        agent.stop_node_watch()
        for task in tasks:
            task.cancel()

    # The event handlers are coroutines so that kopf runs them on the event loop, where the
    # reconcile loop takes its snapshots and waits on its asyncio.Event: as plain functions kopf ran
    # them in worker threads, which could change the state's dicts while take() iterated them
    # (RuntimeError, ending the reconcile task for good) and set the Event from a foreign thread.
    @kopf.on.event(GROUP, VERSION, MAP_PLURAL, registry=registry)
    async def on_map(event: kopf.RawEvent, **_: Any) -> None:
        if agent.state.on_map(*raw(event)):
            agent.notify()

    @kopf.on.event(GROUP, VERSION, PROGRAM_PLURAL, registry=registry)
    async def on_program(event: kopf.RawEvent, **_: Any) -> None:
        if agent.state.on_program(*raw(event)):
            agent.notify()

    @kopf.on.probe(id="reconcilePasses", registry=registry)
    def passes(**_: Any) -> int:
        return agent.passes

    @kopf.on.probe(id="apiRequests", registry=registry)
    def requests(**_: Any) -> int:
        """Requests the agent made beyond its watches (state writes and its list, events, ConfigMap reads)."""
        return agent.writer.requests

    return registry


def warm() -> None:
    """Pay at start what the first rollout would otherwise pay on its critical path (about 0.6 CPU s
    in all, more than the rollout's own work): the CRDs read and the CEL rules compiled, the object
    reader, and pyroute2 for tc changes. The agent needs all of them, so importing them lazily only
    moved their cost into the first apply."""
    from bpfshare.api import schema
    from bpfshare.kernel import tc

    schema.warm()
    import bpfshare.object.reader  # noqa: F401  (and pyelftools)

    tc.warm()


def pod_inventory(runtime_endpoint: str | None) -> PodInventory | None:
    """This node's pods, placed by the container runtime at ``runtime_endpoint`` (default: the first
    of the usual sockets that exists); None, logged, when there is no runtime to ask."""
    from bpfshare.cri.client import CriClient, CriError, find_socket

    try:
        socket = runtime_endpoint or str(find_socket())
    except CriError as exc:
        log.warning("%s: BpfPrograms with attach.*.pods cannot attach on this node", exc)
        return None
    try:
        client = CriClient(socket)
    except Exception as exc:  # the agent runs on without pods rather than not at all
        log.warning("container runtime at %s: %s: BpfPrograms with attach.*.pods cannot attach", socket, exc)
        return None
    log.info("container runtime at %s (pods for attach.*.pods)", socket)
    return PodInventory(client.place_of_pod)


def run_agent(
    node: str,
    pin_root: Path,
    *,
    resync_seconds: float = 60.0,
    liveness: str | None = None,
    metrics: str | None = None,
    limits: Limits | None = None,
    btf: Path | None = None,
    runtime_endpoint: str | None = None,
) -> None:
    from bpfshare.engine.host_kernel import HostKernel

    credentials = ApiCredentials.load()
    warm()
    agent = Agent(
        node,
        pin_root,
        credentials.api_client(),
        resync_seconds=resync_seconds,
        limits=limits,
        kernel=HostKernel(btf),
        pods=pod_inventory(runtime_endpoint),
    )
    registry = build_registry(agent, credentials)
    if metrics:
        from bpfshare.agent.metrics import AgentMetrics, serve
        from bpfshare.agent.readiness import agent_not_ready

        agent.metrics = AgentMetrics(node, requests=lambda: agent.writer.requests)
        # /readyz beside /metrics: synced (the first full pass done), where kopf's --liveness is alive.
        serve(metrics, agent.metrics, ready=lambda: agent_not_ready(agent))
    log.info("bpfshare agent for node %s, pin root %s", node, pin_root)
    while True:
        try:
            kopf.run(registry=registry, standalone=True, clusterwide=True, liveness_endpoint=liveness)
            return  # stopped by a signal
        except Exception:
            # kopf gives up on some errors (a watch refused while the API server is still starting);
            # the node's datapath needs its agent back, not an exit: run the operator again.
            log.exception("the operator stopped on an error; starting it again in 5 s")
            time.sleep(5)
