"""The cluster view of one BpfMap or BpfProgram, from its nodes' state objects (SPEC "Status").

Pure: a resource body, the Nodes (name -> labels) and the resource's state objects' statuses (node ->
status) go in; the ``status`` the controller writes comes out. Nothing here reads the clock except
through ``now``, so the same inputs give the same output, timestamps included: a condition keeps its
``lastTransitionTime`` while its status does not flip.

Per selected node (a Node matching ``spec.nodeSelector``, every Node without one): Ready at the
resource's current generation is ready; Error at the current generation is error; anything else (no
state, a report on another generation, Pending) is pending, with why. Messages name at most
``MAX_NAMED`` nodes (sorted by name) then "and N more", each cause cut to ``MAX_CAUSE`` characters,
so that a status's size does not depend on the number of nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bpfshare.api.resources import PROGRAM_KIND, NodeSelector, ResourceError, attach_summary

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
CONDITION_TYPES = (READY, RECONCILING, STALLED)

MAX_NAMED = 5  # nodes named in one message
MAX_CAUSE = 300  # characters of one node's cause
MAX_MESSAGE = 4096  # characters of one condition's message (the CRD allows 32768)


@dataclass(frozen=True)
class NodeOutcome:
    node: str
    outcome: str  # ready, pending, error
    why: str = ""  # pending: "no report", "reports generation 2", "Pending: <message>"; error: the cause


def timestamp(now: datetime) -> str:
    """metav1.Time: RFC 3339 in UTC, whole seconds."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cut(text: str, limit: int = MAX_CAUSE) -> str:
    text = " ".join(text.split())  # a verifier log's newlines would make a one-line column unreadable
    return text if len(text) <= limit else text[: limit - 1] + "…"


def node_selector(body: Mapping[str, Any]) -> NodeSelector | None:
    """The resource's selector; None if it cannot be read (the CRD's schema keeps this from happening)."""
    spec = body.get("spec")
    raw = spec.get("nodeSelector") if isinstance(spec, Mapping) else None
    try:
        return NodeSelector.parse(raw if isinstance(raw, Mapping) else None, "spec.nodeSelector")
    except (ResourceError, AttributeError, TypeError):
        return None


def selected_nodes(body: Mapping[str, Any], nodes: Mapping[str, Mapping[str, str]]) -> list[str]:
    """The Nodes the resource selects, sorted by name."""
    selector = node_selector(body)
    if selector is None:
        return []
    return sorted(name for name, labels in nodes.items() if selector.matches(labels))


def outcome(node: str, state: Mapping[str, Any] | None, generation: int) -> NodeOutcome:
    """What one selected node's state says about the resource's current generation."""
    if state is None:
        return NodeOutcome(node, "pending", "no report")
    phase = state.get("phase")
    message = str(state.get("message") or "")
    reported = state.get("observedGeneration")
    if reported != generation:
        return NodeOutcome(node, "pending", f"reports generation {reported}" if reported is not None else "no report")
    if phase == "Ready":
        return NodeOutcome(node, "ready")
    if phase == "Error":
        return NodeOutcome(node, "error", cut(message) or "Error")
    return NodeOutcome(node, "pending", cut(f"{phase or 'Pending'}: {message}" if message else str(phase or "Pending")))


def name_nodes(items: Iterable[tuple[str, str]], total: int) -> str:
    """``worker-1: cause, worker-2: cause and 3 more`` for the first ``MAX_NAMED`` of ``total``."""
    named = [f"{node}: {why}" if why else node for node, why in list(items)[:MAX_NAMED]]
    text = ", ".join(named)
    if total > len(named):
        text += f" and {total - len(named)} more"
    return text


def bounded(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def condition(
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    previous: Mapping[str, Mapping[str, Any]],
    now: datetime,
) -> dict[str, Any]:
    """A metav1.Condition; its lastTransitionTime stays the previous one's while the status is the same."""
    value = "True" if status else "False"
    before = previous.get(type_) or {}
    since = before.get("lastTransitionTime") if before.get("status") == value else None
    return {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": bounded(message),
        "observedGeneration": generation,
        "lastTransitionTime": since if isinstance(since, str) and since else timestamp(now),
    }


def previous_conditions(body: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    status = body.get("status")
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    out: dict[str, Mapping[str, Any]] = {}
    for item in conditions if isinstance(conditions, list) else []:
        if isinstance(item, Mapping) and isinstance(item.get("type"), str):
            out[item["type"]] = item
    return out


def cluster_status(
    body: Mapping[str, Any],
    nodes: Mapping[str, Mapping[str, str]],
    states: Mapping[str, Mapping[str, Any]],
    now: datetime,
) -> dict[str, Any]:
    """The resource's ``status``: observedGeneration, node counts, ``ready`` and the three conditions
    (and, for a BpfProgram, ``attach``). ``states`` maps a node name to its state object's status, for
    every state of this resource (of selected nodes or not: while deleting, any holds it)."""
    meta = body.get("metadata") or {}
    generation = int(meta.get("generation") or 0)
    deleting = bool(meta.get("deletionTimestamp"))
    previous = previous_conditions(body)
    selector = node_selector(body)
    selected = selected_nodes(body, nodes)
    outcomes = [outcome(node, states.get(node), generation) for node in selected]
    ready = [o for o in outcomes if o.outcome == "ready"]
    pending = [o for o in outcomes if o.outcome == "pending"]
    errors = [o for o in outcomes if o.outcome == "error"]
    count = len(selected)

    def cond(type_: str, value: bool, reason: str, message: str) -> dict[str, Any]:
        return condition(type_, value, reason, message, generation, previous, now)

    error_text = (
        f"{len(errors)} of {count} nodes in Error: " + name_nodes(((o.node, o.why) for o in errors), len(errors))
        if errors
        else ""
    )
    pending_text = (
        f"{len(pending)} of {count} nodes have not reported Ready on generation {generation}: "
        + name_nodes(((o.node, o.why) for o in pending), len(pending))
        if pending
        else ""
    )
    holding = sorted(states)

    if selector is None:
        ready_cond = cond(READY, False, "InvalidNodeSelector", "spec.nodeSelector cannot be read")
    elif deleting:
        ready_cond = cond(READY, False, "Deleting", "the resource is being deleted")
    elif errors:
        ready_cond = cond(READY, False, "NodeErrors", f"{len(ready)} of {count} nodes ready; {error_text}")
    elif pending:
        ready_cond = cond(READY, False, "NodesPending", f"{len(ready)} of {count} nodes ready; {pending_text}")
    elif count == 0:
        ready_cond = cond(READY, True, "NoNodesSelected", "no Node matches spec.nodeSelector")
    else:
        ready_cond = cond(READY, True, "AllNodesReady", f"{count} of {count} nodes ready")

    if deleting:
        message = (
            f"waiting for {len(holding)} nodes to release it: " + name_nodes(((n, "") for n in holding), len(holding))
            if holding
            else "no node holds it"
        )
        reconciling = cond(RECONCILING, True, "Releasing", message)
    elif pending:
        reconciling = cond(RECONCILING, True, "NodesPending", pending_text)
    else:
        reconciling = cond(RECONCILING, False, "AllNodesReported", f"{count} of {count} nodes reported")

    if selector is None:
        stalled = cond(STALLED, True, "InvalidNodeSelector", "spec.nodeSelector cannot be read")
    elif errors:
        stalled = cond(STALLED, True, "NodeErrors", error_text)
    else:
        stalled = cond(STALLED, False, "NoErrors", "no node reports an error")

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "nodes": {"selected": count, "ready": len(ready), "pending": len(pending), "error": len(errors)},
        "ready": f"{len(ready)}/{count}",
    }
    if body.get("kind") == PROGRAM_KIND:
        status["attach"] = attach_summary(body)
    status["conditions"] = [ready_cond, reconciling, stalled]
    return status


def merge_patch(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386) of the whole ``status`` that turns ``current`` into ``desired``:
    keys ``desired`` lacks are set to null, so the previous model's ``nodes`` list, ``phases``,
    ``mapIds`` and ``programIds`` go with the first write; values are replaced whole (a merge patch
    replaces lists, and ``nodes`` is written whole too)."""
    patch: dict[str, Any] = {key: None for key in (current or {}) if key not in desired}
    patch.update(desired)
    return patch


def progress_only(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """Whether ``desired`` differs from ``current`` in progress alone: the node counts, ``ready`` and
    the conditions' messages, while every condition's status and reason, the observed generation and
    ``attach`` stay. Those are what kstatus, Argo CD and ``kubectl wait`` decide on; the counts are for
    people watching ``kubectl get``, and a rollout over many nodes changes them with every report."""

    def decisive(status: Mapping[str, Any] | None) -> tuple[Any, ...]:
        status = status or {}
        conditions = sorted(
            (str(c.get("type")), c.get("status"), c.get("reason"), c.get("observedGeneration"))
            for c in status.get("conditions") or []
        )
        return (status.get("observedGeneration"), status.get("attach"), tuple(conditions))

    return decisive(current) == decisive(desired)
