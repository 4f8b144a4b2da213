"""The node engine through `bpfshare apply/delete -f`, without a cluster, on the real kernel."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.netenv import NetnsPair, run
from tests.integration.test_sharing import (
    CG_EGRESS,
    TC_INGRESS,
    bpfshare,
    bpftool,
    counters,
    filters_on,
    send_from_cgroup,
    tc_load,
)

pytestmark = pytest.mark.kernel


def bpfmap(name: str = "flow-counts", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bpfshare.io/v1alpha1",
        "kind": "BpfMap",
        "metadata": {"name": name},
        "spec": {"type": "Array", "keySize": 4, "valueSize": 8, "maxEntries": 4, **spec},
    }


def tc_program(
    obj: Path, pair: NetnsPair, name: str = "count-ingress", program: str = "count_ingress", **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "bpfshare.io/v1alpha1",
        "kind": "BpfProgram",
        "metadata": {"name": name},
        "spec": {
            "bytecode": {"path": str(obj)},
            "program": program,
            "attach": {"tc": {"interfaces": [pair.if_b], "direction": "ingress", "networkNamespace": pair.ns_b}},
            "maps": {"shared_counts": "flow-counts"},
            **spec,
        },
    }


def cgroup_program(obj: Path, cgroup: Path, name: str = "count-cgroup", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bpfshare.io/v1alpha1",
        "kind": "BpfProgram",
        "metadata": {"name": name},
        "spec": {
            "bytecode": {"path": str(obj)},
            "program": "count_cgroup_egress",
            "attach": {"cgroup": {"path": cgroup.name, "type": "egress"}},
            "maps": {"shared_counts": "flow-counts"},
            **spec,
        },
    }


class Node:
    """`bpfshare apply/delete` against one pin root, with resources written to a temp file."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self.tmp = tmp
        self.runs = 0

    def _file(self, docs: list[dict[str, Any]]) -> Path:
        self.runs += 1
        path = self.tmp / f"resources-{self.runs}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        return path

    def apply(self, *docs: dict[str, Any], ok: bool = True) -> dict[str, dict[str, Any]]:
        return self._run("apply", list(docs), ok)

    def delete(self, *docs: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return self._run("delete", list(docs), True)

    def _run(self, verb: str, docs: list[dict[str, Any]], ok: bool) -> dict[str, dict[str, Any]]:
        proc = bpfshare(verb, "-f", str(self._file(docs)), "--pin-root", str(self.root), "-o", "json", check=False)
        assert (proc.returncode == 0) is ok, proc.stderr
        self.last_events = proc.stderr
        out: dict[str, dict[str, Any]] = {}
        for item in json.loads(proc.stdout):
            out[item["name"]] = item["status"]["nodes"][0] if "status" in item else {"removed": True}
        return out


@pytest.fixture
def node(bpffs: Path, tmp_path: Path) -> Node:
    return Node(bpffs / "bpfshare", tmp_path)


def test_apply_shares_one_map_between_tc_and_cgroup(
    node: Node, bpf_objects, netns_pair: NetnsPair, cgroup_dir: Path
) -> None:
    docs = (
        bpfmap(),
        tc_program(bpf_objects["flow_counter"], netns_pair),
        cgroup_program(bpf_objects["cgroup_counter_mapdef"], cgroup_dir),
    )
    status = node.apply(*docs)
    m, tc, cg = status["flow-counts"], status["count-ingress"], status["count-cgroup"]
    assert [m["phase"], tc["phase"], cg["phase"]] == ["Ready"] * 3, status
    pin = Path(m["pinPath"])
    assert pin == node.root / "maps" / "flow-counts"
    assert bpftool("map", "show", "pinned", str(pin))["id"] == m["mapId"]  # type: ignore[index]
    assert tc["maps"] == {"shared_counts": m["mapId"]} == cg["maps"]
    for prog in (tc, cg):
        assert bpftool("prog", "show", "id", str(prog["programId"]))["map_ids"] == [m["mapId"]]  # type: ignore[index]
    assert sorted(m["usedBy"]) == ["count-cgroup", "count-ingress"]
    assert filters_on(netns_pair) == [tc["programId"]]

    netns_pair.send_udp(6)
    send_from_cgroup(cgroup_dir, 4)
    values = counters(pin)
    assert values[TC_INGRESS] >= 6 and values[CG_EGRESS] == 4

    # Idempotent, and a fresh process (a restart) re-adopts everything: same IDs, no second attachment.
    again = node.apply(*docs)
    for name in ("count-ingress", "count-cgroup"):
        assert again[name]["programId"] == status[name]["programId"]
        assert again[name]["attachments"] == status[name]["attachments"]
    assert again["flow-counts"]["mapId"] == m["mapId"]
    assert "Loaded" not in node.last_events and "Attached" not in node.last_events
    assert filters_on(netns_pair) == [tc["programId"]]
    assert [p["id"] for p in bpftool("cgroup", "show", str(cgroup_dir))] == [cg["programId"]]  # type: ignore[union-attr,index]

    # Delete: programs detached and unpinned, the map unpinned (reclaimPolicy Delete).
    gone = node.delete(*docs)
    assert all(v == {"removed": True} for v in gone.values()), gone
    assert filters_on(netns_pair) == []
    assert bpftool("cgroup", "show", str(cgroup_dir)) == []
    assert not pin.exists()
    assert list((node.root / "programs").iterdir()) == []


def test_upgrade_in_place_keeps_map_contents_and_one_attachment(
    node: Node, bpf_objects, netns_pair: NetnsPair, cgroup_dir: Path
) -> None:
    first = node.apply(
        bpfmap(),
        tc_program(bpf_objects["flow_counter"], netns_pair),
        cgroup_program(bpf_objects["cgroup_counter_mapdef"], cgroup_dir),
    )
    pin = Path(first["flow-counts"]["pinPath"])
    netns_pair.send_udp(5)
    before = counters(pin)
    assert before[TC_INGRESS] >= 5

    # New bytecode for both: a legacy-style tc object, a BTF cgroup object.
    second = node.apply(
        bpfmap(),
        tc_program(bpf_objects["flow_counter_legacy"], netns_pair),
        cgroup_program(bpf_objects["flow_counter"], cgroup_dir),
    )
    for name in ("count-ingress", "count-cgroup"):
        assert second[name]["phase"] == "Ready"
        assert second[name]["programId"] != first[name]["programId"]
    assert "Upgraded" in node.last_events
    # The tc filter was replaced at the same priority/handle; the cgroup link was updated, not re-created.
    assert filters_on(netns_pair) == [second["count-ingress"]["programId"]]
    assert second["count-cgroup"]["attachments"][0]["linkId"] == first["count-cgroup"]["attachments"][0]["linkId"]
    assert [p["id"] for p in bpftool("cgroup", "show", str(cgroup_dir))] == [second["count-cgroup"]["programId"]]  # type: ignore[union-attr,index]
    assert counters(pin)[TC_INGRESS] >= before[TC_INGRESS]  # contents kept
    netns_pair.send_udp(3)
    assert counters(pin)[TC_INGRESS] >= before[TC_INGRESS] + 3


def test_errors_are_reported_per_resource_and_disturb_nothing(
    node: Node, bpf_objects, netns_pair: NetnsPair, cgroup_dir: Path, tmp_path: Path
) -> None:
    good = node.apply(bpfmap(), tc_program(bpf_objects["flow_counter"], netns_pair))
    prog_id = good["count-ingress"]["programId"]
    not_elf = tmp_path / "not-elf.o"
    not_elf.write_bytes(b"hello")

    status = node.apply(
        bpfmap(),
        tc_program(bpf_objects["flow_counter"], netns_pair),
        # A second BpfMap on the pin the first one holds (its spec differs, too).
        bpfmap("flow-counts-2", type="Hash", keySize=8, maxEntries=16, pinName="flow-counts"),
        cgroup_program(
            bpf_objects["cgroup_counter_mapdef"], cgroup_dir, name="wrong-map", maps={"shared_counts": "flow-counts-2"}
        ),
        cgroup_program(
            bpf_objects["cgroup_counter_mapdef"], cgroup_dir, name="no-map", maps={"shared_counts": "does-not-exist"}
        ),
        tc_program(
            bpf_objects["flow_counter"],
            netns_pair,
            name="no-iface",
            attach={"tc": {"interfaces": ["nosuchif0"], "direction": "ingress", "networkNamespace": netns_pair.ns_b}},
        ),
        cgroup_program(not_elf, cgroup_dir, name="bad-bytecode"),
        cgroup_program(
            bpf_objects["cgroup_counter_mapdef"],
            cgroup_dir,
            name="bad-digest",
            bytecode={"path": str(bpf_objects["cgroup_counter_mapdef"]), "sha256": "0" * 64},
        ),
        ok=False,
    )
    m2 = status["flow-counts-2"]
    assert m2["phase"] == "Error"
    assert f"pin {node.root / 'maps' / 'flow-counts'} is held by BpfMap flow-counts" in m2["message"]
    assert status["wrong-map"]["phase"] == "Pending" and "flow-counts-2" in status["wrong-map"]["message"]
    assert status["no-map"]["phase"] == "Pending" and "does-not-exist" in status["no-map"]["message"]
    assert status["no-iface"]["phase"] == "Error" and "nosuchif0" in status["no-iface"]["message"]
    assert status["bad-bytecode"]["phase"] == "Error" and "not an ELF object" in status["bad-bytecode"]["message"]
    assert status["bad-digest"]["phase"] == "Error" and "sha256" in status["bad-digest"]["message"]
    # Nothing else on the node changed.
    assert status["flow-counts"]["phase"] == "Ready"
    assert status["flow-counts"]["mapId"] == good["flow-counts"]["mapId"]
    assert status["count-ingress"]["programId"] == prog_id
    assert filters_on(netns_pair) == [prog_id]
    assert bpftool("cgroup", "show", str(cgroup_dir)) == []


def test_program_waits_for_its_map_and_deletion_waits_for_users(node: Node, bpf_objects, netns_pair: NetnsPair) -> None:
    prog = tc_program(bpf_objects["flow_counter"], netns_pair)
    waiting = node.apply(prog)
    assert waiting["count-ingress"]["phase"] == "Pending"
    assert "waiting for BpfMap flow-counts" in waiting["count-ingress"]["message"]
    assert not (node.root / "programs" / "count-ingress").exists()  # never a private map instead

    ready = node.apply(bpfmap(), prog)
    assert ready["count-ingress"]["phase"] == "Ready"
    held = node.delete(bpfmap())
    assert "deletion waits" in held["flow-counts"]["message"]
    assert "count-ingress" in held["flow-counts"]["message"]
    assert (node.root / "maps" / "flow-counts").exists()
    node.delete(prog)
    assert node.delete(bpfmap()) == {"flow-counts": {"removed": True}}
    assert not (node.root / "maps" / "flow-counts").exists()


def test_retain_keeps_pin_and_contents(node: Node) -> None:
    status = node.apply(bpfmap(reclaimPolicy="Retain"))
    pin = Path(status["flow-counts"]["pinPath"])
    subprocess.run(
        [
            "bpftool",
            "map",
            "update",
            "pinned",
            str(pin),
            "key",
            "1",
            "0",
            "0",
            "0",
            "value",
            "9",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
        ],
        check=True,
    )
    node.delete(bpfmap(reclaimPolicy="Retain"))
    assert pin.exists()
    assert counters(pin)[1] == 9


def test_adopt_takes_over_a_tc_pinned_map_after_the_check(
    node: Node, bpffs: Path, bpf_objects, netns_pair: NetnsPair
) -> None:
    loaded = tc_load(netns_pair, bpffs, bpf_objects["flow_counter_tc"], "classifier/egress", "egress")
    assert loaded.returncode == 0, loaded.stderr
    tc_pin = bpffs / "tc" / "globals" / "shared_counts"
    tc_id = bpftool("map", "show", "pinned", str(tc_pin))["id"]  # type: ignore[index]

    bad = node.apply(bpfmap("adopted", type="Hash", adopt=str(tc_pin)), ok=False)
    assert bad["adopted"]["phase"] == "Error" and "Type: Array changed to Hash" in bad["adopted"]["message"]
    assert not (node.root / "maps" / "adopted").exists()

    status = node.apply(bpfmap("adopted", adopt=str(tc_pin)))
    assert status["adopted"]["phase"] == "Ready"
    assert status["adopted"]["mapId"] == tc_id
    node.delete(bpfmap("adopted", adopt=str(tc_pin)))
    assert tc_pin.exists()  # never removes a pin it did not create
    assert not (node.root / "maps" / "adopted").exists()


def test_drift_is_repaired_without_losing_data(
    node: Node, bpf_objects, netns_pair: NetnsPair, cgroup_dir: Path
) -> None:
    docs = (
        bpfmap(),
        tc_program(bpf_objects["flow_counter"], netns_pair),
        cgroup_program(bpf_objects["cgroup_counter_mapdef"], cgroup_dir),
    )
    first = node.apply(*docs)
    pin = Path(first["flow-counts"]["pinPath"])
    netns_pair.send_udp(4)
    kept = counters(pin)[TC_INGRESS]
    assert kept >= 4

    # By hand: the map's pin removed, the tc filter deleted, the cgroup link's pin removed (detached).
    pin.unlink()
    run("tc", "filter", "del", "dev", netns_pair.if_b, "ingress", netns=netns_pair.ns_b)
    link_pin = Path(first["count-cgroup"]["attachments"][0]["pinPath"])
    link_pin.unlink()
    assert filters_on(netns_pair) == [] and bpftool("cgroup", "show", str(cgroup_dir)) == []

    repaired = node.apply(*docs)
    assert repaired["flow-counts"]["mapId"] == first["flow-counts"]["mapId"]  # re-pinned from its ID
    assert "Repinned" in node.last_events
    assert counters(pin)[TC_INGRESS] >= kept  # no data lost
    assert filters_on(netns_pair) == [repaired["count-ingress"]["programId"]]
    assert [p["id"] for p in bpftool("cgroup", "show", str(cgroup_dir))] == [repaired["count-cgroup"]["programId"]]  # type: ignore[union-attr,index]

    # The qdisc deleted, then the veth deleted and re-created: the filter comes back on the new device.
    run("tc", "qdisc", "del", "dev", netns_pair.if_b, "clsact", netns=netns_pair.ns_b)
    assert node.apply(*docs)["count-ingress"]["phase"] == "Ready"
    assert len(filters_on(netns_pair)) == 1
    run("ip", "link", "del", netns_pair.if_a, netns=netns_pair.ns_a)
    run(
        "ip",
        "link",
        "add",
        netns_pair.if_a,
        "netns",
        netns_pair.ns_a,
        "type",
        "veth",
        "peer",
        "name",
        netns_pair.if_b,
        "netns",
        netns_pair.ns_b,
    )
    for ns, ifname, addr in (
        (netns_pair.ns_a, netns_pair.if_a, netns_pair.addr_a),
        (netns_pair.ns_b, netns_pair.if_b, netns_pair.addr_b),
    ):
        run("ip", "addr", "add", f"{addr}/24", "dev", ifname, netns=ns)
        run("ip", "link", "set", ifname, "up", netns=ns)
    after = node.apply(*docs)
    assert filters_on(netns_pair) == [after["count-ingress"]["programId"]]
    before = counters(pin)[TC_INGRESS]
    netns_pair.send_udp(3)
    assert counters(pin)[TC_INGRESS] >= before + 3


def test_emptied_bpffs_recreates_maps_and_says_so(node: Node, bpffs: Path, bpf_objects, netns_pair: NetnsPair) -> None:
    docs = (bpfmap(), tc_program(bpf_objects["flow_counter"], netns_pair))
    first = node.apply(*docs)
    # The node-reboot model: every pin gone, the old programs detached with it.
    run("tc", "filter", "del", "dev", netns_pair.if_b, "ingress", netns=netns_pair.ns_b)
    for path in sorted(node.root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    again = node.apply(*docs)
    assert again["flow-counts"]["phase"] == "Ready"
    assert again["flow-counts"]["mapId"] != first["flow-counts"]["mapId"]
    assert again["count-ingress"]["phase"] == "Ready"
    assert again["count-ingress"]["maps"]["shared_counts"] == again["flow-counts"]["mapId"]
    assert filters_on(netns_pair) == [again["count-ingress"]["programId"]]


def test_dry_run_prints_the_plan_and_changes_nothing(node: Node, bpf_objects, netns_pair: NetnsPair) -> None:
    docs = [bpfmap(), tc_program(bpf_objects["flow_counter"], netns_pair)]
    path = node._file(docs)

    def dry_run(verb: str) -> list[str]:
        proc = bpfshare(verb, "-f", str(path), "--pin-root", str(node.root), "--dry-run", "-o", "json")
        return [f"{c['kind']} {c['name']}: {c['change']}" for c in json.loads(proc.stdout)]

    pin = node.root / "maps" / "flow-counts"
    planned = dry_run("apply")
    assert planned[0] == f"BpfMap flow-counts: create map (Array, key 4, value 8, max entries 4) pinned at {pin}"
    assert planned[1].startswith("BpfProgram count-ingress: load count_ingress from path ")
    assert planned[2] == f"BpfProgram count-ingress: attach to tc:{netns_pair.if_b}:ingress@{netns_pair.ns_b}"
    assert not node.root.exists() or list(node.root.rglob("*")) == [], "a dry run pinned something"
    assert filters_on(netns_pair) == []

    status = node.apply(*docs)
    assert dry_run("apply") == [
        f"BpfMap flow-counts: unchanged (map {status['flow-counts']['mapId']} at {pin})",
        f"BpfProgram count-ingress: unchanged (program {status['count-ingress']['programId']})",
    ]
    assert dry_run("delete")[0].startswith("BpfProgram count-ingress: detach everywhere and remove ")
    assert filters_on(netns_pair) == [status["count-ingress"]["programId"]], "a dry run of delete detached"
    node.delete(*docs)
