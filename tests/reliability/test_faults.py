"""Faults with real agents, the real kernel and the real API server: the datapath must never notice.

Short versions of the soak scripts in bench/ (bench/soak.py runs the long ones and records the figures
in docs/reliability.md). Three programs (tc, tcx, cgroup) each count into a map of their own, so every
counter can be compared exactly with the packets sent.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bpfshare.api.resources import API_VERSION, PROGRAM_KIND
from bpfshare.api.resources import MAP_PLURAL as MAPS
from bpfshare.api.resources import PROGRAM_PLURAL as PROGS
from bpfshare.controlplane.agents import Agent
from tests.fixtures.agents import Cluster
from tests.fixtures.netenv import NetnsPair, run
from tests.fixtures.objects import BpfObjects
from tests.integration.test_apply import bpfmap
from tests.integration.test_sharing import CG_EGRESS, TC_INGRESS, bpftool, counters, filters_on
from tests.reliability.traffic import CgroupTraffic, VethTraffic, quiet_link, record, salted_inline

pytestmark = [pytest.mark.kernel, pytest.mark.cluster]
CYCLES = int(os.environ.get("BPFSHARE_FAULT_CYCLES", "6"))


def programs(obj: Path, pair: NetnsPair, cgroup: Path, salt: int) -> list[dict[str, Any]]:
    inline = {"inline": salted_inline(obj, salt)}

    def prog(name: str, program: str, attach: dict[str, Any], bpfmap_name: str) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": PROGRAM_KIND,
            "metadata": {"name": name},
            "spec": {"bytecode": inline, "program": program, "attach": attach, "maps": {"shared_counts": bpfmap_name}},
        }

    veth = {"interfaces": [pair.if_b], "direction": "ingress", "networkNamespace": pair.ns_b}
    return [
        prog("up-tc", "count_ingress", {"tc": veth}, "tc-counts"),
        prog("up-tcx", "count_tcx_ingress", {"tcx": veth}, "tcx-counts"),
        prog("up-cg", "count_cgroup_egress", {"cgroup": {"path": cgroup.name, "type": "egress"}}, "cg-counts"),
    ]


MAP_DOCS = [bpfmap("tc-counts"), bpfmap("tcx-counts"), bpfmap("cg-counts")]
PROGRAMS = ["up-tc", "up-tcx", "up-cg"]
COUNTED = {"tc": TC_INGRESS, "tcx": TC_INGRESS, "cg": CG_EGRESS}  # program -> its map's counter


@dataclass
class Counting:
    """A node whose agent runs the three counting programs, each into a map of its own; ``first``: the
    reports of version 0, rolled out before the test starts."""

    cluster: Cluster
    node: str
    agent: Agent
    obj: Path
    pair: NetnsPair
    cgroup: Path
    first: dict[str, dict[str, Any]] = field(default_factory=dict)

    def apply(self, salt: int) -> None:
        """Version ``salt`` of the programs: the same code, a new digest."""
        self.cluster.apply(*programs(self.obj, self.pair, self.cgroup, salt))

    def rolled_out(self, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
        """Every program Ready on the node at its current generation; their reports."""
        return self.cluster.wait_all(PROGS, PROGRAMS, self.node, timeout=timeout)

    def seen(self) -> dict[str, int]:
        """What each program has counted so far, from its own map's pin."""
        return {n: counters(self.agent.pin_root / "maps" / f"{n}-counts")[i] for n, i in COUNTED.items()}

    def assert_every_packet_counted(
        self, test: str, veth: VethTraffic, cg: CgroupTraffic | None, **figures: object
    ) -> None:
        """Each counter equals the packets sent past it (the cgroup's none without cgroup traffic); the
        figures go to bench/soak.py's record."""
        now = self.seen()
        cgroup_sent = cg.sent if cg is not None else 0
        record(
            test,
            **figures,
            veth_sent=veth.sent,
            tc_seen=now["tc"],
            tcx_seen=now["tcx"],
            cgroup_sent=cgroup_sent,
            cgroup_seen=now["cg"],
        )
        assert now == {"tc": veth.sent, "tcx": veth.sent, "cg": cgroup_sent}

    def assert_single_attachments(self, entries: dict[str, dict[str, Any]]) -> None:
        from bpfshare.kernel.tcx import list_tcx

        assert filters_on(self.pair) == [entries["up-tc"]["programId"]]
        assert [p["id"] for p in bpftool("cgroup", "show", str(self.cgroup))] == [entries["up-cg"]["programId"]]  # type: ignore[union-attr,index]
        tcx = list_tcx(self.pair.if_b, "ingress", netns=self.pair.ns_b)
        assert list(tcx.prog_ids) == [entries["up-tcx"]["programId"]]

    def assert_no_leaks(self) -> None:
        assert [p for p in self.agent.pin_root.rglob("*") if "_tmp" in p.name] == []


@pytest.fixture
def counting(cluster: Cluster, bpf_objects: BpfObjects, netns_pair: NetnsPair, cgroup_dir: Path) -> Counting:
    quiet_link(netns_pair)
    node = cluster.add_node()
    c = Counting(cluster, node, cluster.start_agent(node), bpf_objects["flow_counter"], netns_pair, cgroup_dir)
    cluster.apply(*MAP_DOCS)
    c.apply(0)
    c.first = c.rolled_out()
    return c


def test_upgrades_under_traffic_drop_nothing(counting: Counting) -> None:
    with VethTraffic(counting.pair) as veth, CgroupTraffic(counting.cgroup) as cg:
        previous = counting.first
        for salt in range(1, CYCLES + 1):
            counting.apply(salt)
            now = counting.rolled_out()
            for name in now:
                assert now[name]["programId"] != previous[name]["programId"], f"{name} was not upgraded"
            previous = now
    counting.assert_every_packet_counted("upgrades under traffic", veth, cg, cycles=CYCLES, upgrades=3 * CYCLES)
    assert veth.sent > 100 and cg.sent > 100
    # Links were updated in place, never re-created.
    for name in ("up-tcx", "up-cg"):
        assert previous[name]["attachments"][0]["linkId"] == counting.first[name]["attachments"][0]["linkId"]
    counting.assert_single_attachments(previous)
    counting.assert_no_leaks()


def test_sigkill_mid_reconcile_never_disturbs_the_datapath(counting: Counting) -> None:
    cluster, node, agent = counting.cluster, counting.node, counting.agent
    map_ids = {n: cluster.wait_phase(MAPS, n, node)["mapId"] for n in ("tc-counts", "tcx-counts", "cg-counts")}
    rng = random.Random(int(os.environ.get("BPFSHARE_FAULT_SEED", "7")))
    last = dict.fromkeys(COUNTED, 0)
    with VethTraffic(counting.pair) as veth, CgroupTraffic(counting.cgroup) as cg:
        for salt in range(1, CYCLES + 1):
            counting.apply(salt)
            time.sleep(rng.uniform(0.0, 0.6))  # somewhere inside the reconcile it triggers
            agent.kill()
            time.sleep(0.2)
            now = counting.seen()
            assert all(now[n] > last[n] for n in COUNTED), (now, last)  # counting on, agent dead
            last = now
            agent.start()
        entries = counting.rolled_out()
    counting.assert_every_packet_counted("SIGKILL mid-reconcile", veth, cg, kills=CYCLES)
    for name, map_id in map_ids.items():
        assert cluster.wait_phase(MAPS, name, node)["mapId"] == map_id
    counting.assert_single_attachments(entries)
    time.sleep(3)  # a resync after the last restart sweeps what a kill left half-done
    counting.assert_no_leaks()


def test_api_server_outage_leaves_the_datapath_and_recovers(counting: Counting) -> None:
    from bpfshare.controlplane.run import start_apiserver, stop_apiserver

    cp, agent = counting.cluster.cp, counting.agent
    outage = float(os.environ.get("BPFSHARE_OUTAGE_SECONDS", "12"))
    with VethTraffic(counting.pair) as veth:
        stop_apiserver(cp)
        try:
            start_count = counting.seen()
            time.sleep(outage)
            assert agent.alive(), agent.log_tail()
            during = counting.seen()
            assert during["tc"] > start_count["tc"] and during["tcx"] > start_count["tcx"]
        finally:
            start_apiserver(cp, die_with_parent=True)
        back = time.monotonic()
        counting.apply(1)  # work that needs the agent's watches
        after = counting.rolled_out(timeout=30)
        converged = time.monotonic() - back
    counting.assert_every_packet_counted(
        "API server outage", veth, None, outage_s=outage, converged_s=round(converged, 2)
    )
    assert converged < 10.0, f"status converged {converged:.1f} s after the API server returned"
    assert all(after[n]["programId"] != counting.first[n]["programId"] for n in after)


def test_drift_is_repaired_by_the_resync_with_events(
    cluster: Cluster, bpf_objects, netns_pair: NetnsPair, cgroup_dir: Path
) -> None:
    node = cluster.add_node()
    agent = cluster.start_agent(node)  # resync every 2 s
    m, tc, cg = cluster.apply_sharing(node, bpf_objects, netns_pair, cgroup_dir)
    netns_pair.send_udp(3)
    Path(m["pinPath"]).unlink()
    run("tc", "filter", "del", "dev", netns_pair.if_b, "ingress", netns=netns_pair.ns_b)
    subprocess.run(["bpftool", "link", "detach", "id", str(cg["attachments"][0]["linkId"])], check=True)
    assert filters_on(netns_pair) == [] and bpftool("cgroup", "show", str(cgroup_dir)) == []

    cluster.wait(
        lambda: (
            Path(m["pinPath"]).exists()
            and filters_on(netns_pair) == [tc["programId"]]
            and bpftool("cgroup", "show", str(cgroup_dir)) != []
        ),
        "drift repaired",
        timeout=15,
    )
    assert counters(Path(m["pinPath"]))[TC_INGRESS] >= 3  # the same map, contents kept
    assert cluster.wait_phase(MAPS, "flow-counts", node)["mapId"] == m["mapId"]
    events = cluster.kubectl("get", "events", "-n", "default", "-o", "json").stdout
    reasons = {(e["involvedObject"]["name"], e["reason"]) for e in json.loads(events)["items"]}
    assert ("flow-counts", "Repinned") in reasons
    assert ("count-ingress", "Repaired") in reasons and ("count-cgroup", "Repaired") in reasons
    assert agent.alive()


def test_emptied_bpffs_recreates_maps_says_so_and_reattaches(
    cluster: Cluster, bpf_objects, netns_pair: NetnsPair, cgroup_dir: Path
) -> None:
    node = cluster.add_node()
    agent = cluster.start_agent(node)
    old_map = cluster.apply_sharing(node, bpf_objects, netns_pair, cgroup_dir)[0]["mapId"]
    # A reboot, as far as this node's bpffs can tell: everything pinned is gone, and so is what only the
    # pins kept alive (links); tc filters do not survive a reboot either.
    subprocess.run(["umount", "-l", str(agent.mount)], check=True)
    subprocess.run(["mount", "-t", "bpf", "bpf", str(agent.mount)], check=True)
    run("tc", "filter", "del", "dev", netns_pair.if_b, "ingress", netns=netns_pair.ns_b)

    def recreated() -> dict | None:
        e = cluster.entry(MAPS, "flow-counts", node)
        return e if e and e.get("mapId") != old_map and e["phase"] == "Ready" else None

    entry = cluster.wait(recreated, "the map re-created", timeout=20)
    assert "contents lost" in entry["message"]
    tc = cluster.wait(
        lambda: (
            (e := cluster.entry(PROGS, "count-ingress", node))
            and e["phase"] == "Ready"
            and e["maps"]["shared_counts"] == entry["mapId"]
            and e
        ),
        "tc program re-bound",
        timeout=20,
    )
    cluster.wait(lambda: filters_on(netns_pair) == [tc["programId"]], "tc filter back")
    cluster.wait(lambda: len(bpftool("cgroup", "show", str(cgroup_dir))) == 1, "cgroup program back")  # type: ignore[arg-type]
    events = json.loads(cluster.kubectl("get", "events", "-n", "default", "-o", "json").stdout)["items"]
    assert any(e["reason"] == "Recreated" and e["involvedObject"]["name"] == "flow-counts" for e in events)
