"""What a real node needs of the host, set up and taken down by name: the node's address, the
``kubernetes`` Service's route, the mounts' propagation, the pods' cgroup root.

Everything made here carries a bpfshare name (the ``lo:bpfshare`` address, the ``bpfshare0``
bridge the CNI plugin makes, the ``BPFSHARE-NODE`` nat chain, the ``bpfshare-node`` cgroup in every
hierarchy), so ``cluster down`` removes exactly what ``cluster up --node`` made, also after a crash
that left no record.

- **The node's address** (``NODE_IP`` on lo): kube-apiserver and the kubelet listen on it,
  and pods on the bridge reach it (a local address), where they could not reach 127.0.0.1.
- **The ``kubernetes`` Service** (``SERVICE_IP:443``, what in-cluster clients are given): there is no
  kube-proxy, so one DNAT rule does its one job here, for host processes (OUTPUT) and pods
  (PREROUTING), and a route gives the service range a way out (to lo) for the rule to rewrite.
- **Mount propagation**: the agent mounts /sys/fs/bpf Bidirectional (its init container mounts bpffs
  for the host) and /run/netns HostToContainer; the kubelet refuses both unless the host path is on a
  shared mount, as systemd makes every mount. Each is bind-mounted onto itself and made shared (what
  ``ip netns add`` does for /run/netns), never the whole tree; they stay, as a node's would.
- **The cgroup root**: the kubelet's ``cgroupRoot``, so every pod's cgroup lies under one directory of
  ours in every hierarchy, and ``down`` can kill what is left there without looking at anyone else's.
- **Pods' network namespaces** are where a node's are, ``/run/netns/cni-<uuid>`` (the agent's DaemonSet
  mounts /run/netns), beside any other runtime's. Ours are those whose interfaces hold an address of
  ``POD_SUBNET``, which only our bridge hands out: ``down`` removes them, and only them, when pods were
  killed rather than torn down (a crash, or the shims killed with containerd).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bpfshare.controlplane import ControlPlaneError

NODE_LABEL = "lo:bpfshare"  # the node's address is on lo (no dummy links on every kernel), labelled
NODE_IP = "10.254.0.1"
SERVICE_CIDR = "10.0.0.0/24"  # kube-apiserver's --service-cluster-ip-range (run.SERVICE_CIDR)
SERVICE_IP = "10.0.0.1"  # the first address of it: the ``kubernetes`` Service
BRIDGE = "bpfshare0"
POD_SUBNET = "10.254.128.0/24"
NAT_CHAIN = "BPFSHARE-NODE"
CGROUP_ROOT = "bpfshare-node"
NETNS_DIR = Path("/run/netns")
SHARED_MOUNTS = (Path("/sys/fs/bpf"), NETNS_DIR)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except FileNotFoundError as exc:
        raise ControlPlaneError(f"{argv[0]} is needed for the node (install it: make install)") from exc
    if check and result.returncode != 0:
        raise ControlPlaneError(f"`{' '.join(argv)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


# -- the node's address and the kubernetes Service --------------------------------------------------


def setup_network(apiserver_port: int) -> None:
    _run("ip", "addr", "replace", f"{NODE_IP}/32", "dev", "lo", "label", NODE_LABEL)
    _run("ip", "route", "replace", SERVICE_CIDR, "dev", "lo", "src", NODE_IP)
    remove_nat()
    _run("iptables", "-w", "-t", "nat", "-N", NAT_CHAIN)
    _run(
        "iptables", "-w", "-t", "nat", "-A", NAT_CHAIN, "-d", f"{SERVICE_IP}/32", "-p", "tcp", "--dport", "443",
        "-j", "DNAT", "--to-destination", f"{NODE_IP}:{apiserver_port}",
        "-m", "comment", "--comment", "bpfshare: default/kubernetes",
    )  # fmt: skip
    for hook in ("OUTPUT", "PREROUTING"):
        _run("iptables", "-w", "-t", "nat", "-I", hook, "-j", NAT_CHAIN)


def remove_nat() -> None:
    for hook in ("OUTPUT", "PREROUTING"):
        while _run("iptables", "-w", "-t", "nat", "-D", hook, "-j", NAT_CHAIN, check=False).returncode == 0:
            pass
    _run("iptables", "-w", "-t", "nat", "-F", NAT_CHAIN, check=False)
    _run("iptables", "-w", "-t", "nat", "-X", NAT_CHAIN, check=False)


def remove_network() -> None:
    if shutil.which("iptables"):
        remove_nat()
    if _link_exists(BRIDGE):
        _run("ip", "link", "del", BRIDGE, check=False)
    _run("ip", "route", "del", SERVICE_CIDR, "dev", "lo", check=False)
    _run("ip", "addr", "del", f"{NODE_IP}/32", "dev", "lo", check=False)


# -- mount propagation -------------------------------------------------------------------------------


def _mount_point(path: Path) -> tuple[bool, bool]:
    """(is a mount point, is shared) for ``path``, from /proc/self/mountinfo (the last mount wins)."""
    found, shared = False, False
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(path):
            found = True
            optional = fields[6 : fields.index("-")]
            shared = any(tag.startswith("shared:") for tag in optional)
    return found, shared


def share_mounts() -> None:
    for path in SHARED_MOUNTS:
        path.mkdir(parents=True, exist_ok=True)
        mounted, shared = _mount_point(path)
        if shared:
            continue
        if not mounted:
            _run("mount", "--bind", str(path), str(path))
        _run("mount", "--make-shared", str(path))


# -- the pods' cgroup root ------------------------------------------------------------------------------


def cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers and the v2 tree), from /proc/self/mountinfo."""
    out: list[Path] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype in ("cgroup", "cgroup2") and fields[3] == "/":
            out.append(Path(fields[4]))
    return out


def make_cgroup_root() -> None:
    """The kubelet checks that its cgroupRoot exists in every hierarchy it uses."""
    for hierarchy in cgroup_hierarchies():
        with contextlib.suppress(OSError):  # a read-only or named hierarchy (v1 name=...) we do not need
            (hierarchy / CGROUP_ROOT).mkdir(exist_ok=True)


def _cgroup_dirs() -> list[Path]:
    """Our cgroup directories, deepest first."""
    dirs: list[Path] = []
    for hierarchy in cgroup_hierarchies():
        root = hierarchy / CGROUP_ROOT
        if root.is_dir():
            dirs.extend(Path(d) for d, _, _ in os.walk(root))
    return sorted(dirs, key=lambda p: len(p.parts), reverse=True)


def kill_pods(timeout: float = 15.0) -> None:
    """SIGKILL every process left in our cgroups (the pods' containers), then remove the cgroups."""
    deadline = time.monotonic() + timeout
    while True:
        pids: set[int] = set()
        for directory in _cgroup_dirs():
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not pids or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for directory in _cgroup_dirs():
        for _ in range(50):  # a cgroup whose last task just died may still be busy for a moment
            try:
                directory.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


# -- pods' network namespaces ---------------------------------------------------------------------------


def pod_netns() -> list[Path]:
    """Our pods' network namespaces in /run/netns: named ``cni-*`` by containerd, holding an address of
    POD_SUBNET (another runtime's namespaces have other addresses, or none of ours)."""
    subnet = ipaddress.ip_network(POD_SUBNET)
    ours: list[Path] = []
    for path in sorted(NETNS_DIR.glob("cni-*")):
        shown = _run("nsenter", f"--net={path}", "ip", "-o", "-4", "addr", "show", check=False)
        for line in shown.stdout.splitlines():
            fields = line.split()
            if "inet" in fields:
                with contextlib.suppress(ValueError):
                    if ipaddress.ip_interface(fields[fields.index("inet") + 1]).ip in subnet:
                        ours.append(path)
                        break
    return ours


def remove_pod_netns() -> None:
    """Unmount and remove our pods' network namespaces (their veths go with them)."""
    for path in pod_netns():
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)
        with contextlib.suppress(OSError):
            path.unlink()


# -- mounts under the node's directory -------------------------------------------------------------------


def unmount_below(root: Path) -> None:
    """Detach every mount at or below ``root`` (the containers' rootfs, pods' volumes, netns), deepest first."""
    prefix = str(root.resolve())
    mounts: list[str] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4].encode().decode("unicode_escape")
        if target == prefix or target.startswith(prefix + "/"):
            mounts.append(target)
    for target in sorted(set(mounts), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, timeout=30)
