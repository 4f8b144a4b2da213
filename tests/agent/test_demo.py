"""The README's main command, `bpfshare demo`, end to end against the test session's control plane; and
what the demo ships instead of reading a source checkout (the CRDs, the example resources)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bpfshare.api.states import label_value
from bpfshare.controlplane.demo import INSTALLED_BPF_DIR, example_resources
from bpfshare.controlplane.wait import crd_dir
from tests.fixtures.netenv import run

REPO = Path(__file__).resolve().parents[2]


def test_the_demos_resources_are_the_examples() -> None:
    files = sorted((REPO / "examples").glob("*.yaml"))
    assert [yaml.safe_load(f.read_text()) for f in files] == example_resources(INSTALLED_BPF_DIR)
    moved = example_resources(Path("/elsewhere"))
    assert {d["spec"]["bytecode"]["path"] for d in moved[1:]} == {
        "/elsewhere/flow_counter.o",
        "/elsewhere/cgroup_counter_mapdef.o",
    }


def test_the_packages_crds_are_identical_to_crds() -> None:
    shipped = sorted(p.name for p in crd_dir().glob("*.yaml"))
    assert shipped == sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    for name in shipped:
        assert (crd_dir() / name).read_bytes() == (REPO / "crds" / name).read_bytes(), (
            f"{crd_dir() / name} differs from crds/{name}: copy crds/*.yaml there"
        )


@pytest.mark.kernel
@pytest.mark.cluster
def test_demo_shares_one_map_and_cleans_up(crds, bpffs: Path) -> None:
    objects = [INSTALLED_BPF_DIR / n for n in ("flow_counter.o", "cgroup_counter_mapdef.o")]
    if not all(o.exists() for o in objects):
        subprocess.run(["make", "-s", "-C", str(REPO / "bpf"), "install"], check=True)
    env = {**os.environ, "KUBECONFIG": str(crds.kubeconfig)}
    proc = subprocess.run(
        [sys.executable, "-m", "bpfshare", "demo", "--pin-root", str(bpffs / "bpfshare")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",  # nothing is read from a source checkout
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "using the current kubeconfig" in out
    # The cluster view (the controller's), then the node view (the agent's).
    assert re.search(r"flow-counts\s+Array\s+4\s+8\s+4\s+1/1\s+AllNodesReady", out), out
    assert re.search(
        r"count-ingress\s+tc/ingress bsdemo-b@bpfshare-demo-b\s+count_ingress\s+1/1\s+AllNodesReady", out
    ), out
    assert re.search(r"flow-counts\.\S+\s+flow-counts\s+\S+\s+\d+\s+Ready", out), out
    assert re.search(r"count-ingress\.\S+\s+count-ingress\s+\S+\s+\d+\s+\{\"shared_counts\":\d+\}\s+tc:", out), out
    counts = dict(re.findall(r"(tc ingress|cgroup egress) (\d+)", out))
    assert int(counts["tc ingress"]) >= 10 and int(counts["cgroup egress"]) >= 10, out
    # Cleaned up: resources and their states, namespaces, cgroup, pins.
    assert crds.kubectl("get", "bpfprograms,bpfmaps", "-o", "name").stdout.strip() == ""
    mine = f"bpfshare.io/node={label_value(socket.gethostname())}"  # the demo's node is this machine
    assert crds.kubectl("get", "bpfmapstates,bpfprogramstates", "-l", mine, "-o", "name").stdout.strip() == ""
    assert "bpfshare-demo" not in run("ip", "netns", "list").stdout
    assert not (bpffs / "bpfshare" / "maps" / "flow-counts").exists()


def test_demo_without_the_objects_says_where_they_should_be(tmp_path: Path) -> None:
    env = {**os.environ, "BPFSHARE_BPF_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "bpfshare", "demo"], env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    if os.geteuid() != 0:  # it says that first
        assert "run it as root" in proc.stderr, proc.stderr
    else:
        assert str(tmp_path / "flow_counter.o") in proc.stderr and "BPFSHARE_BPF_DIR" in proc.stderr, proc.stderr
