"""A real node for the tests: the local control plane with containerd, CNI, a kubelet,
kube-controller-manager and kube-scheduler (``cluster up --node``), in a temporary state directory.

Only one node can run on a machine at a time (its address, bridge, NAT chain and cgroup root have
fixed names), so the fixture is module-scoped and each module that needs one gets its own, one after
the other. Its processes get SIGKILL if pytest dies; what they leave is removed by name by the next
start or by ``bpfshare cluster down``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from bpfshare.controlplane import ControlPlaneError, node_host
from bpfshare.controlplane.node import default_node_name, require_tools
from bpfshare.controlplane.run import ControlPlane, start, stop


def leftovers(state_dir: Path) -> list[str]:
    """What of a node is still on this machine."""
    found: list[str] = []
    for link in (node_host.BRIDGE,):
        if Path("/sys/class/net", link).exists():
            found.append(f"link {link}")
    addrs = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True).stdout
    if node_host.NODE_IP in addrs:
        found.append(f"address {node_host.NODE_IP} on lo")
    nat = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    if node_host.NAT_CHAIN in nat:
        found.append(f"nat chain {node_host.NAT_CHAIN}")
    found.extend(f"netns {path}" for path in node_host.pod_netns())
    for hierarchy in node_host.cgroup_hierarchies():
        if (hierarchy / node_host.CGROUP_ROOT).exists():
            found.append(f"cgroup {hierarchy / node_host.CGROUP_ROOT}")
    prefix = str(state_dir.resolve())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4].startswith(prefix):
            found.append(f"mount {line.split()[4]}")
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if prefix in cmdline:
            found.append(f"process {proc.pid}: {cmdline[:120]}")
    return found


def require_node(bin_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("a real node (kubelet, containerd) needs root")
    try:
        require_tools()
    except ControlPlaneError as exc:
        pytest.skip(f"no real node on this machine: {exc}")


@pytest.fixture(scope="module")
def real_node(control_plane_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    require_node(control_plane_bin_dir)
    state_dir = tmp_path_factory.mktemp("node")
    cp = start(state_dir, control_plane_bin_dir, die_with_parent=True, node=default_node_name(), timeout=180.0)
    try:
        yield cp
    finally:
        stop(state_dir, keep_logs=True)


@contextlib.contextmanager
def host_pin_root_removed_after() -> Iterator[None]:
    """The pod-run agent pins into the host's /sys/fs/bpf/bpfshare (the DaemonSet's --pin-root): what
    it left there is removed after, unless the directory was there before."""
    from bpfshare.controlplane.node_demo import HOST_PIN_ROOT

    existed = HOST_PIN_ROOT.exists()
    try:
        yield
    finally:
        if not existed:
            with contextlib.suppress(OSError):
                for path in sorted(HOST_PIN_ROOT.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                    path.rmdir() if path.is_dir() else path.unlink()
                HOST_PIN_ROOT.rmdir()
