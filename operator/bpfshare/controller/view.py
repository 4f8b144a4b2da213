"""The controller's in-memory view of the cluster: resources, their nodes' states, and the Nodes.

Fed by list-and-watch streams (``informer.py``), one per kind: a listing replaces that kind's part of
the view whole (so an object deleted while a stream was away does not linger), a watch event changes
one object. Each change says which resources it may affect (``on_change``: a resource key, or None for
all of them, when a Node's labels change), so the writer recomputes only those. No API, no clock: the
view is plain data, mutated on the event loop only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bpfshare.api.resources import MAP_KIND, MAP_PLURAL, PROGRAM_KIND, PROGRAM_PLURAL
from bpfshare.api.states import STATE_KINDS, StateKind

Key = tuple[str, str]  # (kind, name) of a BpfMap or BpfProgram: ("BpfMap", "flow-counts")
RESOURCE_KINDS = {MAP_PLURAL: MAP_KIND, PROGRAM_PLURAL: PROGRAM_KIND}
STATE_PLURALS = {kind.plural: kind for kind in STATE_KINDS}


@dataclass(frozen=True)
class StateEntry:
    """What the controller keeps of a state object: its name, finalizers and status."""

    kind: StateKind
    name: str
    resource: str
    node: str
    finalizers: tuple[str, ...]
    status: Mapping[str, Any]
    deleting: bool = False

    @property
    def key(self) -> Key:
        return (self.kind.resource_kind, self.resource)


def state_entry(kind: StateKind, obj: Mapping[str, Any]) -> StateEntry | None:
    """The entry of a state object; None for one without the spec fields (the CRD requires them)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    node, resource = spec.get("node"), spec.get(kind.spec_field)
    if not isinstance(node, str) or not isinstance(resource, str) or not meta.get("name"):
        return None
    status = obj.get("status")
    return StateEntry(
        kind=kind,
        name=str(meta["name"]),
        resource=resource,
        node=node,
        finalizers=tuple(meta.get("finalizers") or ()),
        status=status if isinstance(status, Mapping) else {},
        deleting=bool(meta.get("deletionTimestamp")),
    )


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in ((obj.get("metadata") or {}).get("labels") or {}).items()}


@dataclass
class View:
    on_change: Callable[[Key | None], None] = lambda key: None
    resources: dict[Key, dict[str, Any]] = field(default_factory=dict)
    states: dict[Key, dict[str, StateEntry]] = field(default_factory=dict)  # resource -> node -> state
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> labels
    synced: set[str] = field(default_factory=set)  # the streams whose first listing arrived
    _state_at: dict[tuple[str, str], StateEntry] = field(default_factory=dict)  # (plural, name) -> entry
    _agent_nodes: Counter[str] = field(default_factory=Counter)  # node -> how many states it has
    # node -> its states, and the nodes that have states but no Node: kept up to date with every change,
    # so that finding the states of vanished nodes costs nothing per state event (with 1,000 nodes,
    # walking all 20,000 states on every event made the controller's CPU grow with the square).
    _by_node: dict[str, dict[tuple[str, str], StateEntry]] = field(default_factory=dict)
    _unknown: set[str] = field(default_factory=set)

    # -- reading ------------------------------------------------------------------------------------

    def states_of(self, key: Key) -> dict[str, StateEntry]:
        return self.states.get(key, {})

    def has_agent(self, node: str) -> bool:
        """The node has some state object: it runs an agent of this status model."""
        return self._agent_nodes[node] > 0

    def state_nodes(self) -> set[str]:
        return {node for node, count in self._agent_nodes.items() if count > 0}

    def all_states(self) -> Iterable[StateEntry]:
        return self._state_at.values()

    def unknown_nodes(self) -> set[str]:
        """Nodes that have state objects but no Node object (vanished, or not listed yet)."""
        return self._unknown

    def states_on(self, node: str) -> Iterable[StateEntry]:
        return (self._by_node.get(node) or {}).values()

    # -- resources ----------------------------------------------------------------------------------

    def replace_resources(self, plural: str, items: Iterable[Mapping[str, Any]]) -> None:
        kind = RESOURCE_KINDS[plural]
        fresh = {(kind, str(o["metadata"]["name"])): dict(o) for o in items}
        gone = [key for key in self.resources if key[0] == kind and key not in fresh]
        for key in gone:
            del self.resources[key]
        self.resources.update(fresh)
        self.synced.add(plural)
        for key in [*gone, *fresh]:
            self.on_change(key)

    def resource_event(self, plural: str, type_: str, obj: Mapping[str, Any]) -> None:
        key = (RESOURCE_KINDS[plural], str(obj["metadata"]["name"]))
        if type_ == "DELETED":
            self.resources.pop(key, None)
        else:
            self.resources[key] = dict(obj)
        self.on_change(key)

    # -- states -------------------------------------------------------------------------------------

    def _put_state(self, entry: StateEntry) -> None:
        old = self._state_at.get((entry.kind.plural, entry.name))
        if old is not None:
            self._drop_state(old)
        self._state_at[(entry.kind.plural, entry.name)] = entry
        self.states.setdefault(entry.key, {})[entry.node] = entry
        self._agent_nodes[entry.node] += 1
        self._by_node.setdefault(entry.node, {})[(entry.kind.plural, entry.name)] = entry
        if entry.node not in self.nodes:
            self._unknown.add(entry.node)

    def _drop_state(self, entry: StateEntry) -> None:
        self._state_at.pop((entry.kind.plural, entry.name), None)
        per_node = self.states.get(entry.key)
        if per_node is not None and per_node.get(entry.node) is entry:
            del per_node[entry.node]
            if not per_node:
                del self.states[entry.key]
        self._agent_nodes[entry.node] -= 1
        if self._agent_nodes[entry.node] <= 0:
            del self._agent_nodes[entry.node]
        on_node = self._by_node.get(entry.node)
        if on_node is not None:
            on_node.pop((entry.kind.plural, entry.name), None)
            if not on_node:
                del self._by_node[entry.node]
                self._unknown.discard(entry.node)

    def replace_states(self, plural: str, items: Iterable[Mapping[str, Any]]) -> None:
        kind = STATE_PLURALS[plural]
        touched: set[Key] = set()
        for old in [e for e in self._state_at.values() if e.kind is kind]:
            self._drop_state(old)
            touched.add(old.key)
        for obj in items:
            entry = state_entry(kind, obj)
            if entry is not None:
                self._put_state(entry)
                touched.add(entry.key)
        self.synced.add(plural)
        for key in touched:
            self.on_change(key)

    def state_event(self, plural: str, type_: str, obj: Mapping[str, Any]) -> None:
        kind = STATE_PLURALS[plural]
        name = str((obj.get("metadata") or {}).get("name"))
        old = self._state_at.get((plural, name))
        if old is not None:
            self._drop_state(old)
            self.on_change(old.key)
        if type_ != "DELETED":
            entry = state_entry(kind, obj)
            if entry is not None:
                self._put_state(entry)
                self.on_change(entry.key)

    # -- nodes --------------------------------------------------------------------------------------

    def replace_nodes(self, items: Iterable[Mapping[str, Any]]) -> None:
        fresh = {str(o["metadata"]["name"]): _labels(o) for o in items}
        changed = fresh != self.nodes
        self.nodes = fresh
        self._unknown = {node for node in self._by_node if node not in fresh}
        self.synced.add("nodes")
        if changed:
            self.on_change(None)

    def node_event(self, type_: str, obj: Mapping[str, Any]) -> None:
        """Only a Node that comes, goes or changes its labels changes the view: the status updates
        kubelets send every few seconds do not."""
        name = str(obj["metadata"]["name"])
        if type_ == "DELETED":
            if self.nodes.pop(name, None) is not None:
                if name in self._by_node:
                    self._unknown.add(name)
                self.on_change(None)
            return
        labels = _labels(obj)
        self._unknown.discard(name)
        if self.nodes.get(name) != labels:
            self.nodes[name] = labels
            self.on_change(None)
