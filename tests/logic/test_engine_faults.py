"""No partial state (issue 11): fail each kernel call in turn during apply, upgrade and delete.

After the failed pass, a clean pass must converge, a further pass must change nothing, and a
delete must leave nothing behind: no filter, link, pin, program or map of ours, and every foreign
object exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bpfshare.api.resources import MapResource, ProgramResource
from bpfshare.api.status import Phase
from bpfshare.api.targets import TcTarget
from bpfshare.errors import KernelError
from bpfshare.spec import MapSpec
from bpfshare.types import MapType

from .enginekit import Node, bpfmap, bpfprog, cgroup, deleting, obj, tc, tcx

FOREIGN_PIN = Path("/sys/fs/bpf/tc/globals/theirs")
FOREIGN_SLOT = TcTarget("eth0", "ingress", priority=9)

Desired = tuple[list[MapResource], list[ProgramResource]]


def resources(version: str = "") -> Desired:
    path = version or obj("flow_counter.o")
    return (
        [bpfmap(), bpfmap("legacy", pinName="legacy")],
        [
            bpfprog("in", path=path),
            bpfprog("out", "count_egress", path=path, attach=tc("eth0", direction="egress")),
            bpfprog("tcx", "count_tcx_ingress", path=path, attach=tcx("eth0")),
            bpfprog("cg", "count_cgroup_egress", path=path, attach=cgroup("/"), maps={"shared_counts": "legacy"}),
            bpfprog("byname", path=obj("flow_counter_legacy.o"), maps={}, attach=tc("eth0", priority=5)),
        ],
    )


def deleted(desired: Desired) -> Desired:
    maps, programs = desired
    return [deleting(m) for m in maps], [deleting(p) for p in programs]


def fresh_node() -> Node:
    node = Node()
    node.kernel.get_or_create_map(MapSpec("theirs", MapType.Hash, 4, 4, 8), FOREIGN_PIN, "another tool")
    node.kernel.update(FOREIGN_PIN, b"\1\0\0\0", b"mine")
    node.kernel.add_foreign_tc_filter(FOREIGN_SLOT, prog_id=777, name="theirs")
    return node


def converged(node: Node, desired: Desired) -> None:
    report = node.run(*desired, complete=True)
    phases = {n: e.phase for n, e in (*report.maps.items(), *report.programs.items())}
    assert set(phases.values()) <= {Phase.Ready}, {
        n: e.message for n, e in (*report.maps.items(), *report.programs.items())
    }
    node.kernel.calls.clear()
    node.run(*desired, complete=True)
    assert node.kernel.calls == [], "a converged node changed again"


def nothing_left(node: Node) -> None:
    kernel = node.kernel
    assert list(kernel.tc_filters()) == ["eth0:ingress@None 9:1"], "a filter of ours leaked, or theirs went"
    assert kernel.tc_filters()["eth0:ingress@None 9:1"].prog_id == 777
    assert kernel.live_links() == []
    assert kernel.live_programs() == []
    assert kernel.lookup(FOREIGN_PIN, b"\1\0\0\0") == b"mine"
    pins = [p for p in kernel._pins if p != FOREIGN_PIN]
    assert pins == [], f"pins left behind: {pins}"


Step = Callable[[Node], Desired]


def start_empty(node: Node) -> Desired:
    return resources()


def start_applied_then_upgrade(node: Node, tmp_path: Path) -> Desired:
    node.run(*resources())
    v2 = tmp_path / "flow_counter_v2.o"
    v2.write_bytes(Path(obj("flow_counter.o")).read_bytes() + b"v2")
    return resources(str(v2))


def calls_of(setup: Callable[[Node], Desired]) -> int:
    node = fresh_node()
    desired = setup(node)
    before = node.kernel.call_count
    node.run(*desired, complete=True)
    return node.kernel.call_count - before


@pytest.mark.parametrize("scenario", ["apply", "upgrade", "delete"])
def test_every_kernel_call_failing_in_turn_leaves_no_partial_state(scenario: str, tmp_path: Path) -> None:
    def setup(node: Node) -> Desired:
        if scenario == "apply":
            return start_empty(node)
        if scenario == "upgrade":
            return start_applied_then_upgrade(node, tmp_path)
        node.run(*resources())
        return deleted(resources())

    total = calls_of(setup)
    assert total > 20, "the scenario makes too few kernel calls to mean anything"
    for n in range(1, total + 1):
        node = fresh_node()
        desired = setup(node)
        node.kernel.fail_call(n, KernelError(f"injected failure of call {n}", 5))
        node.run(*desired, complete=True)  # whatever it reports, it must not raise
        if scenario == "delete":
            again = node.run(*desired, complete=True)
            released = {name for _, name in again.released}
            assert {m.name for m in desired[0]} | {p.name for p in desired[1]} <= released, (n, again.programs)
        else:
            converged(node, desired)
            node.run(*deleted(desired), complete=True)
        nothing_left(node)


@pytest.mark.parametrize("operation", ["map_at", "get_or_create_map", "attach", "tc_filter", "write_record"])
def test_a_bug_in_one_resource_is_its_error_and_the_pass_goes_on(operation: str) -> None:
    node = fresh_node()
    node.run(*resources())
    node.kernel.fail(operation, ValueError("unexpected"))  # not a kernel refusal: a bug somewhere
    node.kernel.detach_tc(TcTarget("eth0", "ingress"))  # so that "in" needs work (attach, tc_filter)
    maps, programs = resources()
    extra = bpfmap("new", pinName="new")
    report = node.run([*maps, extra], programs)  # must not raise
    entries = {**report.maps, **report.programs}
    broken = [n for n, e in entries.items() if e.phase is Phase.Error]
    assert len(broken) == 1, {n: e.message for n, e in entries.items()}
    assert "internal error (ValueError: unexpected); this is a bug in bpfshare" in entries[broken[0]].message
    converged(node, ([*maps, extra], programs))
