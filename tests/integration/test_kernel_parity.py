"""The memory kernel is faithful where it matters: the same passes on the real kernel and on the
memory kernel make the same plans and the same events (IDs and paths aside)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from bpfshare.api.targets import CgroupTarget, TcTarget
from bpfshare.engine import Engine, Plan, Report
from bpfshare.engine.host_kernel import HostKernel
from bpfshare.engine.memory_kernel import MemoryKernel
from tests.fixtures.netenv import NetnsPair
from tests.logic.enginekit import bpfmap, bpfprog, cgroup, deleting, obj, tc

pytestmark = pytest.mark.kernel


def normalized(root: Path, plan: Plan, report: Report) -> tuple[list[str], list[str]]:
    def norm(text: str) -> str:
        text = text.replace(str(root), "<root>")
        return re.sub(r"\b(map|program|link) \d+", r"\1 N", text)

    steps = [norm(f"{k} {n}: {w}") for k, n, w in plan.steps()]
    events = [norm(f"{e.type} {e.reason} {e.name}: {e.message}") for e in report.events]
    return steps, events


def test_the_same_passes_make_the_same_plans_and_events(
    bpffs: Path, netns_pair: NetnsPair, cgroup_dir: Path, tmp_path: Path
) -> None:
    upgraded = tmp_path / "flow_counter_v2.o"
    upgraded.write_bytes(Path(obj("flow_counter.o")).read_bytes() + b"v2")
    tc_attach = tc(netns_pair.if_b, netns=netns_pair.ns_b)
    cg_attach = cgroup(cgroup_dir.name)
    tc_slot = TcTarget(netns_pair.if_b, "ingress", netns_pair.ns_b)

    def scenario() -> list[tuple[list[Any], list[Any], str]]:
        m = bpfmap()
        p = bpfprog(attach=tc_attach)
        c = bpfprog("cg", "count_cgroup_egress", path=obj("cgroup_counter_mapdef.o"), attach=cg_attach)
        p2 = bpfprog(attach=tc_attach, path=str(upgraded), generation=2)
        return [
            ([m], [p, c], ""),
            ([m], [p, c], ""),
            ([m], [p, c], "detach"),
            ([m], [p2, c], ""),
            ([deleting(m)], [p2, c], ""),
            ([deleting(m)], [deleting(p2), deleting(c)], ""),
        ]

    memory = MemoryKernel(bpffs=(str(bpffs),))
    memory.add_interface(netns_pair.if_b, netns_pair.ns_b)
    memory.add_cgroup(cgroup_dir.name)
    results: dict[str, list[tuple[list[str], list[str]]]] = {}
    for label, kernel in (("host", HostKernel()), ("memory", memory)):
        root = bpffs / label
        engine = Engine(root, "node-1", kernel=kernel)
        results[label] = []
        for maps, programs, fault in scenario():
            if fault == "detach":
                kernel.detach_tc(tc_slot)
            plan = engine.plan(maps, programs, {})
            results[label].append(normalized(root, plan, engine.apply(plan)))
    for step, (host, mem) in enumerate(zip(results["host"], results["memory"], strict=True)):
        assert host == mem, f"pass {step}: host {host} != memory {mem}"
    assert any("re-attach" in s for s in results["host"][2][0]), "the scenario did not exercise a repair"


def test_a_targets_place_is_gone_alike_on_both_kernels(netns_pair: NetnsPair, cgroup_dir: Path) -> None:
    """place_gone: a namespace or cgroup that is not there is gone (a pod's, after its sandbox went);
    one that is there is not, whether or not the interface is; the host's namespace never is."""
    memory = MemoryKernel()
    memory.add_interface(netns_pair.if_b, netns_pair.ns_b)
    memory.add_cgroup(cgroup_dir.name)
    cases = {
        TcTarget(netns_pair.if_b, "ingress", netns_pair.ns_b): False,
        TcTarget("bpfshare-nope0", "ingress", netns_pair.ns_b): False,  # the namespace is there
        TcTarget(netns_pair.if_b, "ingress", "bpfshare-gone-ns"): True,
        TcTarget("lo", "ingress"): False,  # the host's namespace
        CgroupTarget(cgroup_dir.name, "egress"): False,
        CgroupTarget(f"{cgroup_dir.name}-gone", "egress"): True,
    }
    for kernel in (HostKernel(), memory):
        said = {target.key: kernel.place_gone(target) for target in cases}
        assert said == {target.key: gone for target, gone in cases.items()}, type(kernel).__name__
