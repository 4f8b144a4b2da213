"""The README's main command, `bpfshare demo`, end to end against the test session's control plane."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.netenv import run

pytestmark = [pytest.mark.kernel, pytest.mark.cluster]
REPO = Path(__file__).resolve().parents[2]


def test_demo_shares_one_map_and_cleans_up(crds, bpffs: Path) -> None:
    objects = [Path("/opt/bpfshare/bpf") / n for n in ("flow_counter.o", "cgroup_counter_mapdef.o")]
    if not all(o.exists() for o in objects):
        subprocess.run(["make", "-s", "-C", str(REPO / "bpf"), "install"], check=True)
    env = {**os.environ, "KUBECONFIG": str(crds.kubeconfig)}
    proc = subprocess.run(
        [sys.executable, "-m", "bpfshare", "demo", "--pin-root", str(bpffs / "bpfshare")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "using the current kubeconfig" in out
    assert re.search(r"flow-counts\s+Array\s+4\s+8\s+4\s+\{\"[^\"]+\":\d+\}\s+\{\"[^\"]+\":\"Ready\"\}", out), out
    assert re.search(r"count-ingress\s+tc/ingress bsdemo-b@bpfshare-demo-b\s+count_ingress", out), out
    counts = dict(re.findall(r"(tc ingress|cgroup egress) (\d+)", out))
    assert int(counts["tc ingress"]) >= 10 and int(counts["cgroup egress"]) >= 10, out
    # Cleaned up: resources, namespaces, cgroup, pins.
    assert crds.kubectl("get", "bpfprograms,bpfmaps", "-o", "name").stdout.strip() == ""
    assert "bpfshare-demo" not in run("ip", "netns", "list").stdout
    assert not (bpffs / "bpfshare" / "maps" / "flow-counts").exists()
