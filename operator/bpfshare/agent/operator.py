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
import base64
import itertools
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import kopf
from kubernetes import client, config
from kubernetes.config.incluster_config import InClusterConfigLoader

from bpfshare.agent.loop import Agent
from bpfshare.api.resources import GROUP, MAP_PLURAL, PROGRAM_PLURAL, VERSION
from bpfshare.engine.node import Limits
from bpfshare.errors import BpfshareError

log = logging.getLogger("bpfshare.agent")

# Where a pod's service-account token and the cluster's CA are mounted (the kubernetes client's default).
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ApiCredentials:
    """The agent's one way into the API server, shared by its two clients.

    Loaded once, the way the kubernetes client loads it: in a pod, the service account (token file, CA,
    ``KUBERNETES_SERVICE_HOST``/``PORT``); elsewhere the kubeconfig (``$KUBECONFIG`` or ~/.kube/config).
    The kubernetes client (writes, events, the initial lists, the Node watch) uses this
    ``Configuration``; kopf (the watches of BpfMaps and BpfPrograms) gets the same server, CA, client
    certificate and token through its login handler, which
    reads them from this ``Configuration`` each time kopf logs in. kopf's own login methods, which would
    load the credentials a second time, are not registered.

    Projected service-account tokens rotate: kubelet writes a new token into the file once 80% of the
    old one's lifetime has passed. The kubernetes client re-reads the file when a minute has passed
    since it last did (its refresh hook, which ``get_api_key_with_prefix`` runs), so writes always send
    a current token. kopf keeps a token until the connection info expires or a request gets 401; the
    login handler sets the expiration from the token's own claims (see :func:`relogin_time`), so kopf
    logs in again, and so reads the rotated token, before the old one is refused.
    """

    def __init__(self, configuration: client.Configuration) -> None:
        self.configuration = configuration

    @classmethod
    def load(
        cls, *, environ: Mapping[str, str] = os.environ, service_account_dir: Path = SERVICE_ACCOUNT_DIR
    ) -> ApiCredentials:
        """In a pod, its service account; else the kubeconfig (``$KUBECONFIG``, else ~/.kube/config)."""
        configuration = client.Configuration()
        try:
            InClusterConfigLoader(
                token_filename=str(service_account_dir / "token"),
                cert_filename=str(service_account_dir / "ca.crt"),
                environ=environ,
            ).load_and_set(configuration)
        except config.ConfigException as in_cluster:
            try:
                config.load_kube_config(config_file=environ.get("KUBECONFIG"), client_configuration=configuration)
            except (config.ConfigException, OSError) as kubeconfig:
                raise BpfshareError(
                    f"no credentials for the API server: not in a pod ({in_cluster}) and no usable kubeconfig "
                    f"({kubeconfig}); set KUBECONFIG"
                ) from None
        if getattr(configuration, "tls_server_name", None):
            log.warning("the kubeconfig's tls-server-name applies to writes only: kopf's watches verify the host")
        return cls(configuration)

    def api_client(self) -> client.ApiClient:
        return client.ApiClient(self.configuration)

    def connection_info(self, *, trust_env: bool = False, now: datetime | None = None) -> kopf.ConnectionInfo:
        """kopf's view of these credentials, with the current token."""
        cfg = self.configuration
        # This runs the refresh hook (which re-reads a rotated token file). The value is the whole
        # Authorization header ("bearer <token>", "Basic <user:password>"), or None without a token.
        header = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        scheme: str | None
        scheme, _, token = (header or "").strip().partition(" ")
        if not token:  # no scheme given: a bare bearer token, or nothing
            scheme, token = ("Bearer", scheme) if scheme else (None, "")
        return kopf.ConnectionInfo(
            server=cfg.host,
            ca_path=cfg.ssl_ca_cert,
            insecure=not cfg.verify_ssl,
            username=cfg.username or None,
            password=cfg.password or None,
            scheme=scheme,
            token=token or None,
            certificate_path=cfg.cert_file,
            private_key_path=cfg.key_file,
            proxy_url=cfg.proxy,
            trust_env=trust_env,
            expiration=relogin_time(token, now or datetime.now(UTC)) if token else None,
        )


RELOGIN_FRACTION = 0.85  # of a token's lifetime: kubelet has written the next one at 80%
MIN_RELOGIN_DELAY = timedelta(minutes=1)


def relogin_time(token: str, now: datetime) -> datetime | None:
    """When kopf should log in again to pick up a rotated service-account token; None if never.

    From the token's claims (a JWT; the API server checks the signature, this only reads the times):
    85% of its lifetime, or ``kubernetes.io.warnafter`` if sooner (the API server gives pods tokens that
    it accepts for a year while it expects a fresh one after ``warnafter``). Not sooner than a minute
    from now, so that a token that was not rotated in time does not make kopf log in over and over.
    A token that is not a JWT with ``exp`` (a static token, say) has no time: kopf logs in again on 401.
    """
    claims = jwt_claims(token)
    if claims is None or not isinstance(claims.get("exp"), int | float):
        return None
    expires = float(claims["exp"])
    issued = claims.get("iat")
    if isinstance(issued, int | float) and issued < expires:
        at = issued + RELOGIN_FRACTION * (expires - issued)
    else:
        at = expires - MIN_RELOGIN_DELAY.total_seconds()
    warn_after = (claims.get("kubernetes.io") or {}).get("warnafter")
    if isinstance(warn_after, int | float):
        at = min(at, float(warn_after))
    return max(datetime.fromtimestamp(at, UTC), now + MIN_RELOGIN_DELAY)


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, unverified; None if ``token`` is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:  # bad base64, bad UTF-8 or bad JSON
        return None
    return claims if isinstance(claims, dict) else None


class EndlessBackoff:
    """0.5, 1, 2, 3, then 5 seconds forever; iterable afresh for every request (so not Sized)."""

    def __iter__(self) -> Iterator[float]:
        return itertools.chain([0.5, 1.0, 2.0, 3.0], itertools.repeat(5.0))


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


def run_agent(
    node: str,
    pin_root: Path,
    *,
    resync_seconds: float = 60.0,
    liveness: str | None = None,
    metrics: str | None = None,
    limits: Limits | None = None,
) -> None:
    from bpfshare.api import schema

    credentials = ApiCredentials.load()
    schema.warm()  # at start, not in the first rollout: the CRDs read, the CEL rules compiled
    agent = Agent(node, pin_root, credentials.api_client(), resync_seconds=resync_seconds, limits=limits)
    registry = build_registry(agent, credentials)
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
