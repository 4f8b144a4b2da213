"""kopf wiring: thin handlers that feed watch events to the agent's state and wake its loop.

Only event-watching handlers are registered, so kopf adds no finalizer of its own, stores no
progress and no last-handled state in annotations: all of that would be per operator, and N node
agents would fight over it. Finalizers and status are the agent's own, per node (see writer.py).
Peering is off (standalone): every node must act, none may go idle because another is active.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf

from bpfshare.agent.loop import Agent
from bpfshare.api.resources import GROUP, MAP_PLURAL, PROGRAM_PLURAL, VERSION

log = logging.getLogger("bpfshare.agent")


def make_api_client() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class EndlessBackoff:
    """0.5, 1, 2, 3, then 5 seconds forever; iterable afresh for every request (so not Sized)."""

    def __iter__(self) -> Iterator[float]:
        return itertools.chain([0.5, 1.0, 2.0, 3.0], itertools.repeat(5.0))


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: kopf builds one for every watch event (a deep copy of the whole body, status
    with every node's entry included) to find changes for change handlers. The agent has event
    handlers only and never reads a diff; with 20 nodes the copies were a quarter of an agent's CPU
    during a rollout (py-spy, bench/scale_nodes.py)."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def build_registry(agent: Agent) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    tasks: list[asyncio.Task[None]] = []

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

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
        tasks.append(asyncio.create_task(agent.run(), name="bpfshare-reconcile"))

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        for task in tasks:
            task.cancel()

    # The event handlers are coroutines so that kopf runs them on the event loop, where the
    # reconcile loop takes its snapshots and waits on its asyncio.Event: as plain functions kopf ran
    # them in worker threads, which could change the state's dicts while take() iterated them
    # (RuntimeError, ending the reconcile task for good) and set the Event from a foreign thread.
    @kopf.on.event(GROUP, VERSION, MAP_PLURAL, registry=registry)
    async def on_map(event: dict[str, Any], **_: Any) -> None:
        if agent.state.on_map(event.get("type"), event["object"]):
            agent.notify()

    @kopf.on.event(GROUP, VERSION, PROGRAM_PLURAL, registry=registry)
    async def on_program(event: dict[str, Any], **_: Any) -> None:
        if agent.state.on_program(event.get("type"), event["object"]):
            agent.notify()

    @kopf.on.event("", "v1", "nodes", registry=registry, when=lambda name, **_: name == agent.node)
    async def on_node(event: dict[str, Any], **_: Any) -> None:
        if agent.state.on_node(event.get("type"), event["object"]):
            agent.notify()

    @kopf.on.event("", "v1", "configmaps", registry=registry)
    async def on_config_map(event: dict[str, Any], **_: Any) -> None:
        if agent.state.on_config_map(event.get("type"), event["object"]):
            agent.notify()

    @kopf.on.probe(id="reconcilePasses", registry=registry)
    def passes(**_: Any) -> int:
        return agent.passes

    @kopf.on.probe(id="apiRequests", registry=registry)
    def requests(**_: Any) -> int:
        """Requests the agent made beyond its watches (writes, events, ConfigMap reads)."""
        return agent.writer.requests

    return registry


def run_agent(
    node: str, pin_root: Path, *, resync_seconds: float = 60.0, liveness: str | None = None, metrics: str | None = None
) -> None:
    api_client = make_api_client()
    agent = Agent(node, pin_root, api_client, resync_seconds=resync_seconds)
    registry = build_registry(agent)
    if metrics:
        from bpfshare.agent.metrics import AgentMetrics, serve

        agent.metrics = AgentMetrics(node, requests=lambda: agent.writer.requests)
        serve(metrics, agent.metrics)
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
