"""Pods programs on the real node, shared by the tests of a process agent (test_pod_targets.py) and
of the DaemonSet's agent (test_node_deploy.py): the test pods (the sandbox image, which needs no
registry), a BpfMap with a tc and a cgroup program for the selected pods, and what the node's
BpfProgramStates say of them."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from bpfshare.controlplane.pause import SANDBOX_IMAGE
from bpfshare.controlplane.run import ControlPlane
from bpfshare.controlplane.wait import poll
from bpfshare.cri.pods import PodPlace
from bpfshare.kernel.cgroup import cgroup2_root
from bpfshare.kernel.maps import Map
from bpfshare.kernel.netns import enter_netns
from tests.fixtures.bpftool import bpftool_json
from tests.fixtures.kernel import BPF_DIR

API = "bpfshare.io/v1alpha1"
SELECT = {"namespace": "default", "selector": {"matchLabels": {"app": "pt-web"}}}


def pod(name: str, app: str = "pt-web") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
        "spec": {
            "containers": [{"name": "sleep", "image": SANDBOX_IMAGE, "imagePullPolicy": "Never"}],
            "terminationGracePeriodSeconds": 1,
        },
    }


def resources(selector: dict[str, Any] = SELECT, bpf_dir: Path = BPF_DIR) -> list[dict[str, Any]]:
    """A BpfMap shared by a tc program for the selected pods' eth0 and a cgroup program for their cgroups."""

    def program(name: str, obj: str, fn: str, attach: dict[str, Any]) -> dict[str, Any]:
        spec = {"bytecode": {"path": str(bpf_dir / obj)}, "program": fn, "attach": attach,
                "maps": {"shared_counts": "pt-counts"}}  # fmt: skip
        return {"apiVersion": API, "kind": "BpfProgram", "metadata": {"name": name}, "spec": spec}

    return [
        {"apiVersion": API, "kind": "BpfMap", "metadata": {"name": "pt-counts"},
         "spec": {"type": "Array", "keySize": 4, "valueSize": 8, "maxEntries": 4, "reclaimPolicy": "Delete"}},
        program("pt-tc", "flow_counter.o", "count_ingress", {"tc": {"pods": selector, "direction": "ingress"}}),
        program("pt-cgroup", "cgroup_counter_mapdef.o", "count_cgroup_egress",
                {"cgroup": {"pods": selector, "type": "egress"}}),
    ]  # fmt: skip


def remove_resources(cp: ControlPlane) -> None:
    """Delete the test's resources; once the agent released them (their states are gone), drop the
    controller's finalizer, which no controller runs here to remove."""
    names = ["bpfprograms/pt-tc", "bpfprograms/pt-cgroup", "bpfmaps/pt-counts"]
    cp.kubectl("delete", *names, "--ignore-not-found", "--wait=false", check=False)

    def released() -> bool:
        programs = cp.kubectl("get", "bpfprogramstates", "-l", "bpfshare.io/program in (pt-tc,pt-cgroup)", "-o", "name")
        maps = cp.kubectl("get", "bpfmapstates", "-l", "bpfshare.io/map=pt-counts", "-o", "name")
        return not programs.stdout.strip() and not maps.stdout.strip()

    poll(released, "the agent to release the test's resources")
    for name in names:
        cp.kubectl("patch", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)


def state(cp: ControlPlane, program: str) -> dict[str, Any] | None:
    got = cp.kubectl("get", "bpfprogramstates", "-l", f"bpfshare.io/program={program}", "-o", "json").stdout
    items = json.loads(got)["items"]
    return items[0]["status"] if items and items[0].get("status", {}).get("phase") == "Ready" else None


def attached_pods(cp: ControlPlane, program: str) -> list[str] | None:
    status = state(cp, program)
    return None if status is None else sorted(a.get("pod", "") for a in status.get("attachments") or [])


def run_pods(cp: ControlPlane, *names: str, app: str = "pt-web") -> dict[str, dict[str, Any]]:
    for name in names:
        cp.kubectl("apply", "-f", "-", input=json.dumps(pod(name, app)))

    def running() -> dict[str, dict[str, Any]] | None:
        docs = {n: json.loads(cp.kubectl("get", "pod", n, "-o", "json").stdout) for n in names}
        return docs if all(d["status"].get("phase") == "Running" for d in docs.values()) else None

    return poll(running, f"pods {', '.join(names)} to run")


def counter(pin: Path, index: int) -> int:
    with Map.from_pin(pin) as live:
        return int(struct.unpack("<Q", live.lookup(struct.pack("<I", index)) or bytes(8))[0])


def pod_tc_filters(place: PodPlace, interface: str = "eth0", kind: str = "ingress") -> list[int]:
    """bpftool's view: the IDs of the BPF filters on the pod's interface, inside its network namespace
    (those whose kind ends with ``kind``; every one for ``""``)."""
    with enter_netns(place.netns):
        shown = bpftool_json("net", "show", "dev", interface)
    assert isinstance(shown, list)
    return [f["id"] for e in shown for f in e.get("tc", []) if f.get("kind", "").endswith(kind)]


def pod_cgroup_programs(place: PodPlace, attach_type: str = "cgroup_inet_egress") -> list[int]:
    """bpftool's view: the IDs of the programs attached to the pod's cgroup (of ``attach_type``; every
    one for ``""``)."""
    attached = bpftool_json("cgroup", "show", str(cgroup2_root() / place.cgroup))
    assert isinstance(attached, list)
    return [p["id"] for p in attached if not attach_type or p.get("attach_type") == attach_type]
