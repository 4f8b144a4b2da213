"""The node view: one BpfMapState or BpfProgramState per resource and node (SPEC "Status").

Pure vocabulary shared by the agent (the only writer of its node's states), the controller (which
reads them into the cluster view on BpfMap and BpfProgram), the admission policy in deploy/ (which
checks the same naming rule in CEL) and the tools that wait on a node's report.

A state's name is ``<resource>.<node>`` when that is readable and unambiguous: the resource part is a
single dot-free component, so the name decodes to exactly one (resource, node) pair, and the admission
policy can check that an agent writes names of its own node only (``name == first component + "." +
spec.node``). A resource name with dots, or one too long to fit beside the node name, becomes
``<dot-free prefix>-<hash of both names>``; the hash keeps names of different pairs apart.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from bpfshare.api.resources import API_VERSION, GROUP, MAP_KIND, PROGRAM_KIND
from bpfshare.errors import BpfshareError

MAP_STATE_KIND = "BpfMapState"
PROGRAM_STATE_KIND = "BpfProgramState"
MAP_STATE_PLURAL = "bpfmapstates"
PROGRAM_STATE_PLURAL = "bpfprogramstates"

NODE_LABEL = f"{GROUP}/node"
MAP_LABEL = f"{GROUP}/map"
PROGRAM_LABEL = f"{GROUP}/program"

# The controller's finalizer on BpfMap and BpfProgram: the only one bpfshare puts on them.
CONTROLLER_FINALIZER = f"{GROUP}/controller"
# The agent's finalizer on its own state objects: a state is gone only when its node released the
# resource, also when a foreground deletion (Argo CD's default prune) deletes dependents first.
AGENT_FINALIZER = f"{GROUP}/agent"
# Per-node finalizers of the previous status model (bpfshare.io/node-<node>): the controller removes them.
LEGACY_FINALIZER_PREFIX = f"{GROUP}/node-"

AGENT_FIELD_MANAGER = "bpfshare-agent"
CONTROLLER_FIELD_MANAGER = "bpfshare-controller"

MAX_NAME = 253  # a DNS subdomain: what the API server accepts as a custom object's name
MAX_LABEL_VALUE = 63
_HASH_CHARS = 10


@dataclass(frozen=True)
class StateKind:
    """What ties a resource kind to its state kind."""

    kind: str  # BpfMapState
    plural: str  # bpfmapstates
    resource_kind: str  # BpfMap
    resource_label: str  # bpfshare.io/map
    spec_field: str  # map: the resource's name in the state's spec


MAP_STATE = StateKind(MAP_STATE_KIND, MAP_STATE_PLURAL, MAP_KIND, MAP_LABEL, "map")
PROGRAM_STATE = StateKind(PROGRAM_STATE_KIND, PROGRAM_STATE_PLURAL, PROGRAM_KIND, PROGRAM_LABEL, "program")
STATE_KINDS = (MAP_STATE, PROGRAM_STATE)


def state_kind_of(resource_kind: str) -> StateKind:
    """The state kind of BpfMap or BpfProgram."""
    for kind in STATE_KINDS:
        if kind.resource_kind == resource_kind:
            return kind
    raise KeyError(resource_kind)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:_HASH_CHARS]


def state_name(resource: str, node: str) -> str:
    """The name of ``resource``'s state object on ``node`` (see the module's docstring)."""
    room = MAX_NAME - len(node) - 1
    if room < _HASH_CHARS + 2:
        raise BpfshareError(f"node name {node!r} is too long ({len(node)} characters) to name its state objects")
    if "." not in resource and len(resource) <= room:
        return f"{resource}.{node}"
    prefix = resource.replace(".", "-")[: room - _HASH_CHARS - 1].rstrip("-")
    return f"{prefix}-{_digest(resource, node)}.{node}"


_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def label_value(name: str) -> str:
    """``name`` as a label value: itself when it fits (63 characters), else a prefix and a hash.

    Names longer than a label value are still exact in ``spec`` (a selectable field:
    ``kubectl get bpfmapstates --field-selector spec.map=NAME``)."""
    if len(name) <= MAX_LABEL_VALUE and _LABEL_VALUE.match(name):
        return name
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "-", name)[: MAX_LABEL_VALUE - _HASH_CHARS - 1].strip("-_.")
    return f"{prefix}-{_digest(name)}" if prefix else _digest(name)


def state_labels(kind: StateKind, resource: str, node: str) -> dict[str, str]:
    return {kind.resource_label: label_value(resource), NODE_LABEL: label_value(node)}


def state_metadata(kind: StateKind, resource: str, uid: str | None, node: str) -> dict[str, object]:
    """Name, labels, owner (so the state is garbage-collected with its resource) and the agent's finalizer."""
    meta: dict[str, object] = {
        "name": state_name(resource, node),
        "labels": state_labels(kind, resource, node),
        "finalizers": [AGENT_FINALIZER],
    }
    if uid:
        # Not blockOwnerDeletion: that needs the right to set the owner's finalizers, which agents lack;
        # the controller's finalizer is what holds a deleted resource while nodes release it.
        meta["ownerReferences"] = [
            {"apiVersion": API_VERSION, "kind": kind.resource_kind, "name": resource, "uid": uid}
        ]
    return meta


def state_body(
    kind: StateKind, resource: str, uid: str | None, node: str, status: dict[str, object]
) -> dict[str, object]:
    """The whole state object as the agent server-side-applies it.

    Status is not a subresource: the object has one writer, so spec and status go in one request."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind.kind,
        "metadata": state_metadata(kind, resource, uid, node),
        "spec": {"node": node, kind.spec_field: resource},
        "status": status,
    }


def legacy_finalizer_node(finalizer: str) -> bool:
    """A per-node finalizer of the previous status model."""
    return finalizer.startswith(LEGACY_FINALIZER_PREFIX)
