"""The agent's readiness, ``GET /readyz`` on its metrics server (what the DaemonSet's readinessProbe
asks): 503 with the reason until the agent has listed everything and completed a full reconcile pass
with its state writes, 200 ``ok`` afterwards. The real server on 127.0.0.1 (a free port), asked over
HTTP; the real Agent and its loop on a MemoryKernel, with ``FakeApi`` for the API server."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from kubernetes.client.exceptions import ApiException

from bpfshare.agent.loop import Agent
from bpfshare.agent.metrics import AgentMetrics, serve
from bpfshare.agent.readiness import Server, agent_not_ready, readyz_app
from bpfshare.agent.readiness import serve as serve_app
from tests.logic.test_agent_publish import FakeApi, agent_on, bpfmap


def get(server: Server, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{server.host}:{server.port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def api() -> FakeApi:
    """Two BpfMaps to list and reconcile (maps need no compiled bytecode)."""
    api = FakeApi()
    for body in (bpfmap("flow-counts", uid="u1"), bpfmap("drops", uid="u2")):
        api.resources[("bpfmaps", body["metadata"]["name"])] = body
    return api


@pytest.fixture
def agent(api: FakeApi) -> Agent:
    agent = agent_on(api)
    agent.metrics = AgentMetrics(agent.node)
    return agent


@pytest.fixture
def server(agent: Agent) -> Iterator[Server]:
    server = serve("127.0.0.1:0", agent.metrics, ready=lambda: agent_not_ready(agent))
    try:
        yield server
    finally:
        server.close()


def run_loop_until(agent: Agent, passes: int) -> None:
    """Run the agent's reconcile loop (as kopf's startup starts it) until it has made ``passes`` passes."""

    async def main() -> None:
        agent.reset_wake()
        task = asyncio.create_task(agent.run())
        try:
            async with asyncio.timeout(30):
                while agent.passes < passes:
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_not_ready_until_the_first_full_pass_then_ready(agent: Agent, server: Server) -> None:
    status, body = get(server, "/readyz")
    assert (status, body.strip()) == (
        503,
        "not synced: listing BpfMaps, BpfPrograms, this node's state objects and its Node",
    )
    agent.initial_sync()
    status, body = get(server, "/readyz")
    assert (status, body.strip()) == (503, "not synced: the first full reconcile pass has not finished")
    run_loop_until(agent, passes=1)
    assert get(server, "/readyz") == (200, "ok\n")
    # The same server still serves the metrics.
    status, body = get(server, "/metrics")
    assert status == 200 and 'bpfshare_resources{kind="BpfMap",phase="Ready"} 2.0' in body


def test_a_first_pass_whose_state_writes_fail_is_not_ready_until_a_full_pass_succeeds(
    api: FakeApi, agent: Agent, server: Server
) -> None:
    agent.initial_sync()
    api.fail = ApiException(status=403, reason="Forbidden")
    run_loop_until(agent, passes=1)
    status, body = get(server, "/readyz")
    assert status == 503 and "first full reconcile pass failed" in body
    api.fail = None
    run_loop_until(agent, passes=agent.passes + 1)  # the failed writes marked everything for the next pass
    assert get(server, "/readyz") == (200, "ok\n")


def test_a_restarted_listing_makes_the_agent_not_ready_again(agent: Agent, server: Server) -> None:
    """kopf restarted (its startup lists again): not ready until a pass over the new listing."""
    agent.initial_sync()
    run_loop_until(agent, passes=1)
    assert get(server, "/readyz")[0] == 200
    agent.initial_sync()
    assert get(server, "/readyz")[0] == 503
    run_loop_until(agent, passes=agent.passes + 1)
    assert get(server, "/readyz")[0] == 200


def test_a_check_that_raises_answers_not_ready_and_other_paths_404() -> None:
    def broken() -> str | None:
        raise KeyError("view")

    server = serve_app("127.0.0.1:0", readyz_app(broken))
    try:
        status, body = get(server, "/readyz")
        assert status == 503 and "readiness check failed: KeyError" in body
        assert get(server, "/healthz")[0] == 404  # kopf serves /healthz, on its own port
        assert get(server, "/readyz")[0] == 503  # the server thread survived the failing check
    finally:
        server.close()
