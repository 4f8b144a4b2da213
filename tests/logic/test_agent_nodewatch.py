"""The agent's watch on its own Node (agent/nodewatch.py), with CoreV1Api replaced by a script of
responses: only its own Node is asked for (a server-side field selector on list and watch), the watch
resumes from the last resourceVersion (bookmarks included), an expired one (410) or any failure
means a new list, after a growing delay while the API server is away; and the agent wiring: events
reach the node's labels on the event loop, and kopf watches no Nodes and no ConfigMaps."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from bpfshare.agent.nodewatch import NodeWatch, backoff

NODE = "ip-10-0-3-7.eu-west-1.compute.internal"


def node(labels: dict[str, str], rv: str) -> dict[str, Any]:
    return {"metadata": {"name": NODE, "labels": labels, "resourceVersion": rv}}


class Stream:
    """A urllib3 response of a watch: its lines, then the end of the stream (or an error)."""

    def __init__(self, events: list[dict[str, Any]], error: Exception | None = None) -> None:
        self.events, self.error = events, error
        self.closed = False

    def stream(self, amt: Any = None, decode_content: Any = None) -> Iterator[bytes]:
        for event in self.events:
            yield (json.dumps(event) + "\n").encode()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        pass


class Listing:
    def __init__(self, items: list[dict[str, Any]], rv: str) -> None:
        self.data = json.dumps({"items": items, "metadata": {"resourceVersion": rv}})


class Core:
    """list_node: answers from ``script`` in order (a Listing, a Stream, or an exception to raise)."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.calls: list[dict[str, Any]] = []
        self.done = threading.Event()

    def list_node(self, **kw: Any) -> Any:
        self.calls.append(kw)
        if not self.script:
            self.done.set()
            raise ApiException(status=503, reason="end of the script")
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, Stream) == bool(kw.get("watch")), (answer, kw)
        return answer


def recorder() -> tuple[list[tuple[str | None, dict[str, Any]]], Any]:
    seen: list[tuple[str | None, dict[str, Any]]] = []
    return seen, lambda kind, body: seen.append((kind, body))


def test_list_and_watch_ask_for_this_node_only_and_resume_from_the_last_version() -> None:
    seen, deliver = recorder()
    stream = Stream(
        [
            {"type": "MODIFIED", "object": node({"zone": "a"}, "11")},
            {"type": "BOOKMARK", "object": {"kind": "Node", "metadata": {"resourceVersion": "15"}}},
        ]
    )
    core = Core(Listing([node({}, "10")], "10"), stream)
    watch = NodeWatch(core, NODE, deliver, server_timeout=300)
    assert watch.list() == node({}, "10")
    watch.watch_once()
    assert seen == [("MODIFIED", node({"zone": "a"}, "11"))]  # a bookmark is no event
    assert watch.resource_version == "15" and stream.closed
    listed, watched = core.calls
    assert listed == {"field_selector": f"metadata.name={NODE}", "_preload_content": False}
    assert watched["field_selector"] == f"metadata.name={NODE}" and watched["watch"] is True
    assert watched["resource_version"] == "10" and watched["allow_watch_bookmarks"] is True
    assert watched["timeout_seconds"] == 300 and watched["_request_timeout"] == (10.0, 330)


def test_an_expired_version_lists_again_and_a_missing_node_is_delivered_as_deleted() -> None:
    seen, deliver = recorder()
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}}
    core = Core(
        Listing([node({"zone": "a"}, "10")], "10"),
        Stream([gone]),
        Listing([], "20"),  # the Node was deleted meanwhile
        Stream([{"type": "ADDED", "object": node({"zone": "b"}, "21")}]),
    )
    watch = NodeWatch(core, NODE, deliver)
    watch.list()
    thread = watch.start()
    assert core.done.wait(5)
    watch.stop()
    thread.join(5)
    assert seen[:2] == [("DELETED", {"metadata": {"name": NODE}}), ("ADDED", node({"zone": "b"}, "21"))]
    assert [c.get("resource_version") for c in core.calls if c.get("watch")][:2] == ["10", "20"]


def test_failures_back_off_and_list_again(monkeypatch: pytest.MonkeyPatch) -> None:
    seen, deliver = recorder()
    core = Core(
        Listing([node({}, "10")], "10"),
        ApiException(status=503, reason="Service Unavailable"),  # the watch
        ConnectionRefusedError("the API server is away"),  # the list after it
        Listing([node({"zone": "a"}, "30")], "30"),
        Stream([]),  # the server ends the watch: it goes on from the same version
        Stream([{"type": "MODIFIED", "object": node({"zone": "c"}, "31")}]),
    )
    watch = NodeWatch(core, NODE, deliver)
    waits: list[float] = []
    monkeypatch.setattr(watch._stop, "wait", lambda delay: waits.append(delay) or False)
    watch.list()
    thread = watch.start()
    assert core.done.wait(5)
    watch.stop()
    thread.join(5)
    assert waits[:2] == [0.5, 1.0]
    assert seen[:2] == [("MODIFIED", node({"zone": "a"}, "30")), ("MODIFIED", node({"zone": "c"}, "31"))]
    watched = [c.get("resource_version") for c in core.calls if c.get("watch")]
    assert watched[:3] == ["10", "30", "30"]


def test_the_backoff_grows_to_five_seconds() -> None:
    delays = backoff()
    assert [next(delays) for _ in range(7)] == [0.5, 1.0, 2.0, 3.0, 5.0, 5.0, 5.0]


def test_node_events_reach_the_agents_labels_on_its_event_loop() -> None:
    from kubernetes import client

    from bpfshare.agent.loop import Agent
    from bpfshare.engine.memory_kernel import MemoryKernel

    agent = Agent("n1", Path("/sys/fs/bpf/bpfshare"), client.ApiClient(), kernel=MemoryKernel())
    assert agent.node_watch.field_selector == "metadata.name=n1"

    async def main() -> dict[str, str]:
        agent.reset_wake()
        agent._wake.clear()
        agent._loop = asyncio.get_running_loop()
        thread = threading.Thread(target=agent._node_event, args=("MODIFIED", {"metadata": {"labels": {"a": "b"}}}))
        thread.start()
        thread.join()
        await asyncio.wait_for(agent._wake.wait(), 5)
        return agent.state.labels

    assert asyncio.run(main()) == {"a": "b"}
    agent._node_event("MODIFIED", {"metadata": {"labels": {}}})  # after the loop ended: dropped, no error


def test_kopf_watches_only_the_resources() -> None:
    """No Node watch through kopf (it would receive every Node's updates) and no ConfigMap watch."""
    from kubernetes import client

    from bpfshare.agent.loop import Agent
    from bpfshare.agent.operator import build_registry
    from bpfshare.credentials import ApiCredentials
    from bpfshare.engine.memory_kernel import MemoryKernel

    agent = Agent("n1", Path("/sys/fs/bpf/bpfshare"), client.ApiClient(), kernel=MemoryKernel())
    registry = build_registry(agent, ApiCredentials(client.Configuration()))
    watched = sorted(str(h.selector.any_name) for h in registry._watching.get_all_handlers())
    assert watched == ["bpfmaps", "bpfprograms"]
