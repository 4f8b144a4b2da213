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
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agents import AgentProcess, Cluster
from tests.fixtures.netenv import NetnsPair, run
from tests.integration.test_apply import bpfmap
from tests.integration.test_sharing import CG_EGRESS, TC_INGRESS, bpftool, counters, filters_on
from tests.reliability.traffic import CgroupTraffic, VethTraffic, quiet_link, record, salted_inline

pytestmark = [pytest.mark.kernel, pytest.mark.cluster]
PROGS, MAPS = "bpfprograms", "bpfmaps"
CYCLES = int(os.environ.get("BPFSHARE_FAULT_CYCLES", "6"))


def programs(obj: Path, pair: NetnsPair, cgroup: Path, salt: int) -> list[dict[str, Any]]:
    inline = {"inline": salted_inline(obj, salt)}

    def prog(name: str, program: str, attach: dict[str, Any], bpfmap_name: str) -> dict[str, Any]:
        return {
            "apiVersion": "bpfshare.io/v1alpha1",
            "kind": "BpfProgram",
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


def wait_rolled_out(cluster: Cluster, node: str, names: list[str], timeout: float = 60.0) -> dict[str, dict]:
    """Every program Ready on ``node`` at its current generation; their entries."""

    def done() -> dict[str, dict] | None:
        out = {}
        for name in names:
            obj = cluster.get(PROGS, name) or {}
            entry = cluster.entry(PROGS, name, node)
            if not entry or entry["phase"] != "Ready" or entry["observedGeneration"] != obj["metadata"]["generation"]:
                return None
            out[name] = entry
        return out

    return cluster.wait(done, f"{names} rolled out on {node}", timeout)


def assert_single_attachments(pair: NetnsPair, cgroup: Path, entries: dict[str, dict]) -> None:
    assert filters_on(pair) == [entries["up-tc"]["programId"]]
    assert [p["id"] for p in bpftool("cgroup", "show", str(cgroup))] == [entries["up-cg"]["programId"]]  # type: ignore[union-attr,index]
    from bpfshare.kernel.tcx import list_tcx

    assert list(list_tcx(pair.if_b, "ingress", netns=pair.ns_b).prog_ids) == [entries["up-tcx"]["programId"]]


def assert_no_leaks(agent: AgentProcess) -> None:
    leftovers = [p for p in agent.pin_root.rglob("*") if "_tmp" in p.name]
    assert leftovers == []


def map_pins(agent: AgentProcess) -> dict[str, Path]:
    return {name: agent.pin_root / "maps" / name for name in ("tc-counts", "tcx-counts", "cg-counts")}


@pytest.fixture
def quiet_pair(netns_pair: NetnsPair) -> NetnsPair:
    quiet_link(netns_pair)
    return netns_pair


def test_upgrades_under_traffic_drop_nothing(
    cluster: Cluster, bpf_objects, quiet_pair: NetnsPair, cgroup_dir: Path
) -> None:
    node = cluster.add_node()
    agent = cluster.start_agent(node)
    obj = bpf_objects["flow_counter"]
    cluster.apply(*MAP_DOCS, *programs(obj, quiet_pair, cgroup_dir, 0))
    first = wait_rolled_out(cluster, node, ["up-tc", "up-tcx", "up-cg"])
    pins = map_pins(agent)
    with VethTraffic(quiet_pair) as veth, CgroupTraffic(cgroup_dir) as cg:
        previous = first
        for salt in range(1, CYCLES + 1):
            cluster.apply(*programs(obj, quiet_pair, cgroup_dir, salt))
            now = wait_rolled_out(cluster, node, ["up-tc", "up-tcx", "up-cg"])
            for name in now:
                assert now[name]["programId"] != previous[name]["programId"], f"{name} was not upgraded"
            previous = now
    seen = {n: counters(pins[f"{n}-counts"])[CG_EGRESS if n == "cg" else TC_INGRESS] for n in ("tc", "tcx", "cg")}
    record(
        "upgrades under traffic",
        cycles=CYCLES,
        upgrades=3 * CYCLES,
        veth_sent=veth.sent,
        tc_seen=seen["tc"],
        tcx_seen=seen["tcx"],
        cgroup_sent=cg.sent,
        cgroup_seen=seen["cg"],
    )
    assert seen == {"tc": veth.sent, "tcx": veth.sent, "cg": cg.sent}
    assert veth.sent > 100 and cg.sent > 100
    # Links were updated in place, never re-created.
    for name in ("up-tcx", "up-cg"):
        assert previous[name]["attachments"][0]["linkId"] == first[name]["attachments"][0]["linkId"]
    assert_single_attachments(quiet_pair, cgroup_dir, previous)
    assert_no_leaks(agent)


def test_sigkill_mid_reconcile_never_disturbs_the_datapath(
    cluster: Cluster, bpf_objects, quiet_pair: NetnsPair, cgroup_dir: Path
) -> None:
    node = cluster.add_node()
    agent = cluster.start_agent(node)
    obj = bpf_objects["flow_counter"]
    cluster.apply(*MAP_DOCS, *programs(obj, quiet_pair, cgroup_dir, 0))
    wait_rolled_out(cluster, node, ["up-tc", "up-tcx", "up-cg"])
    map_ids = {n: cluster.wait_phase(MAPS, n, node)["mapId"] for n in ("tc-counts", "tcx-counts", "cg-counts")}
    pins = map_pins(agent)
    rng = random.Random(int(os.environ.get("BPFSHARE_FAULT_SEED", "7")))
    last = [0, 0, 0]
    with VethTraffic(quiet_pair) as veth, CgroupTraffic(cgroup_dir) as cg:
        for salt in range(1, CYCLES + 1):
            cluster.apply(*programs(obj, quiet_pair, cgroup_dir, salt))
            time.sleep(rng.uniform(0.0, 0.6))  # somewhere inside the reconcile it triggers
            agent.kill()
            time.sleep(0.2)
            now = [
                counters(pins["tc-counts"])[TC_INGRESS],
                counters(pins["tcx-counts"])[TC_INGRESS],
                counters(pins["cg-counts"])[CG_EGRESS],
            ]
            assert all(n > p for n, p in zip(now, last, strict=True)), (now, last)  # counting on, agent dead
            last = now
            agent.start()
        entries = wait_rolled_out(cluster, node, ["up-tc", "up-tcx", "up-cg"])
    seen = {n: counters(pins[f"{n}-counts"])[CG_EGRESS if n == "cg" else TC_INGRESS] for n in ("tc", "tcx", "cg")}
    record(
        "SIGKILL mid-reconcile",
        kills=CYCLES,
        veth_sent=veth.sent,
        tc_seen=seen["tc"],
        tcx_seen=seen["tcx"],
        cgroup_sent=cg.sent,
        cgroup_seen=seen["cg"],
    )
    assert seen == {"tc": veth.sent, "tcx": veth.sent, "cg": cg.sent}
    for name, map_id in map_ids.items():
        assert cluster.wait_phase(MAPS, name, node)["mapId"] == map_id
    assert_single_attachments(quiet_pair, cgroup_dir, entries)
    time.sleep(3)  # a resync after the last restart sweeps what a kill left half-done
    assert_no_leaks(agent)


def test_api_server_outage_leaves_the_datapath_and_recovers(
    cluster: Cluster, bpf_objects, quiet_pair: NetnsPair, cgroup_dir: Path
) -> None:
    from bpfshare.controlplane.run import start_apiserver, stop_apiserver

    node = cluster.add_node()
    agent = cluster.start_agent(node)
    obj = bpf_objects["flow_counter"]
    cluster.apply(*MAP_DOCS, *programs(obj, quiet_pair, cgroup_dir, 0))
    before = wait_rolled_out(cluster, node, ["up-tc", "up-tcx", "up-cg"])
    pins = map_pins(agent)
    outage = float(os.environ.get("BPFSHARE_OUTAGE_SECONDS", "12"))
    with VethTraffic(quiet_pair) as veth:
        stop_apiserver(cluster.cp)
        try:
            start_count = counters(pins["tc-counts"])[TC_INGRESS]
            time.sleep(outage)
            assert agent.alive(), agent.log_tail()
            assert counters(pins["tc-counts"])[TC_INGRESS] > start_count
        finally:
            start_apiserver(cluster.cp, die_with_parent=True)
        back = time.monotonic()
        cluster.apply(*programs(obj, quiet_pair, cgroup_dir, 1))  # work that needs the agent's watches
        after = wait_rolled_out(cluster, node, ["up-tc", "up-tcx", "up-cg"], timeout=30)
        converged = time.monotonic() - back
    seen = counters(pins["tc-counts"])[TC_INGRESS]
    record("API server outage", outage_s=outage, converged_s=round(converged, 2), veth_sent=veth.sent, tc_seen=seen)
    assert converged < 10.0, f"status converged {converged:.1f} s after the API server returned"
    assert seen == veth.sent
    assert all(after[n]["programId"] != before[n]["programId"] for n in after)


def test_drift_is_repaired_by_the_resync_with_events(
    cluster: Cluster, bpf_objects, netns_pair: NetnsPair, cgroup_dir: Path
) -> None:
    from tests.integration.test_apply import cgroup_program, tc_program

    node = cluster.add_node()
    agent = cluster.start_agent(node)  # resync every 2 s
    cluster.apply(
        bpfmap(),
        tc_program(bpf_objects["flow_counter"], netns_pair),
        cgroup_program(bpf_objects["cgroup_counter_mapdef"], cgroup_dir),
    )
    tc = cluster.wait_phase(PROGS, "count-ingress", node)
    cg = cluster.wait_phase(PROGS, "count-cgroup", node)
    m = cluster.wait_phase(MAPS, "flow-counts", node)
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
    from tests.integration.test_apply import cgroup_program, tc_program

    node = cluster.add_node()
    agent = cluster.start_agent(node)
    cluster.apply(
        bpfmap(),
        tc_program(bpf_objects["flow_counter"], netns_pair),
        cgroup_program(bpf_objects["cgroup_counter_mapdef"], cgroup_dir),
    )
    old_map = cluster.wait_phase(MAPS, "flow-counts", node)["mapId"]
    cluster.wait_phase(PROGS, "count-cgroup", node)
    cluster.wait_phase(PROGS, "count-ingress", node)
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
