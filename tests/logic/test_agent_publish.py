"""What the agent sends to the API server, pass by pass: the real Agent (its ClusterState, the Engine
on a MemoryKernel, its Writer) with the kubernetes client's API objects replaced by ``FakeApi``, which
keeps the objects written and records every request. The agent writes only its own node's state
objects (server-side apply, one request per changed state, none when nothing changed), nothing to
BpfMaps and BpfPrograms, and deletes a state once the node released its resource. The publish step
runs in a worker thread: it must not touch the watch state (issue 11)."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kubernetes.client.exceptions import ApiException

from bpfshare.agent.loop import Agent, attached_summary, merge_normal_events, state_status
from bpfshare.agent.writer import APPLY, JSON_PATCH
from bpfshare.api.states import AGENT_FINALIZER, MAP_STATE, state_body, state_name
from bpfshare.api.status import Event, MapStatus, Phase, ProgramStatus, StatusEntry
from bpfshare.engine import Report
from bpfshare.engine.memory_kernel import MemoryKernel
from tests.logic.enginekit import PIN_ROOT, obj

GROUP, VERSION = "bpfshare.io", "v1alpha1"
RESOURCES = ("bpfmaps", "bpfprograms")
STATES = ("bpfmapstates", "bpfprogramstates")
NODE = "n1"


def not_found() -> ApiException:
    return ApiException(status=404, reason="Not Found")


class FakeApi:
    """CustomObjectsApi and CoreV1Api in one: the resources to list, the state objects written (kept as
    the API server would keep them), ConfigMaps, this node's Node, and every request in ``calls``."""

    def __init__(self) -> None:
        self.resources: dict[tuple[str, str], dict[str, Any]] = {}
        self.states: dict[tuple[str, str], dict[str, Any]] = {}
        self.config_maps: dict[tuple[str, str], dict[str, bytes]] = {}
        self.node: dict[str, Any] | None = {"metadata": {"name": NODE, "labels": {}}}
        self.calls: list[tuple[str, str, str | None, dict[str, Any]]] = []  # (verb, plural, name, details)
        self.deleting_on_apply: set[str] = set()  # state names the "garbage collector" is deleting
        self.fail: ApiException | None = None
        self._version = 100

    def _rv(self) -> str:
        self._version += 1
        return str(self._version)

    # -- CustomObjectsApi --------------------------------------------------------------------------

    def list_cluster_custom_object(self, group: str, version: str, plural: str, **kw: Any) -> dict[str, Any]:
        self.calls.append(("list", plural, None, kw))
        source = self.resources if plural in RESOURCES else self.states
        items = [copy.deepcopy(b) for (p, _), b in source.items() if p == plural]
        if selector := kw.get("field_selector"):
            field_name, _, value = selector.partition("=")
            assert field_name == "spec.node", selector
            items = [i for i in items if i["spec"]["node"] == value]
        return {"items": items, "metadata": {"resourceVersion": self._rv()}}

    def patch_cluster_custom_object(
        self, group: str, version: str, plural: str, name: str, body: Any, **kw: Any
    ) -> dict[str, Any]:
        assert plural in STATES, f"a write to {plural}/{name}: the agent writes only state objects"
        self.calls.append(("apply" if kw.get("_content_type") == APPLY else "json-patch", plural, name, kw))
        if self.fail is not None:
            raise self.fail
        key = (plural, name)
        if kw.get("_content_type") == APPLY:
            assert body["metadata"]["name"] == name
            stored = copy.deepcopy(body)
            old = self.states.get(key)
            stored["metadata"]["uid"] = old["metadata"]["uid"] if old else f"state-{name}"
            stored["metadata"]["resourceVersion"] = self._rv()
            if name in self.deleting_on_apply:
                self.deleting_on_apply.discard(name)
                stored["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"
            self.states[key] = stored
            return copy.deepcopy(stored)
        assert kw.get("_content_type") == JSON_PATCH
        if key not in self.states:
            raise not_found()
        meta = self.states[key]["metadata"]
        for op in body:
            if op["op"] == "test" and meta.get("finalizers") != op["value"]:
                raise ApiException(status=422, reason="the test failed")
        for op in body:
            if op["op"] == "remove":
                meta.pop("finalizers", None)
            elif op["op"] == "replace":
                meta["finalizers"] = op["value"]
        return copy.deepcopy(self.states[key])

    def get_cluster_custom_object(self, group: str, version: str, plural: str, name: str) -> dict[str, Any]:
        self.calls.append(("get", plural, name, {}))
        if (plural, name) not in self.states:
            raise not_found()
        return copy.deepcopy(self.states[(plural, name)])

    def delete_cluster_custom_object(self, group: str, version: str, plural: str, name: str, **kw: Any) -> Any:
        assert plural in STATES, f"a deletion of {plural}/{name}"
        self.calls.append(("delete", plural, name, kw))
        if (plural, name) not in self.states:
            raise not_found()
        if self.states[(plural, name)]["metadata"].get("finalizers"):
            self.states[(plural, name)]["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"
        else:
            del self.states[(plural, name)]
        return {}

    # -- CoreV1Api ---------------------------------------------------------------------------------

    def create_namespaced_event(self, namespace: str, event: Any, **kw: Any) -> Any:
        self.calls.append(("event", namespace, event.involved_object.name, {"event": event}))
        return event

    def read_namespaced_config_map(self, name: str, namespace: str, **kw: Any) -> Any:
        self.calls.append(("get", "configmaps", f"{namespace}/{name}", {}))
        data = self.config_maps.get((namespace, name))
        if data is None:
            raise not_found()
        return SimpleNamespace(binary_data={k: base64.b64encode(v).decode() for k, v in data.items()}, data=None)

    def list_node(self, **kw: Any) -> Any:
        assert not kw.get("watch"), "the logic tests do not watch"
        self.calls.append(("list", "nodes", None, kw))
        items = [self.node] if self.node is not None else []
        return SimpleNamespace(data=json.dumps({"items": items, "metadata": {"resourceVersion": self._rv()}}))

    # -- what the tests look at --------------------------------------------------------------------

    def writes(self) -> list[tuple[str, str, str | None]]:
        """Every request that is no list or read (applies, patches, deletions, events)."""
        return [(verb, plural, name) for verb, plural, name, _ in self.calls if verb not in ("list", "get")]

    def state(self, plural: str, resource: str, node: str = NODE) -> dict[str, Any] | None:
        return self.states.get((plural, state_name(resource, node)))


def kernel() -> MemoryKernel:
    k = MemoryKernel()
    k.add_interface("eth0")
    k.add_cgroup("/")
    return k


def agent_on(api: FakeApi, k: MemoryKernel | None = None, node: str = NODE) -> Agent:
    from kubernetes import client

    agent = Agent(node, PIN_ROOT, client.ApiClient(), kernel=k or kernel())
    agent.custom = agent.writer.custom = agent.writer.core = agent.node_watch.core = api
    return agent


def run_pass(agent: Agent) -> Report:
    """One pass as the loop runs it: snapshot, engine, publish (a worker thread there), remember."""
    snapshot = agent.state.take()
    report = agent.reconcile(snapshot)
    agent.remember(agent.publish(snapshot, report))
    return report


def bpfmap(name: str = "flow-counts", generation: int = 1, uid: str = "u-map", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bpfshare.io/v1alpha1",
        "kind": "BpfMap",
        "metadata": {"name": name, "generation": generation, "uid": uid, "resourceVersion": "1"},
        "spec": {"type": "Array", "keySize": 4, "valueSize": 8, "maxEntries": 4, **spec},
    }


def bpfprog(name: str = "count-ingress", generation: int = 1, uid: str = "u-prog", **spec: Any) -> dict[str, Any]:
    body = {
        "bytecode": {"path": obj("flow_counter.o")},
        "program": "count_ingress",
        "attach": {"tc": {"interfaces": ["eth0"], "direction": "ingress"}},
        "maps": {"shared_counts": "flow-counts"},
        **spec,
    }
    return {
        "apiVersion": "bpfshare.io/v1alpha1",
        "kind": "BpfProgram",
        "metadata": {"name": name, "generation": generation, "uid": uid, "resourceVersion": "1"},
        "spec": body,
    }


def deleting(body: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(body)
    out["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    out["metadata"]["finalizers"] = ["bpfshare.io/controller"]
    return out


def started(api: FakeApi, *bodies: dict[str, Any], k: MemoryKernel | None = None) -> Agent:
    """An agent that listed ``bodies`` at start (``initial_sync``) and ran its first pass."""
    for body in bodies:
        api.resources[("bpfmaps" if body["kind"] == "BpfMap" else "bpfprograms", body["metadata"]["name"])] = body
    agent = agent_on(api, k)
    agent.initial_sync()
    run_pass(agent)
    return agent


# -- what a pass writes --------------------------------------------------------------------------------


def test_a_pass_applies_one_whole_state_per_resource_and_nothing_else() -> None:
    api = FakeApi()
    started(api, bpfmap(), bpfprog())
    applies = [(verb, plural, name) for verb, plural, name in api.writes() if verb != "event"]
    assert sorted(applies) == [
        ("apply", "bpfmapstates", "flow-counts.n1"),
        ("apply", "bpfprogramstates", "count-ingress.n1"),
    ]
    for *_, options in [c for c in api.calls if c[0] == "apply"]:
        assert options["field_manager"] == "bpfshare-agent" and options["force"] is True
    m = api.state("bpfmapstates", "flow-counts")
    p = api.state("bpfprogramstates", "count-ingress")
    assert m is not None and p is not None
    assert m["metadata"]["finalizers"] == [AGENT_FINALIZER]
    assert m["metadata"]["labels"] == {"bpfshare.io/map": "flow-counts", "bpfshare.io/node": NODE}
    assert m["metadata"]["ownerReferences"] == [
        {"apiVersion": "bpfshare.io/v1alpha1", "kind": "BpfMap", "name": "flow-counts", "uid": "u-map"}
    ]
    assert m["spec"] == {"node": NODE, "map": "flow-counts"}
    assert m["status"]["phase"] == "Ready" and m["status"]["observedGeneration"] == 1
    assert m["status"]["pinPath"] == f"{PIN_ROOT}/maps/flow-counts" and m["status"]["usedBy"] == ["count-ingress"]
    assert "node" not in m["status"]
    assert p["spec"] == {"node": NODE, "program": "count-ingress"}
    assert p["metadata"]["labels"] == {"bpfshare.io/program": "count-ingress", "bpfshare.io/node": NODE}
    assert p["status"]["maps"] == {"shared_counts": m["status"]["mapId"]}
    assert p["status"]["attached"] == "tc:eth0:ingress" == p["status"]["attachments"][0]["target"]
    # Exactly the body api.states makes: nothing else is applied.
    wanted = state_body(MAP_STATE, "flow-counts", "u-map", NODE, m["status"])
    assert {k: v for k, v in m.items() if k != "metadata"} == {k: v for k, v in wanted.items() if k != "metadata"}


def test_empty_sets_and_maps_are_written_as_empty() -> None:
    """usedBy [] and maps {} are written as such (the CRDs make both atomic, so an empty value applied
    over a full one replaces it: tests/controlplane/test_crds.py shows it on the API server)."""
    api = FakeApi()
    started(api, bpfmap())
    assert (api.state("bpfmapstates", "flow-counts") or {})["status"]["usedBy"] == []
    program = StatusEntry(Phase.Ready, program=ProgramStatus(7, "ab", maps={}))
    assert state_status("BpfProgram", program, 2) == {
        "phase": "Ready",
        "message": "",
        "observedGeneration": 2,
        "programId": 7,
        "tag": "ab",
        "maps": {},
        "attachments": [],
        "attached": "",
    }


def test_events_are_posted_on_the_resources() -> None:
    api = FakeApi()
    started(api, bpfmap(), bpfprog())
    events = {(c[2], c[3]["event"].involved_object.kind, c[3]["event"].reason) for c in api.calls if c[0] == "event"}
    assert ("count-ingress", "BpfProgram", "Loaded") in events
    assert all(kind in ("BpfMap", "BpfProgram") for _, kind, _ in events)


def test_a_pass_that_changes_nothing_writes_nothing() -> None:
    api = FakeApi()
    agent = started(api, bpfmap(), bpfprog())
    api.calls.clear()
    for _ in range(3):  # resyncs
        agent.state.mark_all()
        run_pass(agent)
    assert api.writes() == []
    # Status and finalizer changes on the resources (the controller's writes) make no pass at all.
    viewed = bpfprog()
    viewed["metadata"].update(finalizers=["bpfshare.io/controller"], resourceVersion="9")
    viewed["status"] = {"observedGeneration": 1, "ready": "1/1"}
    assert agent.state.on_program("MODIFIED", viewed) is False
    assert not agent.state.dirty


def test_a_new_generation_is_one_apply_of_that_state() -> None:
    api = FakeApi()
    agent = started(api, bpfmap(), bpfprog())
    api.calls.clear()
    agent.state.on_program(
        "MODIFIED",
        bpfprog(generation=2, attach={"tc": {"interfaces": ["eth0"], "direction": "ingress", "priority": 3}}),
    )
    run_pass(agent)
    writes = [w for w in api.writes() if w[0] != "event"]
    assert writes == [("apply", "bpfprogramstates", "count-ingress.n1")]
    assert (api.state("bpfprogramstates", "count-ingress") or {})["status"]["observedGeneration"] == 2


def test_a_release_drops_the_finalizer_then_deletes_the_state() -> None:
    """Deletion held by the controller's finalizer: the node releases, its state goes, in that order."""
    api = FakeApi()
    k = kernel()
    agent = started(api, bpfmap(), bpfprog(), k=k)
    api.calls.clear()
    agent.state.on_program("MODIFIED", deleting(bpfprog()))
    run_pass(agent)
    state = "count-ingress.n1"
    assert [(v, p, n) for v, p, n, _ in api.calls if n == state] == [
        ("json-patch", "bpfprogramstates", state),
        ("delete", "bpfprogramstates", state),
    ]
    assert api.state("bpfprogramstates", "count-ingress") is None
    assert k.tc_filters() == {}
    agent.state.on_map("MODIFIED", deleting(bpfmap()))
    run_pass(agent)
    assert api.state("bpfmapstates", "flow-counts") is None
    assert not k.exists(PIN_ROOT / "maps" / "flow-counts")
    api.calls.clear()
    agent.state.mark_all()
    run_pass(agent)
    assert api.writes() == [], "a released resource costs no more requests"


def test_a_resource_gone_without_a_finalizer_is_still_released_and_its_state_deleted() -> None:
    """No controller: the DELETED event is the first this node hears of the deletion."""
    api = FakeApi()
    k = kernel()
    agent = started(api, bpfmap(), bpfprog(), k=k)
    assert agent.state.on_program("DELETED", bpfprog()) is True
    assert agent.state.on_map("DELETED", bpfmap()) is True
    run_pass(agent)
    assert k.tc_filters() == {} and not k.exists(PIN_ROOT / "programs" / "count-ingress")
    run_pass(agent)  # the map's release waited for its user to go
    assert not k.exists(PIN_ROOT / "maps" / "flow-counts")
    assert api.states == {}
    assert agent.state.tombstones == set() and agent.state.maps == {} and agent.state.programs == {}
    assert agent.states == {}


def test_a_failed_delete_keeps_the_tombstone_for_the_next_pass() -> None:
    api = FakeApi()
    agent = started(api, bpfmap(), bpfprog())
    agent.state.on_program("DELETED", bpfprog())
    api.fail = ApiException(status=503, reason="Service Unavailable")
    run_pass(agent)
    assert ("BpfProgram", "count-ingress") in agent.state.tombstones and agent.state.dirty
    api.fail = None
    run_pass(agent)
    assert agent.state.tombstones == set() and api.state("bpfprogramstates", "count-ingress") is None


def test_a_node_no_longer_selected_deletes_its_state_and_a_relabel_brings_it_back() -> None:
    api = FakeApi()
    api.node = {"metadata": {"name": NODE, "labels": {"role": "edge"}}}
    edge = {"nodeSelector": {"matchLabels": {"role": "edge"}}}
    agent = started(api, bpfmap(**edge))
    assert api.state("bpfmapstates", "flow-counts") is not None
    assert agent.state.on_node("MODIFIED", {"metadata": {"name": NODE, "labels": {"role": "core"}}})
    run_pass(agent)
    assert api.state("bpfmapstates", "flow-counts") is None
    agent.state.on_node("MODIFIED", {"metadata": {"name": NODE, "labels": {"role": "edge"}}})
    run_pass(agent)
    assert (api.state("bpfmapstates", "flow-counts") or {})["status"]["phase"] == "Ready"


def test_a_resource_created_again_gets_its_state_applied_with_the_new_owner_only() -> None:
    api = FakeApi()
    agent = started(api, bpfmap())
    map_id = (api.state("bpfmapstates", "flow-counts") or {})["status"]["mapId"]
    api.calls.clear()
    agent.state.on_map("DELETED", bpfmap())
    agent.state.on_map("ADDED", bpfmap(uid="u-map-2"))  # before the pass: the same map on the node
    run_pass(agent)
    assert api.writes() == [("apply", "bpfmapstates", "flow-counts.n1")]
    state = api.state("bpfmapstates", "flow-counts") or {}
    assert [ref["uid"] for ref in state["metadata"]["ownerReferences"]] == ["u-map-2"]
    assert state["status"]["mapId"] == map_id


def test_a_state_being_deleted_by_someone_else_is_written_anew() -> None:
    """The garbage collector deletes a state whose owner's uid is gone; held by the agent's finalizer it
    would linger, deleting, for as long as the node holds the resource."""
    api = FakeApi()
    agent = started(api, bpfmap())
    api.calls.clear()
    api.deleting_on_apply.add("flow-counts.n1")
    agent.state.on_map("MODIFIED", bpfmap(generation=2))
    run_pass(agent)
    assert [w for w in api.writes() if w[0] != "event"] == [
        ("apply", "bpfmapstates", "flow-counts.n1"),
        ("json-patch", "bpfmapstates", "flow-counts.n1"),
        ("delete", "bpfmapstates", "flow-counts.n1"),
        ("apply", "bpfmapstates", "flow-counts.n1"),
    ]
    state = api.state("bpfmapstates", "flow-counts") or {}
    assert "deletionTimestamp" not in state["metadata"] and state["status"]["observedGeneration"] == 2


def test_an_invalid_resource_is_an_error_state_and_goes_when_deleted() -> None:
    api = FakeApi()
    bad = bpfmap("broken")
    bad["spec"]["keySize"] = "four"
    agent = started(api, bad)
    state = api.state("bpfmapstates", "broken") or {}
    assert state["status"]["phase"] == "Error" and "spec.keySize" in state["status"]["message"]
    agent.state.on_map("DELETED", bad)
    run_pass(agent)
    assert api.state("bpfmapstates", "broken") is None and agent.state.tombstones == set()


# -- at start: the node's own states ---------------------------------------------------------------------


def test_a_restarted_agent_lists_its_own_states_and_rewrites_none() -> None:
    api = FakeApi()
    k = kernel()
    started(api, bpfmap(), bpfprog(), k=k)
    other = copy.deepcopy(api.states[("bpfmapstates", "flow-counts.n1")])  # another node's, never received
    other["metadata"]["name"], other["spec"]["node"] = "flow-counts.n2", "n2"
    api.states[("bpfmapstates", "flow-counts.n2")] = other
    api.calls.clear()
    agent = agent_on(api, k)
    agent.initial_sync()
    lists = [(plural, kw) for verb, plural, _, kw in api.calls if verb == "list"]
    assert ("bpfmapstates", {"field_selector": "spec.node=n1"}) in lists
    assert ("bpfprogramstates", {"field_selector": "spec.node=n1"}) in lists
    assert ("nodes", {"field_selector": "metadata.name=n1", "_preload_content": False}) in lists
    assert not any(verb == "watch" for verb, *_ in api.calls)
    assert set(agent.states) == {("BpfMap", "flow-counts"), ("BpfProgram", "count-ingress")}
    run_pass(agent)
    assert api.writes() == []


def test_a_pin_removed_while_the_agent_was_away_is_re_pinned_from_the_reported_map_id() -> None:
    api = FakeApi()
    k = kernel()
    started(api, bpfmap(), bpfprog(), k=k)
    map_id = (api.state("bpfmapstates", "flow-counts") or {})["status"]["mapId"]
    k.unpin(PIN_ROOT / "maps" / "flow-counts")  # the program still holds the map
    agent = agent_on(api, k)
    agent.initial_sync()
    snapshot = agent.state.take()
    assert agent._reported_map_ids(snapshot) == {"flow-counts": map_id}
    report = agent.reconcile(snapshot)
    assert report.maps["flow-counts"].map_id == map_id
    agent.remember(agent.publish(snapshot, report))
    assert (api.state("bpfmapstates", "flow-counts") or {})["status"]["mapId"] == map_id


def test_states_of_resources_gone_while_the_agent_was_away_are_deleted() -> None:
    api = FakeApi()
    k = kernel()
    started(api, bpfmap(), bpfprog(), k=k)
    del api.resources[("bpfprograms", "count-ingress")]
    agent = agent_on(api, k)
    agent.initial_sync()
    run_pass(agent)
    assert api.state("bpfprogramstates", "count-ingress") is None
    assert k.tc_filters() == {}  # and the engine removed what it left on the node
    assert api.state("bpfmapstates", "flow-counts") is not None


# -- ConfigMaps: read, not watched -----------------------------------------------------------------------


def test_a_config_map_is_read_when_its_program_is_checked_and_again_at_each_resync() -> None:
    api = FakeApi()
    api.config_maps[("ns", "objs")] = {"o": Path(obj("flow_counter.o")).read_bytes()}
    from_cm = bpfprog("from-cm", uid="u-cm", bytecode={"configMap": {"namespace": "ns", "name": "objs", "key": "o"}})
    from_cm["spec"]["attach"] = {"tc": {"interfaces": ["eth0"], "direction": "egress"}}
    agent = started(api, bpfmap(), from_cm, bpfprog())

    def reads() -> int:
        return sum(1 for verb, plural, *_ in api.calls if (verb, plural) == ("get", "configmaps"))

    assert reads() == 1
    assert (api.state("bpfprogramstates", "from-cm") or {})["status"]["phase"] == "Ready"
    agent.state.on_program(
        "MODIFIED",
        bpfprog(generation=2, attach={"tc": {"interfaces": ["eth0"], "direction": "ingress", "priority": 2}}),
    )
    run_pass(agent)  # another program's change: no read
    assert reads() == 1
    api.config_maps[("ns", "objs")] = {"o": b"not an object"}  # changed: picked up at the next resync
    agent.state.mark_all()
    run_pass(agent)
    assert reads() == 2
    state = api.state("bpfprogramstates", "from-cm") or {}
    assert state["status"]["phase"] == "Error" and "not an ELF object" in state["status"]["message"]


# -- the publish step in its thread ----------------------------------------------------------------------


def test_publish_leaves_the_watch_state_alone_and_remember_records_the_writes() -> None:
    api = FakeApi()
    agent = agent_on(api)
    agent.state.on_map(None, bpfmap())
    snapshot = agent.state.take()
    body = agent.state.maps["flow-counts"]
    report = Report(maps={"flow-counts": StatusEntry(Phase.Ready, map=MapStatus("/p", map_id=7))})
    published = agent.publish(snapshot, report)
    assert api.writes() == [("apply", "bpfmapstates", "flow-counts.n1")]
    assert agent.states == {}, "changed from the thread"
    assert agent.state.maps["flow-counts"] is body and "status" not in body
    agent.remember(published)
    assert agent.states[("BpfMap", "flow-counts")]["status"]["mapId"] == 7
    api.calls.clear()
    agent.publish(agent.state.take(), report)  # the remembered state already says it
    assert api.writes() == []


def test_a_failed_write_is_retried_on_the_next_pass_marked_on_the_loop() -> None:
    api = FakeApi()
    api.fail = ApiException(status=503, reason="Service Unavailable")
    agent = agent_on(api)
    agent.state.on_map(None, bpfmap())
    snapshot = agent.state.take()
    published = agent.publish(snapshot, Report(maps={"flow-counts": StatusEntry(Phase.Ready)}))
    assert published.failed and not agent.state.dirty and published.states == {}
    agent.remember(published)
    assert agent.state.dirty and agent.states == {}


def test_the_attached_summary_is_bounded() -> None:
    assert attached_summary([{"target": "tc:eth0:ingress"}, {"target": "tc:eth1:ingress"}]) == (
        "tc:eth0:ingress,tc:eth1:ingress"
    )
    many = [{"target": f"tc:veth{i:05d}:ingress@ns-{i}"} for i in range(400)]
    text = attached_summary(many)
    assert len(text) <= 4096 and text.endswith(" more") and text.startswith("tc:veth00000:ingress@ns-0,")


def test_the_agent_runs_on_the_kernel_it_is_given() -> None:
    k = kernel()
    assert agent_on(FakeApi(), k).engine.kernel is k


def test_a_pass_posts_one_normal_event_per_resource() -> None:
    """A rollout to N nodes is N Events on the shared program, not one per step (load, attach)."""
    api = FakeApi()
    started(api, bpfmap(), bpfprog())
    posted = [c[3]["event"] for c in api.calls if c[0] == "event" and c[2] == "count-ingress"]
    assert [e.reason for e in posted] == ["Loaded"]
    assert "loaded" in posted[0].message and "attached to" in posted[0].message


def test_merging_keeps_warnings_apart_and_the_first_reason() -> None:
    events = [
        Event("BpfProgram", "p", "Normal", "Loaded", "program 7 (count) loaded"),
        Event("BpfMap", "m", "Normal", "Created", "map 3 pinned"),
        Event("BpfProgram", "p", "Warning", "AttachFailed", "no such interface e9"),
        Event("BpfProgram", "p", "Normal", "Attached", "program 7 attached to tc e0 ingress"),
    ]
    assert merge_normal_events(events) == [
        Event("BpfProgram", "p", "Normal", "Loaded", "program 7 (count) loaded; program 7 attached to tc e0 ingress"),
        Event("BpfMap", "m", "Normal", "Created", "map 3 pinned"),
        Event("BpfProgram", "p", "Warning", "AttachFailed", "no such interface e9"),
    ]
