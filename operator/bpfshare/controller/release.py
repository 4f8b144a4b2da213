"""Which finalizers a BpfMap or BpfProgram should carry, and when a deleted one is released (pure).

The controller's finalizer (``bpfshare.io/controller``) is the only one bpfshare keeps on a resource.
It goes when no state object of the resource remains except those of nodes that are no longer Nodes
(which the controller deletes). The previous status model's per-node finalizers
(``bpfshare.io/node-<node>``) go:

- from a resource that is not being deleted, at once, in the same write that puts the controller's
  finalizer on (so the resource is never without a finalizer of ours);
- from a resource being deleted, per node: when that node is no longer a Node, or when it runs a new
  agent (it has some state object) and has no state for this resource (it released it, or never held it).
  An old agent still holding the pin keeps its finalizer until it is replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from bpfshare.api.states import CONTROLLER_FINALIZER, LEGACY_FINALIZER_PREFIX, legacy_finalizer_node


def finalizers_of(body: Mapping[str, Any]) -> list[str]:
    return [str(f) for f in (body.get("metadata") or {}).get("finalizers") or []]


def deleting(body: Mapping[str, Any]) -> bool:
    return bool((body.get("metadata") or {}).get("deletionTimestamp"))


def desired_finalizers(
    body: Mapping[str, Any],
    is_node: Callable[[str], bool],
    has_agent: Callable[[str], bool],
    holders: Collection[str],
) -> list[str]:
    """The resource's finalizers as they should be, in their order.

    ``is_node(n)``: n is a Node (or not yet known to be gone); ``has_agent(n)``: n has some state object
    (of any resource), so it runs an agent of this model; ``holders``: the nodes with a state object of
    this resource."""
    current = finalizers_of(body)
    if not deleting(body):
        kept = [f for f in current if not legacy_finalizer_node(f)]
        return kept if CONTROLLER_FINALIZER in kept else [*kept, CONTROLLER_FINALIZER]
    out: list[str] = []
    for finalizer in current:
        if legacy_finalizer_node(finalizer):
            node = finalizer[len(LEGACY_FINALIZER_PREFIX) :]
            if not is_node(node) or (has_agent(node) and node not in holders):
                continue
        elif finalizer == CONTROLLER_FINALIZER and releasable(holders, is_node):
            continue
        out.append(finalizer)
    return out


def releasable(holders: Collection[str], is_node: Callable[[str], bool]) -> bool:
    """Every node that still has a state of the resource is no longer a Node."""
    return not any(is_node(node) for node in holders)


def orphans(holders: Mapping[str, str], is_node: Callable[[str], bool]) -> list[str]:
    """State names (of ``holders``: node -> state name) whose node is no longer a Node, sorted."""
    return sorted(name for node, name in holders.items() if not is_node(node))


def finalizer_patch(
    current: Sequence[str], desired: Sequence[str], resource_version: str
) -> list[dict[str, Any]] | None:
    """A JSON patch that sets the finalizers to ``desired`` only if they still are ``current`` (the
    ``test`` fails with 422 if someone changed them meanwhile; with none, the object must be unchanged:
    a JSON patch cannot test that a path is absent); None if nothing changes."""
    if list(current) == list(desired):
        return None
    test = {"op": "test", "path": "/metadata/finalizers", "value": list(current)}
    if not current:
        unchanged = {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version}
        return [unchanged, {"op": "add", "path": "/metadata/finalizers", "value": list(desired)}]
    if not desired:
        return [test, {"op": "remove", "path": "/metadata/finalizers"}]
    return [test, {"op": "replace", "path": "/metadata/finalizers", "value": list(desired)}]
