"""Hostile or bad resources: the API server refuses what the schema can say; the agent reports the rest
as phase Error with the cause, stays up, and changes nothing else on the node."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from bpfshare.api.resources import MAP_PLURAL as MAPS
from bpfshare.api.resources import PROGRAM_PLURAL as PROGS
from tests.fixtures.agents import Cluster
from tests.fixtures.netenv import NetnsPair
from tests.integration.test_apply import bpfmap, cgroup_program, tc_program
from tests.integration.test_sharing import filters_on, pins_in

pytestmark = [pytest.mark.kernel, pytest.mark.cluster]


def refused(cluster: Cluster, doc: dict[str, Any]) -> str:
    proc = cluster.kubectl("apply", "-f", "-", input=json.dumps(doc), check=False)
    assert proc.returncode != 0, f"the API server accepted {doc['metadata']['name']}"
    return proc.stderr


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"pinName": "a/b"}, "spec.pinName"),
        ({"pinName": ".."}, "spec.pinName"),
        ({"pinName": "a\u0000b"}, "spec.pinName"),
        ({"adopt": "/etc/passwd"}, "spec.adopt"),
        ({"adopt": "/sys/fs/bpf/../../etc/shadow"}, "spec.adopt"),
        ({"maxEntries": -1}, "spec.maxEntries"),
        ({"type": "Array", "keySize": 8}, "keySize"),
    ],
)
def test_the_api_server_refuses_what_the_schema_can_express(
    crds: Any, cluster: Cluster, spec: dict[str, Any], field: str
) -> None:
    assert field in refused(cluster, bpfmap("hostile", **spec))


def test_the_agent_reports_the_rest_and_disturbs_nothing(
    cluster: Cluster, bpf_objects, netns_pair: NetnsPair, cgroup_dir: Path, tmp_path: Path
) -> None:
    node = cluster.add_node()
    agent = cluster.start_agent(node)
    cluster.apply(bpfmap(), tc_program(bpf_objects["flow_counter"], netns_pair))
    good = cluster.wait_phase(PROGS, "count-ingress", node)
    good_map = cluster.wait_phase(MAPS, "flow-counts", node)

    obj = bpf_objects["cgroup_counter_mapdef"]
    cm_ns = "default"
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"\xff\xfe" + os.urandom(500))  # binary (so binaryData), but no ELF
    cluster.kubectl(
        "create", "configmap", "bpf-objects", "-n", cm_ns, f"--from-file=counter.o={obj}", f"--from-file=junk.o={junk}"
    )
    cluster.kubectl("create", "configmap", "bpf-text", "-n", cm_ns, "--from-literal=counter.o=hello")
    try:
        garbage = base64.b64encode(b"\x7fELF" + os.urandom(2000)).decode()

        def from_cm(name: str, key: str, cm: str = "bpf-objects") -> dict[str, Any]:
            return cgroup_program(
                obj, cgroup_dir, name=name, bytecode={"configMap": {"namespace": cm_ns, "name": cm, "key": key}}
            )

        cluster.apply(
            bpfmap("too-big", type="Hash", keySize=64, valueSize=1 << 20, maxEntries=1 << 30),
            from_cm("from-configmap", "counter.o"),
            from_cm("cm-missing", "counter.o", cm="no-such-configmap"),
            from_cm("cm-not-elf", "junk.o"),
            from_cm("cm-text-key", "counter.o", cm="bpf-text"),
            cgroup_program(obj, cgroup_dir, name="garbage", bytecode={"inline": garbage}),
            cgroup_program(
                obj,
                cgroup_dir,
                name="no-cgroup",
                attach={"cgroup": {"path": "bpfshare-no-such-cgroup", "type": "egress"}},
            ),
            tc_program(bpf_objects["flow_counter"], netns_pair, name="wrong-kind", program="count_cgroup_egress"),
        )
        too_big = cluster.wait_phase(MAPS, "too-big", node, "Error")
        # Refused before the kernel is asked: more memory than the node's budget for maps.
        assert "more than the map memory budget" in too_big["message"], too_big["message"]
        assert "--map-memory-budget" in too_big["message"]
        assert cluster.wait_phase(PROGS, "from-configmap", node)["maps"]["shared_counts"] == good_map["mapId"]
        assert "no-such-configmap" in cluster.wait_phase(PROGS, "cm-missing", node, "Error")["message"]
        assert "not an ELF object" in cluster.wait_phase(PROGS, "cm-not-elf", node, "Error")["message"]
        assert "binaryData" in cluster.wait_phase(PROGS, "cm-text-key", node, "Error")["message"]
        assert cluster.wait_phase(PROGS, "garbage", node, "Error")["message"]
        assert "bpfshare-no-such-cgroup" in cluster.wait_phase(PROGS, "no-cgroup", node, "Error")["message"]
        assert "needs a SchedCls program" in cluster.wait_phase(PROGS, "wrong-kind", node, "Error")["message"]

        # Nothing else changed, the agent is up, and every pin it made is under its pin root.
        assert agent.alive(), agent.log_tail()
        assert cluster.wait_phase(PROGS, "count-ingress", node)["programId"] == good["programId"]
        assert cluster.wait_phase(MAPS, "flow-counts", node)["mapId"] == good_map["mapId"]
        assert filters_on(netns_pair) == [good["programId"]]
        assert pins_in(agent.mount) == ["bpfshare"]
        assert sorted(p.name for p in (agent.pin_root / "maps").iterdir()) == ["flow-counts"]
    finally:
        cluster.kubectl("delete", "configmap", "bpf-objects", "bpf-text", "-n", cm_ns, "--ignore-not-found")
