"""A node for engine logic tests: the real engine on a ``MemoryKernel`` (no privilege, no kernel).

Objects are the project's own example programs, built by the install step into bpf/ (the ELF
reader is pure Python); resources are parsed exactly as the agent and ``apply -f`` parse them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bpfshare.api.resources import MapResource, ProgramResource, parse_map, parse_program
from bpfshare.api.status import Phase, StatusEntry
from bpfshare.engine import Engine, Plan, Report
from bpfshare.engine.memory_kernel import MemoryKernel

BPF = Path(__file__).resolve().parents[2] / "bpf"
PIN_ROOT = Path("/sys/fs/bpf/bpfshare")


def obj(name: str) -> str:
    path = BPF / name
    assert path.is_file(), f"{path} is missing: run scripts/install.sh (it builds bpf/)"
    return str(path)


def bpfmap(name: str = "flow-counts", generation: int = 1, **spec: Any) -> MapResource:
    body: dict[str, Any] = {"type": "Array", "keySize": 4, "valueSize": 8, "maxEntries": 4}
    body.update(spec)
    return parse_map(
        {
            "apiVersion": "bpfshare.io/v1alpha1",
            "kind": "BpfMap",
            "metadata": {"name": name, "generation": generation},
            "spec": body,
        }
    )


def tc(*interfaces: str, direction: str = "ingress", priority: int = 1, netns: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"interfaces": list(interfaces), "direction": direction, "priority": priority}
    if netns:
        body["networkNamespace"] = netns
    return {"tc": body}


def tcx(*interfaces: str, direction: str = "ingress") -> dict[str, Any]:
    return {"tcx": {"interfaces": list(interfaces), "direction": direction}}


def cgroup(path: str = "/", type_: str = "egress") -> dict[str, Any]:
    return {"cgroup": {"path": path, "type": type_}}


def bpfprog(
    name: str = "count-ingress",
    program: str = "count_ingress",
    path: str | None = None,
    attach: dict[str, Any] | None = None,
    maps: dict[str, str] | None = None,
    generation: int = 1,
    **spec: Any,
) -> ProgramResource:
    body: dict[str, Any] = {
        "bytecode": {"path": path or obj("flow_counter.o")},
        "program": program,
        "attach": attach or tc("eth0"),
        "maps": {"shared_counts": "flow-counts"} if maps is None else maps,
    }
    body.update(spec)
    return parse_program(
        {
            "apiVersion": "bpfshare.io/v1alpha1",
            "kind": "BpfProgram",
            "metadata": {"name": name, "generation": generation},
            "spec": body,
        }
    )


def deleting(res: Any) -> Any:
    return dataclasses.replace(res, meta=dataclasses.replace(res.meta, deleting=True))


class Node:
    """One simulated node: a memory kernel with eth0 and a cgroup, and an engine on it."""

    def __init__(self, kernel: MemoryKernel | None = None) -> None:
        self.kernel = kernel or MemoryKernel()
        if kernel is None:
            self.kernel.add_interface("eth0")
            self.kernel.add_cgroup("/")
        self.engine = Engine(PIN_ROOT, "node-1", kernel=self.kernel)

    def restart_agent(self) -> None:
        """A new engine (a restarted agent) on the same kernel and bpffs."""
        self.engine = Engine(PIN_ROOT, "node-1", kernel=self.kernel)

    def plan(self, maps: list[MapResource], programs: list[ProgramResource], **kw: Any) -> Plan:
        return self.engine.plan(maps, programs, {}, **kw)

    def run(self, maps: list[MapResource], programs: list[ProgramResource], **kw: Any) -> Report:
        return self.engine.reconcile(maps, programs, {}, **kw)


def ready(entry: StatusEntry) -> StatusEntry:
    assert entry.phase is Phase.Ready, f"{entry.phase}: {entry.message}"
    return entry


def reasons(report: Report) -> list[tuple[str, str]]:
    return [(e.name, e.reason) for e in report.events]


def changes(plan: Plan) -> list[str]:
    return [f"{kind} {name}: {what}" for kind, name, what in plan.steps()]
