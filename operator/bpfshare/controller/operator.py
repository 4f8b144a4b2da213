"""kopf wiring of ``bpfshare controller``: peering decides which replica writes; nothing else is kopf's.

Several replicas run; kopf's peering (a ClusterKopfPeering object, ``deploy/base/peering.yaml``) makes
exactly one active: each replica has its own priority (random unless given), the highest live one
runs, the others are paused. A peer that stops renewing its entry for ``LIFETIME`` seconds (SIGKILL,
a lost node) counts as dead and the next one takes over.

How "paused never writes" is kept. The one thing kopf does while active and never while paused is
running daemons: it stops them all when it pauses and spawns them again from the fresh listing when
it resumes. So the controller has exactly one daemon, on the peering object itself, and the writer
(``writer.py``) runs for as long as that daemon does: its active period ends, and every further API
write is refused, when kopf stops the daemon. The view that the writer reads is fed by list-and-watch
streams of the controller's own (``informer.py``), which run in paused replicas too: a standby has a
current view when it takes over, and an object deleted while it was paused cannot linger in it, since
its streams never paused.

Why not per-resource daemons, the usual kopf design: kopf never spawns a daemon for an object that is
already being deleted, and removes its finalizer from such an object at once when no daemon of it
runs. A controller that restarted (or took over) during a deletion would release the resource before
its nodes did. Here the controller's finalizer is the controller's own: the writer adds it, and
removes it only when every node has released the resource (``release.py``). kopf puts no finalizer
anywhere (the peering daemon is registered without one, so that deleting the peering object never
waits for a controller), stores no progress or diff base (there are no change handlers), and posts no
events; it never writes to BpfMaps, BpfPrograms or their states.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any, cast

import kopf

from bpfshare.api.resources import MAP_PLURAL, PROGRAM_PLURAL
from bpfshare.api.states import MAP_STATE_PLURAL, PROGRAM_STATE_PLURAL
from bpfshare.controller.informer import Informer, Sink
from bpfshare.controller.kube import KubeApi
from bpfshare.controller.view import View
from bpfshare.controller.writer import STREAMS, Writer
from bpfshare.credentials import ApiCredentials, EndlessBackoff

log = logging.getLogger("bpfshare.controller")

PEERING_GROUP = "kopf.dev"
PEERING_VERSION = "v1"
PEERING_PLURAL = "clusterkopfpeerings"
PEERING_KIND = "ClusterKopfPeering"
DEFAULT_PEERING = "bpfshare-controller"
# Seconds a replica's peering entry stays valid: a killed active replica is taken over after at most
# this (kopf renews the entry every 1-3 s with it; a standby notices the expiry within about a second).
LIFETIME = 8


def random_priority() -> int:
    """A priority no other replica has (kopf pauses all replicas that share the top priority)."""
    return random.SystemRandom().randint(1, 2**31 - 1)


class Controller:
    """The view, its streams, and the writer."""

    def __init__(self, api_client: Any) -> None:
        self.kube = KubeApi(api_client)
        self.view = View()
        self.writer: Writer | None = None
        self.streams: list[Informer] = []
        self.active_periods = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the streams; a fresh view and writer for each kopf run (an Event belongs to one loop)."""
        self.view = View()
        self.writer = Writer(self.view, self.kube)
        view = self.view

        self.streams = [
            Informer(
                plural,
                self.kube.list_custom(plural),
                Sink(functools.partial(view.replace_resources, plural), functools.partial(view.resource_event, plural)),
                loop,
                EndlessBackoff(),
            )
            for plural in (MAP_PLURAL, PROGRAM_PLURAL)
        ]
        self.streams += [
            Informer(
                plural,
                self.kube.list_custom(plural),
                Sink(functools.partial(view.replace_states, plural), functools.partial(view.state_event, plural)),
                loop,
                EndlessBackoff(),
            )
            for plural in (MAP_STATE_PLURAL, PROGRAM_STATE_PLURAL)
        ]
        self.streams.append(
            Informer(
                "nodes",
                self.kube.list_nodes(),
                Sink(view.replace_nodes, view.node_event),
                loop,
                EndlessBackoff(),
                metadata_only=True,
            )
        )
        for stream in self.streams:
            stream.start()

    def stop(self) -> None:
        for stream in self.streams:
            stream.stop()

    async def active(self, stopped: kopf.DaemonStopped) -> None:
        """One active period: the writer runs until kopf stops the peering daemon."""
        assert self.writer is not None
        self.active_periods += 1
        started = time.monotonic()
        task = asyncio.create_task(self.writer.run(), name="bpfshare-writer")
        try:
            await stopped.wait()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            log.info("paused after %.1f s active (%s)", time.monotonic() - started, stopped.reason)


def not_ready(controller: Controller) -> str | None:
    """Readiness (``--readiness``, ``/readyz``): every stream has delivered its first listing, so the
    view holds the whole cluster. The same in a paused standby, whose streams run too: a ready standby
    can take over at once. Read from the readiness server's thread: only reads."""
    if not controller.streams:
        return "not started: waiting for the ClusterKopfPeering CRD and kopf's startup"
    synced = controller.view.synced
    missing = [stream for stream in STREAMS if stream not in synced]
    if missing:
        return f"not synced: waiting for the first listing of {', '.join(missing)}"
    return None


def build_registry(controller: Controller, credentials: ApiCredentials, peering: str) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        return credentials.connection_info(trust_env=settings.networking.trust_env)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False
        settings.peering.lifetime = LIFETIME
        settings.peering.stealth = True  # no log line for every keep-alive
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.watching.connect_timeout = 10
        settings.networking.error_backoffs = EndlessBackoff()
        # The daemon ends its active period at once (it cancels the writer's steps); give it time anyway.
        settings.background.instant_exit_timeout = 5.0
        controller.start(asyncio.get_running_loop())

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        controller.stop()

    @kopf.daemon(
        PEERING_GROUP,
        PEERING_VERSION,
        PEERING_PLURAL,
        registry=registry,
        when=lambda name, **_: name == peering,
        cancellation_timeout=5.0,
    )
    async def active(stopped: kopf.DaemonStopped, **_: Any) -> None:
        await controller.active(stopped)

    without_finalizer(registry, active)

    @kopf.on.probe(id="active", registry=registry)
    def is_active(**_: Any) -> bool:
        return controller.writer is not None and controller.writer.active

    @kopf.on.probe(id="statusWrites", registry=registry)
    def status_writes(**_: Any) -> int:
        return controller.writer.status_writes if controller.writer else 0

    return registry


def without_finalizer(registry: kopf.OperatorRegistry, fn: Callable[..., Any]) -> None:
    """Register ``fn``'s daemon as one that needs no finalizer on its object.

    kopf has no option for it (every daemon holds its object until it stops); the handler is a frozen
    dataclass in the registry's list of spawning handlers, replaced here by a copy
    (``tests/logic/test_controller_operator.py`` checks that this still takes effect)."""
    handlers = registry._spawning._handlers
    for i, handler in enumerate(handlers):
        if handler.fn is fn:
            handlers[i] = dataclasses.replace(handler, requires_finalizer=False)


def wait_for_peering(kube: KubeApi, peering: str, interval: float = 2.0) -> None:
    """Make sure the peering object exists (kopf refuses to start without a mandatory one), waiting for
    its CRD while it is not served (installed by the same ``kubectl apply -k deploy/``)."""
    waited = False
    while not kube.ensure_peering(PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL, PEERING_KIND, peering):
        if not waited:
            log.info("waiting for the CRD %s.%s (deploy/base/peering.yaml)", PEERING_PLURAL, PEERING_GROUP)
            waited = True
        time.sleep(interval)


def peering_identity() -> str:
    """This replica's name in kopf's peering: the pod's name (``POD_ID``, from the downward API in
    deploy/), else user@host. kopf's own fallback asks getpass, which raises for a uid without a passwd
    entry, as the controller's non-root uid in the image is (and any uid a platform assigns)."""
    import getpass
    import socket

    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}/{os.getpid()}"


def run_controller(
    *,
    peering: str = DEFAULT_PEERING,
    priority: int | None = None,
    liveness: str | None = None,
    serve_readiness: Callable[[Callable[[], str | None]], object] | None = None,
) -> None:
    """``serve_readiness``: starts serving ``/readyz`` from the check it is given (the command line
    passes the server, shared with the agent's metrics, which this package does not import)."""
    credentials = ApiCredentials.load()
    controller = Controller(credentials.api_client())
    registry = build_registry(controller, credentials, peering)
    if serve_readiness is not None:
        # Before the peering wait: a probe meanwhile gets the reason, not a refused connection.
        serve_readiness(lambda: not_ready(controller))
    priority = random_priority() if priority is None else priority
    log.info("bpfshare controller, peering %s, priority %d", peering, priority)
    wait_for_peering(controller.kube, peering)
    while True:
        try:
            kopf.run(
                registry=registry,
                clusterwide=True,
                peering_name=peering,
                priority=priority,
                identity=cast(Any, peering_identity()),  # kopf types it as its NewType Identity
                liveness_endpoint=liveness,
            )
            return  # stopped by a signal
        except Exception:
            log.exception("the operator stopped on an error; starting it again in 5 s")
            time.sleep(5)
