"""Programs with ``attach.*.pods`` bound to this node's pods for one pass: each selected running pod's
targets (its interfaces inside its network namespace, or its cgroup) become the program's targets, so
the engine attaches, keeps and detaches them as it does fixed ones. A pod that goes, or stops matching,
leaves the targets, and the engine removes its attachments; a restarted agent finds the same targets
(the same namespace and cgroup paths) and re-adopts their links and filters, attaching nothing twice.

After the pass the node's report says, per program, how many pods it is attached to (a selector that
matches nothing on this node is Ready with 0 pods, and says so), and messages and events name the pod
instead of the namespace path the kernel knows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bpfshare.agent.pods import PodInventory
from bpfshare.api.resources import ProgramResource
from bpfshare.api.status import Phase
from bpfshare.api.targets import AttachTarget
from bpfshare.engine.node import Report

NAMED_PODS = 10  # the Ready message names this many pods (the attachments list every one)


def selects_pods(body: Mapping[str, Any]) -> bool:
    """Whether a BpfProgram body attaches to pods (``spec.attach.<kind>.pods``)."""
    attach = (body.get("spec") or {}).get("attach") or {}
    return any(isinstance(b, Mapping) and "pods" in b for b in attach.values())


@dataclass
class PodNotes:
    """What the pass's report should say of the programs bound to pods."""

    messages: dict[str, str] = field(default_factory=dict)  # program -> its Ready message
    errors: dict[str, str] = field(default_factory=dict)  # program -> why it was not bound this pass
    places: dict[str, dict[str, str]] = field(default_factory=dict)  # program -> {netns or cgroup path: pod}

    def name_pods(self, program: str, text: str) -> str:
        """``text`` with each pod's network namespace or cgroup path said as the pod's: the phrases
        the kernel layer writes first, then a target key's ``@path``, then any other mention."""
        for path, pod in self.places.get(program, {}).items():
            for said in (repr(path), path):
                text = text.replace(f" (no {said})", "")
                text = text.replace(f"network namespace {said}", f"the network namespace of pod {pod}")
                text = text.replace(f"cgroup {said}", f"the cgroup of pod {pod}")
                text = text.replace(f"@{said}", f" in pod {pod}")
                text = text.replace(said, f"pod {pod}")
        return text

    def apply(self, report: Report) -> None:
        for name, error in self.errors.items():
            entry = report.programs.get(name)
            if entry is not None and entry.phase is Phase.Error:
                report.programs[name] = dataclasses.replace(entry, message=error)
        for i, event in enumerate(report.events):
            if event.name in self.errors and event.reason == "Failed":
                report.events[i] = dataclasses.replace(event, message=self.errors[event.name])
        for name, message in self.messages.items():
            entry = report.programs.get(name)
            if entry is None:
                continue
            if entry.phase is Phase.Ready:
                report.programs[name] = dataclasses.replace(entry, message=message)
            elif entry.message:
                report.programs[name] = dataclasses.replace(entry, message=self.name_pods(name, entry.message))
        for i, event in enumerate(report.events):
            if event.name in self.places:
                report.events[i] = dataclasses.replace(event, message=self.name_pods(event.name, event.message))


def bind_pods(
    programs: Iterable[ProgramResource], inventory: PodInventory | None
) -> tuple[list[ProgramResource], PodNotes]:
    """The programs with their pods' targets (programs without pods unchanged); without an inventory
    (no container runtime) pods programs stay unbound, which the engine refuses, saying why."""
    out: list[ProgramResource] = []
    notes = PodNotes()
    for res in programs:
        if res.pods is None or inventory is None:
            out.append(res)
            continue
        placed, waiting, failed = inventory.placed(res.pods.namespace, res.pods.selector)
        if failed:
            # Bound without the pods the runtime could not tell of, the pass would detach them: left
            # unbound, the program fails this pass and keeps every attachment as it is.
            out.append(res)
            notes.errors[res.name] = f"{failed[0]} (its attachments stay as they are until the runtime answers)"
            continue
        targets: list[AttachTarget] = []
        places: dict[str, str] = {}
        attached = []
        for found in placed:
            netns, cgroup = found.place.netns, found.place.cgroup
            if res.pods.needs_netns and not netns:
                waiting.append(f"pod {found.pod.ref}: hostNetwork, its interfaces are the node's")
                continue
            targets.extend(res.pods.for_pod(found.pod.ref, netns, cgroup))
            places[netns if res.pods.needs_netns else cgroup] = found.pod.ref
            attached.append(found.pod.ref)
        out.append(dataclasses.replace(res, targets=tuple(targets), bound=True))
        if attached:
            named = ", ".join(attached[:NAMED_PODS]) + (
                f" and {len(attached) - NAMED_PODS} more" if len(attached) > NAMED_PODS else ""
            )
            message = f"attached in {len(attached)} pod(s) of the {res.pods.describe()}: {named}"
        else:
            message = f"no running pod on this node among the {res.pods.describe()} (Ready with 0 pods)"
        notes.messages[res.name] = "; ".join([message, *waiting])
        notes.places[res.name] = places
    return out, notes
