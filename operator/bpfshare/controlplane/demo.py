"""The scenario of ``bpfshare demo``: the whole product on one machine, start to finish, cleaned up after.

A cluster (the current kubeconfig if one answers, otherwise the local control plane), the CRDs, an
agent for this machine and a controller, a veth pair in two network namespaces and a cgroup, the
resources of examples/, until their Ready condition is True, real traffic, ``kubectl get`` of the
cluster view (bpfmaps, bpfprogs) and of the node view (bpfmapstates, bpfprogramstates), and the
shared map's counters.

Nothing here needs a source checkout: the CRDs are the package's copies, the example resources are
made by ``example_resources`` (tests/agent/test_demo.py holds them equal to examples/*.yaml), and the
BPF objects are the installed ones (``/opt/bpfshare/bpf``, where ``make -C bpf install`` and the
image put them; ``$BPFSHARE_BPF_DIR`` overrides).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpfshare.api.resources import API_VERSION, MAP_KIND, PROGRAM_KIND
from bpfshare.controlplane.agents import start_agent
from bpfshare.controlplane.wait import install_crds, key_of, kubectl_getter, wait_cluster_ready, wait_ready
from bpfshare.errors import BpfshareError

if TYPE_CHECKING:
    from bpfshare.controlplane.controllers import Controller

INSTALLED_BPF_DIR = Path("/opt/bpfshare/bpf")
NS_A, NS_B = "bpfshare-demo-a", "bpfshare-demo-b"
IF_A, IF_B = "bsdemo-a", "bsdemo-b"
ADDR_A, ADDR_B = "10.199.0.1", "10.199.0.2"
CGROUP = "bpfshare-demo"
MAP_NAME = "flow-counts"
COUNTER_NAMES = ("tc ingress", "tc egress", "cgroup ingress", "cgroup egress")

Say = Callable[[str], None]


def bpf_dir() -> Path:
    """Where the example BPF objects are: ``$BPFSHARE_BPF_DIR``, else /opt/bpfshare/bpf."""
    return Path(os.environ.get("BPFSHARE_BPF_DIR") or INSTALLED_BPF_DIR)


def example_resources(objects: Path = INSTALLED_BPF_DIR) -> list[dict[str, Any]]:
    """The resources of examples/ (its 10-, 20- and 30- files, in that order), with the BPF objects
    taken from ``objects``: one map shared by a tc program on the demo's veth and a cgroup program."""

    def program(name: str, obj: str, program: str, attach: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": PROGRAM_KIND,
            "metadata": {"name": name},
            "spec": {
                "bytecode": {"path": str(objects / obj)},
                "program": program,
                "attach": attach,
                "maps": {"shared_counts": MAP_NAME},
            },
        }

    tc = {"interfaces": [IF_B], "direction": "ingress", "priority": 1, "networkNamespace": NS_B}
    return [
        {
            "apiVersion": API_VERSION,
            "kind": MAP_KIND,
            "metadata": {"name": MAP_NAME},
            "spec": {"type": "Array", "keySize": 4, "valueSize": 8, "maxEntries": 4, "reclaimPolicy": "Delete"},
        },
        program("count-ingress", "flow_counter.o", "count_ingress", {"tc": tc}),
        program(
            "count-cgroup-egress",
            "cgroup_counter_mapdef.o",
            "count_cgroup_egress",
            {"cgroup": {"path": CGROUP, "type": "egress"}},
        ),
    ]


def sh(
    *argv: str, check: bool = True, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, input=input)
    if check and proc.returncode:
        raise BpfshareError(f"{' '.join(argv[:4])} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


@dataclass
class Kube:
    """kubectl against one kubeconfig."""

    kubeconfig: Path
    kubectl_path: str

    def __call__(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        return sh(self.kubectl_path, *args, check=check, env=env, input=input)


def _answers(kube: Kube) -> bool:
    if not kube.kubeconfig.exists():
        return False
    proc = kube("get", "--raw", "/readyz", "--request-timeout=3s", check=False)
    return proc.returncode == 0 and proc.stdout.strip() == "ok"


@contextlib.contextmanager
def cluster(say: Say) -> Iterator[Kube]:
    """The current kubeconfig's cluster if it answers, else the local control plane (stopped after)."""
    from bpfshare.controlplane.build import ensure_built, stderr_progress
    from bpfshare.controlplane.paths import default_state_dir
    from bpfshare.controlplane.run import is_healthy, load, start, stop

    bin_dir = ensure_built(progress=stderr_progress)
    kubectl = str(bin_dir / "kubectl")
    current = Kube(Path(os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config"))).expanduser(), kubectl)
    if _answers(current):
        say(f"cluster: using the current kubeconfig ({current.kubeconfig})")
        yield current
        return
    state = default_state_dir()
    existing = load(state)
    if existing is not None and is_healthy(existing):
        say(f"cluster: using the running local control plane at {existing.server}")
        yield Kube(existing.kubeconfig, kubectl)
        return
    say("cluster: starting a local control plane (etcd + kube-apiserver)")
    cp = start(state, bin_dir)
    try:
        yield Kube(cp.kubeconfig, kubectl)
    finally:
        stop(state)
        say("cluster: local control plane stopped")


def ensure_bpffs(pin_root: Path) -> None:
    from bpfshare.kernel.pins import is_bpffs

    mount = Path("/sys/fs/bpf")
    if pin_root.is_relative_to(mount) and not is_bpffs(mount):
        sh("mount", "-t", "bpf", "bpf", str(mount))


@contextlib.contextmanager
def network(say: Say) -> Iterator[None]:
    """Two namespaces joined by a veth; the tc program watches bsdemo-b's ingress."""
    from bpfshare.kernel.cgroup import cgroup2_root

    cleanup_network()
    sh("ip", "netns", "add", NS_A)
    sh("ip", "netns", "add", NS_B)
    try:
        sh("ip", "link", "add", IF_A, "type", "veth", "peer", "name", IF_B)
        for ns, ifname, addr in ((NS_A, IF_A, ADDR_A), (NS_B, IF_B, ADDR_B)):
            sh("ip", "link", "set", ifname, "netns", ns)
            sh("nsenter", f"--net=/run/netns/{ns}", "ip", "addr", "add", f"{addr}/24", "dev", ifname)
            sh("nsenter", f"--net=/run/netns/{ns}", "ip", "link", "set", ifname, "up")
        (cgroup2_root() / CGROUP).mkdir(exist_ok=True)
        say(f"network: {NS_A}/{IF_A} {ADDR_A} <-> {NS_B}/{IF_B} {ADDR_B}; cgroup {cgroup2_root() / CGROUP}")
        yield
    finally:
        cleanup_network()


def cleanup_network() -> None:
    from bpfshare.kernel.cgroup import cgroup2_root

    for ns in (NS_A, NS_B):
        sh("ip", "netns", "del", ns, check=False)
    sh("ip", "link", "del", IF_A, check=False)
    path = cgroup2_root() / CGROUP
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


def make_traffic(packets: int = 10) -> None:
    from bpfshare.kernel.cgroup import cgroup2_root
    from bpfshare.kernel.netns import enter_netns

    with enter_netns(NS_A), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(packets):
            with contextlib.suppress(OSError):
                sock.sendto(b"bpfshare-demo", (ADDR_B, 9))
    procs = cgroup2_root() / CGROUP / "cgroup.procs"
    code = (
        f"import os,socket; open({str(procs)!r},'w').write(str(os.getpid()));"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
        f"[s.sendto(b'x',('127.0.0.1',9)) for _ in range({packets})]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def read_counters(pin: Path) -> list[int]:
    from bpfshare.kernel.maps import Map

    with Map.from_pin(pin) as live:
        return [struct.unpack("<Q", live.lookup(struct.pack("<I", i)) or bytes(8))[0] for i in range(4)]


@contextlib.contextmanager
def only_demo() -> Iterator[None]:
    """The demo's network namespaces, veth and cgroup have fixed names (examples/ refer to them):
    a second demo at the same time would tear down the first one's."""
    import fcntl

    with open("/run/bpfshare-demo.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BpfshareError("another `bpfshare demo` is running on this machine; wait for it to end") from None
        yield


def run_demo(pin_root: Path, keep: bool, say: Say) -> None:
    if os.geteuid() != 0:
        raise BpfshareError("the demo loads eBPF programs and creates network namespaces: run it as root")
    docs = example_resources(bpf_dir())
    for doc in docs:
        path = Path(doc["spec"]["bytecode"]["path"]) if "bytecode" in doc["spec"] else None
        if path is not None and not path.is_file():
            raise BpfshareError(
                f"{doc['metadata']['name']} needs {path}: run `make demo` (it builds bpf/ and installs the "
                "objects there), or point BPFSHARE_BPF_DIR at a directory holding the built objects"
            )
    with only_demo():
        _run_demo(docs, pin_root, keep, say)


@contextlib.contextmanager
def _node(kube: Kube, node: str) -> Iterator[None]:
    """This machine's Node object: the existing one, or one made for the demo (and deleted after)."""
    created = kube("get", "node", node, check=False).returncode != 0
    if created:
        kube("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}))
    try:
        yield
    finally:
        if created:
            kube("delete", "node", node, "--ignore-not-found", check=False)


def _start_controller(kube: Kube, log: Path) -> Controller:
    """A controller replica on ``kube``'s cluster (the local control plane's or the current kubeconfig's),
    kopf's peering CRD installed first."""
    from bpfshare.controlplane.controllers import install_peering, start_controller

    install_peering(kube)
    return start_controller(None, log, kubeconfig=kube.kubeconfig)


def _run_demo(docs: list[dict[str, Any]], pin_root: Path, keep: bool, say: Say) -> None:
    ensure_bpffs(pin_root)
    node = socket.gethostname()
    keys = [key_of(doc) for doc in docs]
    names = [f"{plural}/{name}" for plural, name in keys]
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    log = logs / f"bpfshare-demo-agent-{os.getpid()}.log"
    controller_log = logs / f"bpfshare-demo-controller-{os.getpid()}.log"
    with cluster(say) as kube, network(say), _node(kube, node):
        install_crds(kube)
        agent = start_agent(node, kube.kubeconfig, log, pin_root=pin_root)
        say(f"agent: node {node}, pin root {pin_root}, log {log}")
        controller = None
        try:
            controller = _start_controller(kube, controller_log)
            say(f"controller: log {controller_log}")
            show_scenario(kube, docs, node, pin_root / "maps" / MAP_NAME, keep, say)
        finally:
            # Whatever happened, the resources go while the agent still runs to detach them (and the
            # controller, to release them once the node did); without a controller, nothing holds them.
            if controller is not None and not controller.alive():
                _drop_finalizers(kube, names)
            kube("delete", *reversed(names), "--ignore-not-found", "--timeout=60s", check=False)
            _drop_finalizers(kube, names)
            if controller is not None:
                controller.close()
            agent.close()


def show_scenario(kube: Kube, docs: list[dict[str, Any]], node: str, pin: Path, keep: bool, say: Say) -> None:
    """The examples applied until Ready, traffic, both views and the shared map's counters (read from
    ``pin``), then (after Ctrl-C with ``keep``) the examples deleted: the demo's part that is the same
    whether the agent runs as a process or as a pod."""
    keys = [key_of(doc) for doc in docs]
    say("$ kubectl apply -f examples/")
    listing = {"apiVersion": "v1", "kind": "List", "items": docs}
    say(kube("apply", "-f", "-", input=json.dumps(listing)).stdout.rstrip())
    get = kubectl_getter(kube)
    wait_ready(get, keys, [node])  # the node's reports, then the cluster view made of them
    say("$ kubectl wait --for=condition=Ready bpfmaps,bpfprogs --all")
    say(kube("wait", "--for=condition=Ready", "bpfmaps,bpfprogs", "--all", "--timeout=60s").stdout.rstrip())
    wait_cluster_ready(get, keys)  # also status.observedGeneration, which kubectl wait does not read
    make_traffic()
    say("\n$ kubectl get bpfmaps,bpfprogs")
    say(kube("get", "bpfmaps,bpfprogs").stdout.rstrip())
    say("\n$ kubectl get bpfmapstates,bpfprogramstates")
    say(kube("get", "bpfmapstates,bpfprogramstates").stdout.rstrip())
    values = read_counters(pin)
    say(f"\nshared map {pin}: " + ", ".join(f"{n} {v}" for n, v in zip(COUNTER_NAMES, values, strict=True)))
    if keep:
        say("--keep: leaving everything running; press Ctrl-C to clean up")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    say("\ncleaning up: kubectl delete -f examples/")
    kube("delete", *reversed([f"{plural}/{name}" for plural, name in keys]), "--timeout=60s")


def _drop_finalizers(kube: Kube, names: list[str]) -> None:
    """Let whatever of ``names`` is left go (a controller that died holds them by its finalizer)."""
    for name in names:
        if kube("get", name, check=False).returncode == 0:
            kube("patch", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
