"""The controller's view and coalescing writer against a fake API (controller/view.py, writer.py)."""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from bpfshare.api.states import AGENT_FINALIZER, CONTROLLER_FINALIZER, MAP_STATE, state_body
from bpfshare.controller.aggregate import merge_patch
from bpfshare.controller.view import Key, StateEntry, View
from bpfshare.controller.writer import STREAMS, Conflict, Writer

MAP: Key = ("BpfMap", "m")


def bpfmap(name: str = "m", generation: int = 1, **meta: Any) -> dict[str, Any]:
    return {
        "kind": "BpfMap",
        "metadata": {"name": name, "generation": generation, "resourceVersion": "1", **meta},
        "spec": {"type": "Hash", "keySize": 4, "valueSize": 8, "maxEntries": 4},
    }


def mapstate(node: str, phase: str = "Ready", generation: int = 1, resource: str = "m") -> dict[str, Any]:
    body = state_body(MAP_STATE, resource, "uid", node, {"phase": phase, "observedGeneration": generation})
    return body


def node(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


class FakeApi:
    """Objects in memory; every write is echoed to the view as its watch event would be."""

    def __init__(self, view: View, loop: asyncio.AbstractEventLoop) -> None:
        self.view = view
        self.loop = loop
        self.objects: dict[Key, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.lock = threading.Lock()
        self.version = 100

    def put(self, body: dict[str, Any]) -> None:
        key = (body["kind"], body["metadata"]["name"])
        self.objects[key] = copy.deepcopy(body)
        self.view.resource_event("bpfmaps", "MODIFIED", copy.deepcopy(body))

    def _echo(self, key: Key) -> dict[str, Any] | None:
        body = self.objects.get(key)
        if body is None:
            self.loop.call_soon_threadsafe(
                self.view.resource_event, "bpfmaps", "DELETED", {"metadata": {"name": key[1]}}
            )
            return None
        self.version += 1
        body["metadata"]["resourceVersion"] = str(self.version)
        self.loop.call_soon_threadsafe(self.view.resource_event, "bpfmaps", "MODIFIED", copy.deepcopy(body))
        return copy.deepcopy(body)

    def patch_status(self, key: Key, patch: dict[str, Any]) -> dict[str, Any] | None:
        with self.lock:
            self.calls.append("status")
            body = self.objects.get(key)
            if body is None:
                return None
            status = dict(body.get("status") or {})
            for k, v in patch["status"].items():
                if v is None:
                    status.pop(k, None)
                else:
                    status[k] = v
            body["status"] = status
            return self._echo(key)

    def patch_finalizers(self, key: Key, patch: list[dict[str, Any]]) -> dict[str, Any] | None:
        with self.lock:
            self.calls.append("finalizers")
            body = self.objects.get(key)
            if body is None:
                return None
            meta = body["metadata"]
            for op in patch:
                if op["op"] == "test":
                    field = op["path"].rsplit("/", 1)[1]
                    if meta.get(field, [] if field == "finalizers" else None) != op["value"]:
                        raise Conflict("test failed")
                elif op["op"] == "remove":
                    meta.pop("finalizers", None)
                else:
                    meta["finalizers"] = list(op["value"])
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                del self.objects[key]
            return self._echo(key)

    def get(self, key: Key) -> dict[str, Any] | None:
        with self.lock:
            self.calls.append("get")
            body = self.objects.get(key)
            return copy.deepcopy(body) if body else None

    def delete_state(self, entry: StateEntry) -> None:
        with self.lock:
            self.calls.append(f"delete {entry.name}")
            gone = {"metadata": {"name": entry.name}}
            self.loop.call_soon_threadsafe(self.view.state_event, entry.kind.plural, "DELETED", gone)


def synced(view: View, *objs: dict[str, Any], nodes: list[dict[str, Any]] | None = None) -> None:
    view.replace_resources("bpfmaps", [])
    view.replace_resources("bpfprograms", [])
    view.replace_states("bpfmapstates", [])
    view.replace_states("bpfprogramstates", [])
    view.replace_nodes(nodes or [])
    assert set(STREAMS) <= view.synced


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def run(test: Callable[[View, FakeApi, Writer], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        view = View()
        api = FakeApi(view, asyncio.get_running_loop())
        writer = Writer(view, api, **({"min_interval": 0.2, "orphan_grace": 0.1} | options))
        task = asyncio.create_task(writer.run())
        try:
            await test(view, api, writer)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def conditions(body: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in (body.get("status") or {}).get("conditions") or []}


def test_nothing_is_written_before_every_stream_has_listed() -> None:
    async def test(view: View, api: FakeApi, writer: Writer) -> None:
        api.put(bpfmap())
        view.replace_nodes([node("w1")])
        await asyncio.sleep(0.3)
        assert api.calls == []
        synced(view, nodes=[node("w1")])
        api.put(bpfmap())
        await until(lambda: "status" in api.calls)

    run(test)


def test_the_first_write_is_at_once_with_the_finalizer_then_no_write_without_a_change() -> None:
    async def test(view: View, api: FakeApi, writer: Writer) -> None:
        synced(view, nodes=[node("w1")])
        api.put(bpfmap())
        await until(lambda: api.calls == ["finalizers", "status"])
        body = api.objects[MAP]
        assert body["metadata"]["finalizers"] == [CONTROLLER_FINALIZER]
        assert body["status"]["ready"] == "0/1"
        view.node_event("MODIFIED", node("w1"))  # a kubelet's status update: labels unchanged
        view.replace_nodes([node("w1")])
        writer.changed(None)
        await asyncio.sleep(0.5)
        assert api.calls == ["finalizers", "status"]
        view.state_event("bpfmapstates", "ADDED", mapstate("w1"))
        await until(lambda: conditions(api.objects[MAP]).get("Ready") == "True")
        assert api.calls == ["finalizers", "status", "status"]

    run(test)


def test_a_burst_of_state_changes_becomes_a_few_writes() -> None:
    async def test(view: View, api: FakeApi, writer: Writer) -> None:
        names = [f"w{i}" for i in range(100)]
        synced(view, nodes=[node(n) for n in names])
        api.put(bpfmap())
        await until(lambda: "status" in api.calls)
        started = asyncio.get_running_loop().time()
        for round_ in range(10):  # 1000 state writes within about a second
            for n in names:
                view.state_event("bpfmapstates", "MODIFIED", mapstate(n, "Pending" if round_ < 9 else "Ready"))
            await asyncio.sleep(0.1)
        await until(lambda: conditions(api.objects[MAP]).get("Ready") == "True")
        elapsed = asyncio.get_running_loop().time() - started
        writes = api.calls.count("status") - 1
        assert writes <= elapsed / 0.2 + 2, (writes, elapsed)
        assert writes <= 8

    run(test)


def test_progress_alone_waits_for_the_progress_interval_and_a_flip_is_written_at_once() -> None:
    """Nodes reporting one by one change only the counts: a write per progress_interval, not per report;
    the Ready condition turning True, or Stalled on an error, is written within min_interval."""

    async def test(view: View, api: FakeApi, writer: Writer) -> None:
        names = [f"w{i}" for i in range(10)]
        synced(view, nodes=[node(n) for n in names])
        api.put(bpfmap())
        await until(lambda: api.calls == ["finalizers", "status"])
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n in names[:8]:  # 8 reports over 0.4 s: progress only (Ready stays False, NodesPending)
            view.state_event("bpfmapstates", "ADDED", mapstate(n))
            await asyncio.sleep(0.05)
        if loop.time() - started < 1.0:  # (a machine slow enough to take longer may have written)
            assert api.calls.count("status") == 1  # nothing yet: within the progress interval
        await until(lambda: api.objects[MAP]["status"]["ready"] == "8/10")
        assert loop.time() - started >= 1.4  # one progress write, at the interval
        assert api.calls.count("status") == 2
        view.state_event("bpfmapstates", "ADDED", mapstate(names[8], "Error"))
        await until(lambda: conditions(api.objects[MAP]).get("Stalled") == "True", timeout=0.5)
        view.state_event("bpfmapstates", "MODIFIED", mapstate(names[8]))
        view.state_event("bpfmapstates", "ADDED", mapstate(names[9]))
        await until(lambda: conditions(api.objects[MAP]).get("Ready") == "True", timeout=0.5)
        assert api.calls.count("status") == 4

    run(test, min_interval=0.1, progress_interval=1.5)


def test_a_stopped_writer_writes_nothing_more() -> None:
    async def test(view: View, api: FakeApi, writer: Writer) -> None:
        synced(view, nodes=[node("w1")])
        api.put(bpfmap())
        await until(lambda: "status" in api.calls)
        await writer.stop()
        view.state_event("bpfmapstates", "ADDED", mapstate("w1"))
        await asyncio.sleep(0.5)
        assert api.calls == ["finalizers", "status"]

    run(test)


def test_a_deleted_resource_is_held_until_its_nodes_release_it_or_vanish() -> None:
    async def test(view: View, api: FakeApi, writer: Writer) -> None:
        synced(view, nodes=[node("w1"), node("w2")])
        view.state_event("bpfmapstates", "ADDED", mapstate("w1"))
        view.state_event("bpfmapstates", "ADDED", mapstate("w2"))
        api.put(bpfmap(finalizers=[CONTROLLER_FINALIZER]))
        await until(lambda: "status" in api.calls)
        api.put(bpfmap(finalizers=[CONTROLLER_FINALIZER], deletionTimestamp="2026-01-01T00:00:00Z"))
        await until(lambda: conditions(api.objects[MAP]).get("Ready") == "False")
        assert api.objects[MAP]["status"]["conditions"][1]["reason"] == "Releasing"
        view.state_event("bpfmapstates", "DELETED", mapstate("w1"))  # w1 released it
        await asyncio.sleep(0.4)
        assert MAP in api.objects
        view.node_event("DELETED", node("w2"))  # w2 vanished: its state goes, the map is released
        await until(lambda: MAP not in api.objects)
        assert "delete m.w2" in api.calls

    run(test)


def test_states_of_a_deleted_node_are_deleted_after_the_grace() -> None:
    async def test(view: View, api: FakeApi, writer: Writer) -> None:
        synced(view, nodes=[node("w1")])
        api.put(bpfmap(finalizers=[CONTROLLER_FINALIZER]))
        view.state_event("bpfmapstates", "ADDED", mapstate("w1"))
        await until(lambda: conditions(api.objects.get(MAP, {})).get("Ready") == "True")
        view.node_event("DELETED", node("w1"))
        await until(lambda: "delete m.w1" in api.calls)
        await until(lambda: api.objects[MAP]["status"]["ready"] == "0/0")

    run(test)


def test_a_listing_replaces_what_a_stream_missed() -> None:
    view = View()
    view.replace_nodes([node("a"), node("b")])
    view.replace_states("bpfmapstates", [mapstate("a"), mapstate("b")])
    view.replace_states("bpfmapstates", [mapstate("b")])  # a's state was deleted while the stream was away
    view.replace_nodes([node("b")])
    assert set(view.states_of(MAP)) == {"b"} and set(view.nodes) == {"b"}
    assert view.has_agent("b") and not view.has_agent("a")
    view.state_event("bpfmapstates", "DELETED", mapstate("b"))
    assert view.states_of(MAP) == {} and not view.has_agent("b")


def test_legacy_status_keys_go_with_the_first_write() -> None:
    async def test(view: View, api: FakeApi, writer: Writer) -> None:
        synced(view, nodes=[node("w1")])
        old = bpfmap(finalizers=["bpfshare.io/node-w1"])
        old["status"] = {"nodes": [{"node": "w1", "phase": "Ready"}], "phases": {"w1": "Ready"}, "mapIds": {"w1": 3}}
        api.put(old)
        await until(lambda: "status" in api.calls)
        body = api.objects[MAP]
        assert body["metadata"]["finalizers"] == [CONTROLLER_FINALIZER]
        assert set(body["status"]) == {"observedGeneration", "nodes", "ready", "conditions"}
        assert body["status"]["nodes"]["selected"] == 1

    run(test)


def test_merge_patch_of_the_same_status_is_the_status() -> None:
    status = {"ready": "1/1"}
    assert merge_patch(status, status) == status
    assert AGENT_FINALIZER  # the states the writer deletes carry it; kube.KubeApi removes it first


def test_the_view_keeps_the_nodes_that_have_states_but_no_node() -> None:
    """What the writer walks to find vanished nodes' states, kept up to date by every change (not found
    by walking every state on every event)."""
    view = View()
    view.replace_nodes([node("w1"), node("w2")])
    view.replace_states("bpfmapstates", [mapstate("w1"), mapstate("w2"), mapstate("w3")])
    assert view.unknown_nodes() == {"w3"}
    view.node_event("DELETED", node("w2"))
    assert view.unknown_nodes() == {"w2", "w3"}
    view.node_event("ADDED", node("w3"))
    assert view.unknown_nodes() == {"w2"}
    assert [e.node for e in view.states_on("w2")] == ["w2"]
    view.state_event("bpfmapstates", "DELETED", mapstate("w2"))
    assert view.unknown_nodes() == set() and list(view.states_on("w2")) == []
    view.state_event("bpfmapstates", "ADDED", mapstate("w9", resource="other"))
    assert view.unknown_nodes() == {"w9"}
    view.replace_nodes([node("w1"), node("w9")])  # a listing: w3 (which has a state) is gone again
    assert view.unknown_nodes() == {"w3"}
