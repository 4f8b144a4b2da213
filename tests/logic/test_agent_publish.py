"""The agent's publish step runs in a worker thread: it must not touch the watch state (issue 11)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bpfshare.agent.loop import Agent
from bpfshare.api.status import MapStatus, Phase, StatusEntry
from bpfshare.engine import Report
from bpfshare.engine.memory_kernel import MemoryKernel
from bpfshare.errors import BpfshareError

BODY: dict[str, Any] = {
    "apiVersion": "bpfshare.io/v1alpha1",
    "kind": "BpfMap",
    "metadata": {"name": "m", "generation": 2, "finalizers": ["bpfshare.io/node-n1"]},
    "spec": {"type": "Array", "keySize": 4, "valueSize": 8, "maxEntries": 4},
}


class RecordingWriter:
    """Stands in for the API writes only: what the agent would send, in order."""

    def __init__(self, fail: bool = False) -> None:
        self.finalizer = "bpfshare.io/node-n1"
        self.writes: list[tuple[str, str]] = []
        self.fail = fail

    def set_finalizer(self, kind: str, name: str, present: bool) -> None:
        self.writes.append(("finalizer", name))

    def set_status(self, kind: str, name: str, entry: Any, shared: Any = None) -> None:
        if self.fail:
            raise BpfshareError("API server refused the write (503)")
        self.writes.append(("status", name))

    def post_event(self, *args: Any) -> None:
        self.writes.append(("event", args[1]))


def agent_with(writer: RecordingWriter) -> Agent:
    from kubernetes import client

    agent = Agent("n1", Path("/sys/fs/bpf/bpfshare"), client.ApiClient())
    agent.engine.kernel = MemoryKernel()
    agent.writer = writer  # type: ignore[assignment]
    agent.state.on_map(None, BODY)
    return agent


def test_publish_leaves_the_watch_state_alone_and_remember_records_the_writes() -> None:
    writer = RecordingWriter()
    agent = agent_with(writer)
    snapshot = agent.state.take()
    before = agent.state.maps["m"]
    report = Report(maps={"m": StatusEntry(Phase.Ready, map=MapStatus("/p", map_id=7))})
    published = agent.publish(snapshot, report)
    assert ("status", "m") in writer.writes
    assert agent.state.maps["m"] is before and "status" not in agent.state.maps["m"], "changed from the thread"
    agent.remember(published)
    nodes = agent.state.maps["m"]["status"]["nodes"]
    assert [(e["node"], e["mapId"], e["observedGeneration"]) for e in nodes] == [("n1", 7, 2)]
    # The next pass writes nothing: the remembered body already says it.
    writer.writes.clear()
    agent.publish(agent.state.take(), report)
    assert writer.writes == []


def test_a_failed_write_is_retried_on_the_next_pass_marked_on_the_loop() -> None:
    agent = agent_with(RecordingWriter(fail=True))
    snapshot = agent.state.take()
    published = agent.publish(snapshot, Report(maps={"m": StatusEntry(Phase.Ready, map=MapStatus("/p", map_id=7))}))
    assert published.failed and not agent.state.dirty
    agent.remember(published)
    assert agent.state.dirty
