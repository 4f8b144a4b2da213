"""`bpfshare demo`: the whole product on one machine, start to finish, and cleaned up after.

A cluster (the current kubeconfig if one answers, otherwise the local control plane), the CRDs, an
agent for this machine, a veth pair in two network namespaces and a cgroup, the resources of
examples/, real traffic, `kubectl get`, and the shared map's counters.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bpfshare.errors import BpfshareError

REPO = Path(__file__).resolve().parents[2]
NS_A, NS_B = "bpfshare-demo-a", "bpfshare-demo-b"
IF_A, IF_B = "bsdemo-a", "bsdemo-b"
ADDR_A, ADDR_B = "10.199.0.1", "10.199.0.2"
CGROUP = "bpfshare-demo"
COUNTER_NAMES = ("tc ingress", "tc egress", "cgroup ingress", "cgroup egress")

Say = Callable[[str], None]


def sh(
    *argv: str, check: bool = True, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, input=input)
    if check and proc.returncode:
        raise BpfshareError(f"{' '.join(argv[:4])} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


@dataclass
class Kube:
    kubeconfig: Path
    kubectl_path: str

    def __call__(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        return sh(self.kubectl_path, *args, check=check, env=env, input=input)


def _answers(kubeconfig: Path, kubectl: str) -> bool:
    if not kubeconfig.exists():
        return False
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    proc = subprocess.run(
        [kubectl, "get", "--raw", "/readyz", "--request-timeout=3s"], capture_output=True, text=True, env=env
    )
    return proc.returncode == 0 and proc.stdout.strip() == "ok"


@contextlib.contextmanager
def cluster(say: Say) -> Iterator[Kube]:
    """The current kubeconfig's cluster if it answers, else the local control plane (stopped after)."""
    from bpfshare.controlplane.build import ensure_built, stderr_progress
    from bpfshare.controlplane.paths import default_state_dir
    from bpfshare.controlplane.run import is_healthy, load, start, stop

    bin_dir = ensure_built(progress=stderr_progress)
    kubectl = str(bin_dir / "kubectl")
    current = Path(os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config"))).expanduser()
    if _answers(current, kubectl):
        say(f"cluster: using the current kubeconfig ({current})")
        yield Kube(current, kubectl)
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


@contextlib.contextmanager
def agent(kube: Kube, node: str, pin_root: Path, log: Path, say: Say) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig), "NODE_NAME": node}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bpfshare", "agent", "--pin-root", str(pin_root)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    say(f"agent: node {node}, pin root {pin_root}, log {log}")
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_ready(kube: Kube, node: str, names: list[tuple[str, str]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    pending: list[str] = []
    while time.monotonic() < deadline:
        pending = []
        for plural, name in names:
            obj = json.loads(kube("get", plural, name, "-o", "json").stdout)
            entry = next((e for e in (obj.get("status") or {}).get("nodes") or [] if e.get("node") == node), None)
            if entry is None or entry.get("phase") != "Ready":
                pending.append(
                    f"{plural}/{name}: {entry.get('phase') if entry else 'no status'}"
                    + (f" ({entry['message']})" if entry and entry.get("message") else "")
                )
        if not pending:
            return
        time.sleep(0.3)
    raise BpfshareError("not Ready in time: " + "; ".join(pending))


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
    import struct

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
    with only_demo():
        _run_demo(pin_root, keep, say)


def _run_demo(pin_root: Path, keep: bool, say: Say) -> None:
    examples = REPO / "examples"
    for res in examples.glob("*.yaml"):
        for line in res.read_text().splitlines():
            if line.strip().startswith("path: /opt/") and not Path(line.split(":", 1)[1].strip()).exists():
                raise BpfshareError(
                    f"{res.name} needs {line.split(':', 1)[1].strip()}: run `make demo` "
                    "(it builds bpf/ and installs the objects there)"
                )
    ensure_bpffs(pin_root)
    node = socket.gethostname()
    names = [("bpfmaps", "flow-counts"), ("bpfprograms", "count-ingress"), ("bpfprograms", "count-cgroup-egress")]
    with cluster(say) as kube, network(say):
        kube("apply", "-f", str(REPO / "crds"))
        kube(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/bpfmaps.bpfshare.io",
            "crd/bpfprograms.bpfshare.io",
        )
        created_node = kube("get", "node", node, check=False).returncode != 0
        if created_node:
            kube("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}))
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bpfshare-demo-agent-{os.getpid()}.log"
        try:
            with agent(kube, node, pin_root, log, say):
                say("$ kubectl apply -f examples/")
                say(kube("apply", "-f", str(examples)).stdout.rstrip())
                wait_ready(kube, node, names)
                make_traffic()
                say("\n$ kubectl get bpfmaps,bpfprogs")
                say(kube("get", "bpfmaps,bpfprogs").stdout.rstrip())
                pin = pin_root / "maps" / "flow-counts"
                values = read_counters(pin)
                say(f"\nshared map {pin}: " + ", ".join(f"{n} {v}" for n, v in zip(COUNTER_NAMES, values, strict=True)))
                if keep:
                    say("--keep: leaving everything running; press Ctrl-C to clean up")
                    with contextlib.suppress(KeyboardInterrupt):
                        while True:
                            time.sleep(3600)
                say("\ncleaning up: kubectl delete -f examples/")
                kube("delete", "-f", str(examples), "--timeout=60s")
        finally:
            if created_node:
                kube("delete", "node", node, "--ignore-not-found", check=False)
