"""A real node beside the control plane (``bpfshare cluster up --node``): containerd with CNI, the
kubelet that registers this machine as a Node, kube-controller-manager and kube-scheduler.

Everything lives under ``<state dir>/node``: containerd's config, root, state and socket, the CNI
configuration and its address leases, the kubelet's config, root directory and pod logs. Pods'
network namespaces do not: they are in /run/netns, where a node's are and where the agent's DaemonSet
looks for them (node_host.py tells ours from others'). The host-side pieces (the node's address,
the Service NAT, shared mounts, the cgroup root) are node_host.py's. ``stop`` undoes both, from the
names alone when the processes are gone.

containerd is Debian's (1.6) with runc; its CRI plugin needs ``restrict_oom_score_adj`` here (a
sandbox may not lower its oom_score_adj, and runc would fail with "can't get final child's PID from
pipe"), and its sandbox image is built locally (pause.py): no registry serves one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Protocol

import yaml

from bpfshare.controlplane import ControlPlaneError, node_host, pki
from bpfshare.controlplane.pause import SANDBOX_IMAGE, pause_archive
from bpfshare.controlplane.procs import free_ports, launch, wait_ready
from bpfshare.controlplane.procs import stop as stop_process


class ControlPlane(Protocol):
    """What the node needs of run.ControlPlane (a Protocol: run.py imports this module, not the reverse)."""

    state_dir: Path
    bin_dir: Path
    server: str
    token: str
    node: str
    node_token: str
    processes: dict[str, Any]

    @property
    def ca_file(self) -> Path: ...

    def log(self, name: str) -> Path: ...

    def save(self) -> None: ...

    def kubectl(self, *args: str, check: bool = ..., timeout: float = ...) -> subprocess.CompletedProcess[str]: ...


NODE_PROCESSES = ("kubelet", "kube-scheduler", "kube-controller-manager", "containerd")  # stop order
CNI_BIN_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))
CLUSTER_DOMAIN = "cluster.local"


def node_dir(state_dir: Path) -> Path:
    return state_dir / "node"


def containerd_socket(state_dir: Path) -> Path:
    return node_dir(state_dir) / "containerd" / "containerd.sock"


# containerd and the kubelet refuse (or fail to bind) a unix socket path longer than 104 bytes (the
# BSD sun_path size, which Go checks on every platform). The deepest below the node directory: the
# kubelet's pod-resources socket, kubelet/root/pod-resources/ and a 10-digit random name.
SOCKET_PATH_MAX = 104
DEEPEST_SOCKET = len("/kubelet/root/pod-resources/") + 10


def check_socket_paths(state_dir: Path) -> None:
    """Refuse, naming the path, a state directory so deep that the node's sockets would not fit."""
    base = str(node_dir(state_dir).resolve())
    if len(base.encode()) + DEEPEST_SOCKET > SOCKET_PATH_MAX:
        raise ControlPlaneError(
            f"the state directory {state_dir} is too deep for the node's unix sockets "
            f"({base} plus {DEEPEST_SOCKET} bytes exceeds {SOCKET_PATH_MAX}); "
            "set BPFSHARE_CLUSTER_DIR to a shorter path"
        )


def kubelet_config_of(cmdline: list[str]) -> Path | None:
    """The ``--config`` of a kubelet command line, if it is one of ours (``<state>/node/kubelet/config.yaml``)."""
    if not cmdline or Path(cmdline[0]).name != "kubelet":
        return None
    for arg in cmdline[1:]:
        if arg.startswith("--config="):
            config = Path(arg.removeprefix("--config="))
            if config.parts[-3:] == ("node", "kubelet", "config.yaml"):
                return config
    return None


def check_no_other_node(state_dir: Path) -> None:
    """Refuse to start a node while another state directory's node runs on this machine: the address,
    bridge, NAT chain and cgroup root have fixed names, and cleaning up what a crashed node left (the
    first step of ``up``) would kill the other node's pods and remove its network."""
    import psutil

    ours = node_dir(state_dir).resolve()
    for proc in psutil.process_iter(["cmdline"]):
        try:
            config = kubelet_config_of(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if config is not None and config.parents[1].resolve() != ours:
            other = config.parents[2]
            raise ControlPlaneError(
                f"another bpfshare node runs on this machine (kubelet pid {proc.pid}, state directory {other}); "
                f"only one fits (fixed address, bridge and cgroup root): stop it first "
                f"(BPFSHARE_CLUSTER_DIR={other} bpfshare cluster down)"
            )


def default_node_name() -> str:
    return os.uname().nodename.lower().split(".")[0] or "node"


def cni_bin_dir() -> Path:
    for candidate in CNI_BIN_DIRS:
        if (candidate / "bridge").exists() and (candidate / "host-local").exists():
            return candidate
    raise ControlPlaneError(
        f"no CNI plugins (bridge, host-local) in {' or '.join(map(str, CNI_BIN_DIRS))}; "
        "install Debian's containernetworking-plugins (make install)"
    )


def require_tools() -> None:
    missing = [tool for tool in ("containerd", "ctr", "runc", "iptables", "ip", "mount") if not shutil.which(tool)]
    if missing:
        raise ControlPlaneError(
            f"the node needs {', '.join(missing)}; install Debian's containerd, runc and iptables (make install)"
        )
    cni_bin_dir()
    if os.geteuid() != 0:
        raise ControlPlaneError("a real node (kubelet, containerd) needs root")


# -- configuration files -----------------------------------------------------------------------------


def containerd_config(state_dir: Path) -> str:
    base = node_dir(state_dir) / "containerd"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{base / "root"}"
state = "{base / "state"}"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{containerd_socket(state_dir)}"

[ttrpc]
  address = "{base / "containerd.sock.ttrpc"}"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{base / "opt"}"

[{cri}]
  sandbox_image = "{SANDBOX_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = false  # /run/netns/cni-*, where a node's are (the DaemonSet mounts it)
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{cni_bin_dir()}"
  conf_dir = "{node_dir(state_dir) / "cni" / "net.d"}"
"""


def cni_config(state_dir: Path) -> str:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "bpfshare",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": node_host.BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": node_host.POD_SUBNET}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(node_dir(state_dir) / "cni" / "ipam"),
                    },
                }
            ],
        },
        indent=2,
    )


def kubelet_config(state_dir: Path, port: int, client_ca: Path) -> str:
    base = node_dir(state_dir) / "kubelet"
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node_host.NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{node_host.CGROUP_ROOT}",
        "containerRuntimeEndpoint": f"unix://{containerd_socket(state_dir)}",
        "failSwapOn": False,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDomain": CLUSTER_DOMAIN,
        "podLogsDir": str(base / "pod-logs"),
        "staticPodPath": "",
        "resolvConf": "/etc/resolv.conf",
        "serializeImagePulls": False,
        # A development machine's disk may be fuller than a node's: no eviction or image GC for it.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "nodeStatusReportFrequency": "10s",
    }
    return yaml.safe_dump(config, sort_keys=False)


# -- start and stop ---------------------------------------------------------------------------------


def start_node(cp: ControlPlane, deadline: float, *, die_with_parent: bool = False) -> None:
    """Start containerd, kube-controller-manager, kube-scheduler and the kubelet against ``cp`` (whose
    kube-apiserver already listens on the node's address) and wait for the Node to be Ready."""
    base = node_dir(cp.state_dir)
    for sub in ("containerd", "cni/net.d", "cni/ipam", "kubelet/root", "kubelet/pod-logs"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    node_host.share_mounts()
    node_host.make_cgroup_root()

    (base / "containerd" / "config.toml").write_text(containerd_config(cp.state_dir))
    (base / "cni" / "net.d" / "10-bpfshare.conflist").write_text(cni_config(cp.state_dir))
    cp.processes["containerd"] = launch(
        "containerd",
        [shutil.which("containerd") or "containerd", "--config", str(base / "containerd" / "config.toml")],
        cp.log("containerd"),
        die_with_parent=die_with_parent,
    )
    cp.save()
    wait_ready(cp.processes, cp.log, "containerd", deadline, lambda: _ctr(cp.state_dir, "version").returncode == 0)
    imported = _ctr(cp.state_dir, "-n", "k8s.io", "images", "import", str(pause_archive()))
    if imported.returncode != 0:
        raise ControlPlaneError(f"importing the sandbox image into containerd failed: {imported.stderr.strip()}")

    pki_dir = cp.state_dir / "pki"
    admin = pki_dir / "admin.kubeconfig"
    pki.write_private(admin, pki.kubeconfig(cp.server, cp.ca_file, cp.token))
    kubelet_kubeconfig = base / "kubelet" / "kubeconfig"
    pki.write_private(
        kubelet_kubeconfig, pki.kubeconfig(cp.server, cp.ca_file, cp.node_token, user=f"system:node:{cp.node}")
    )
    for name, argv in (
        ("kube-controller-manager", _controller_manager_argv(cp, admin)),
        ("kube-scheduler", _scheduler_argv(cp, admin)),
    ):
        cp.processes[name] = launch(name, argv, cp.log(name), die_with_parent=die_with_parent)
        cp.save()

    (kubelet_port,) = free_ports(1)
    (base / "kubelet" / "config.yaml").write_text(
        kubelet_config(cp.state_dir, kubelet_port, pki_dir / "kubelet-client-ca.crt")
    )
    cp.processes["kubelet"] = launch(
        "kubelet",
        [
            str(cp.bin_dir / "kubelet"),
            f"--config={base / 'kubelet' / 'config.yaml'}",
            f"--kubeconfig={kubelet_kubeconfig}",
            f"--root-dir={base / 'kubelet' / 'root'}",
            f"--hostname-override={cp.node}",
            f"--node-ip={node_host.NODE_IP}",
        ],
        cp.log("kubelet"),
        die_with_parent=die_with_parent,
    )
    cp.save()
    wait_ready(
        cp.processes, cp.log, "kubelet", deadline, lambda: _node_ready(cp),
        also=("kube-controller-manager", "kube-scheduler"), interval=0.5,
    )  # fmt: skip


def stop_node(cp: ControlPlane | None, state_dir: Path) -> None:
    """Stop the node's processes, kill what is left of the pods, and remove the node's mounts,
    cgroups, links and NAT chain: by record where there is one, by name always."""
    if cp is not None:
        for name in NODE_PROCESSES:
            if name in cp.processes:
                stop_process(cp.processes[name], grace=10.0)
    base = node_dir(state_dir)
    _kill_shims(containerd_socket(state_dir))
    node_host.kill_pods()
    node_host.remove_pod_netns()
    if base.exists():
        node_host.unmount_below(base)
    node_host.remove_network()


def _kill_shims(socket: Path) -> None:
    """containerd's shims outlive containerd by design; ours name our socket on their command line."""
    import psutil

    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if (
                proc.info["name"]
                and "containerd-shim" in proc.info["name"]
                and str(socket) in (proc.info["cmdline"] or [])
            ):
                proc.kill()
        except psutil.Error:
            continue


def _ctr(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ctr", "--address", str(containerd_socket(state_dir)), *args], capture_output=True, text=True, timeout=120
    )


def _component_argv(cp: ControlPlane, binary: str, kubeconfig: Path, *flags: str) -> list[str]:
    """kube-controller-manager and kube-scheduler: both authenticate and authorize with the kubeconfig,
    serve no port of their own and run alone (no leader election)."""
    return [
        str(cp.bin_dir / binary),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--leader-elect=false",
        "--secure-port=0",
        "--profiling=false",
        *flags,
    ]


def _controller_manager_argv(cp: ControlPlane, kubeconfig: Path) -> list[str]:
    return _component_argv(
        cp,
        "kube-controller-manager",
        kubeconfig,
        # kube-root-ca.crt in every namespace: the CA that pods' projected service-account volumes carry.
        f"--root-ca-file={cp.ca_file}",
        f"--service-account-private-key-file={cp.state_dir / 'pki' / 'service-account.key'}",
        "--controllers=*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle,-route",
    )


def _scheduler_argv(cp: ControlPlane, kubeconfig: Path) -> list[str]:
    return _component_argv(cp, "kube-scheduler", kubeconfig)


def _node_ready(cp: ControlPlane) -> bool:
    result = cp.kubectl("get", "node", cp.node, "-o", "json", check=False, timeout=10)
    if result.returncode != 0:
        return False
    conditions = json.loads(result.stdout).get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
