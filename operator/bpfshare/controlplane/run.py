"""Start and stop a local etcd + kube-apiserver, envtest-style.

Everything lives in one state directory: ``state.json`` (pids, ports, tokens), the logs, etcd's data,
the certificates and the kubeconfig. The directory carries a marker file, and ``stop`` removes only a
directory with that marker, so a mistyped ``BPFSHARE_CLUSTER_DIR`` cannot delete anything else.

Without ``node`` there is no kube-controller-manager: namespaces never finish deleting and nothing
garbage-collects owned objects, but finalizers, watches, RBAC, CRDs, CEL validation and server-side
apply all work. With ``node`` (``cluster up --node``), node.py adds a real node: containerd, CNI, a
kubelet, kube-controller-manager and kube-scheduler.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpfshare.controlplane import ControlPlaneError, pki
from bpfshare.controlplane.procs import ProcessRecord, free_ports, is_ours, launch, wait_ready
from bpfshare.controlplane.procs import stop as stop_process

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

MARKER = ".bpfshare-cluster"
STATE_FILE = "state.json"
SERVICE_CIDR = "10.0.0.0/24"
DEFAULT_TIMEOUT = 120.0


@dataclass
class ControlPlane:
    """A running (or recorded) control plane, as ``state.json`` describes it."""

    state_dir: Path
    bin_dir: Path
    server: str = ""
    etcd_url: str = ""
    token: str = ""
    unprivileged_token: str = ""
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    node: str = ""  # the Node's name with ``--node`` (containerd, kubelet, ...: node.py); empty without
    node_token: str = ""  # the kubelet's token (system:node:<node>)

    @property
    def containerd_address(self) -> Path | None:
        from bpfshare.controlplane.node import containerd_socket

        return containerd_socket(self.state_dir) if self.node else None

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "ca.crt"

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    def log(self, name: str) -> Path:
        return self.state_dir / f"{name}.log"

    def env(self) -> dict[str, str]:
        """Environment for tools that should talk to this control plane (KUBECONFIG, PATH)."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60.0, token: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane (as admin, or with ``token``); text output captured."""
        argv = [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}"]
        if token is not None:
            argv.append(f"--token={token}")
        result = subprocess.run(
            [*argv, *args], input=input, capture_output=True, text=True, timeout=timeout, env=self.env()
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def api_client(self, token: str | None = None) -> ApiClient:
        """A ``kubernetes`` Python client for this control plane (imported lazily)."""
        from kubernetes import client

        config = client.Configuration()
        config.host = self.server
        config.ssl_ca_cert = str(self.ca_file)
        config.api_key = {"authorization": f"Bearer {token if token is not None else self.token}"}
        return client.ApiClient(config)

    def to_json(self) -> dict[str, Any]:
        return {
            "binDir": str(self.bin_dir),
            "server": self.server,
            "etcdUrl": self.etcd_url,
            "token": self.token,
            "unprivilegedToken": self.unprivileged_token,
            "processes": {name: rec.to_json() for name, rec in self.processes.items()},
            "node": self.node,
            "nodeToken": self.node_token,
        }

    @classmethod
    def from_json(cls, state_dir: Path, data: dict[str, Any]) -> ControlPlane:
        return cls(
            state_dir=state_dir,
            bin_dir=Path(data["binDir"]),
            server=data["server"],
            etcd_url=data["etcdUrl"],
            token=data["token"],
            unprivileged_token=data["unprivilegedToken"],
            processes={n: ProcessRecord.from_json(r) for n, r in data["processes"].items()},
            node=data.get("node", ""),
            node_token=data.get("nodeToken", ""),
        )

    def save(self) -> None:
        pki.write_private(self.state_dir / STATE_FILE, json.dumps(self.to_json(), indent=2) + "\n")


def load(state_dir: Path) -> ControlPlane | None:
    """The control plane recorded in ``state_dir``, running or not; None if there is none."""
    try:
        data = json.loads((state_dir / STATE_FILE).read_text())
        return ControlPlane.from_json(state_dir, data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ControlPlaneError(f"unreadable control-plane state {state_dir / STATE_FILE}: {exc}") from exc


def is_healthy(cp: ControlPlane) -> bool:
    from bpfshare.controlplane.node import NODE_PROCESSES

    names = ("etcd", "kube-apiserver", *(NODE_PROCESSES if cp.node else ()))
    if not all(n in cp.processes and is_ours(cp.processes[n]) for n in names):
        return False
    return cp.kubeconfig.exists() and _readyz(cp, verify=True, timeout=5.0) == "ok"


def start(
    state_dir: Path,
    bin_dir: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    die_with_parent: bool = False,
    node: str | None = None,
) -> ControlPlane:
    """Start etcd and kube-apiserver (or return the healthy instance already recorded in ``state_dir``).

    ``node``: also a real node of that name (node.py): containerd, CNI, kubelet, kube-controller-manager
    and kube-scheduler. A recorded instance with or without a node is kept only if it matches.

    ``die_with_parent`` makes both processes receive SIGKILL when the calling thread exits (used by the
    test fixture, so that a killed pytest does not leave them behind).
    """
    with _state_lock(state_dir):
        existing = load(state_dir)
        if existing is not None:
            if is_healthy(existing) and existing.node == (node or ""):
                return existing
            _stop_processes(existing)
        if node:
            from bpfshare.controlplane.node import check_no_other_node, check_socket_paths, require_tools, stop_node

            require_tools()
            check_socket_paths(state_dir)
            check_no_other_node(state_dir)
            stop_node(existing, state_dir)  # what a crashed node left
        _prepare(state_dir)
        cp = ControlPlane(state_dir=state_dir, bin_dir=bin_dir, node=node or "")
        try:
            _start(cp, timeout, die_with_parent)
        except BaseException:
            _stop_processes(cp)
            raise
        return cp


def stop(state_dir: Path, *, keep_logs: bool = False) -> bool:
    """Stop the recorded processes and remove the state directory. Returns whether anything was there."""
    if not state_dir.exists():
        return False
    if not (state_dir / MARKER).exists():
        raise ControlPlaneError(f"{state_dir} is not a bpfshare control-plane directory (no {MARKER}); not touching it")
    with _state_lock(state_dir):
        cp = load(state_dir)
        if cp is not None:
            _stop_processes(cp)
        elif (state_dir / "node").exists():  # a node whose state.json was lost
            from bpfshare.controlplane.node import stop_node

            stop_node(None, state_dir)
        if keep_logs:
            for entry in state_dir.iterdir():
                if entry.suffix != ".log":
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        else:
            shutil.rmtree(state_dir)
    return True


def stop_apiserver(cp: ControlPlane) -> None:
    """Stop kube-apiserver alone (etcd keeps the data): an API server outage, for fault tests."""
    with _state_lock(cp.state_dir):
        if "kube-apiserver" in cp.processes:
            stop_process(cp.processes.pop("kube-apiserver"))
            cp.save()


def start_apiserver(cp: ControlPlane, *, timeout: float = DEFAULT_TIMEOUT, die_with_parent: bool = False) -> None:
    """Start kube-apiserver again on the same port, certificates and tokens (clients need no change)."""
    with _state_lock(cp.state_dir):
        port = int(cp.server.rsplit(":", 1)[1])
        deadline = time.monotonic() + timeout
        cp.processes["kube-apiserver"] = launch(
            "kube-apiserver", _apiserver_argv(cp, port), cp.log("kube-apiserver"), die_with_parent=die_with_parent
        )
        cp.save()
        _wait(cp, "kube-apiserver", deadline, lambda: _readyz(cp, verify=True, timeout=2.0) == "ok")


def _stop_processes(cp: ControlPlane) -> None:
    if cp.node or (cp.state_dir / "node").exists():
        from bpfshare.controlplane.node import stop_node

        stop_node(cp, cp.state_dir)  # the pods and the node first, while the API server still answers
    for name in ("kube-apiserver", "etcd"):  # the apiserver first: it needs etcd to shut down cleanly
        if name in cp.processes:
            stop_process(cp.processes[name])


@contextmanager
def _state_lock(state_dir: Path) -> Iterator[None]:
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(state_dir.parent / f".{state_dir.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare(state_dir: Path) -> None:
    """Make ``state_dir`` an empty directory with our marker (clearing a previous instance's leftovers)."""
    if state_dir.exists():
        if (state_dir / MARKER).exists():
            shutil.rmtree(state_dir)
        elif any(state_dir.iterdir()):
            raise ControlPlaneError(
                f"{state_dir} exists, is not empty and is not a bpfshare control-plane "
                "directory; choose another BPFSHARE_CLUSTER_DIR"
            )
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (state_dir / MARKER).write_text("created by bpfshare cluster up; removed by bpfshare cluster down\n")


def _start(cp: ControlPlane, timeout: float, die_with_parent: bool) -> None:
    state = cp.state_dir
    etcd_port, peer_port, api_port = free_ports(3)
    cp.etcd_url = f"http://127.0.0.1:{etcd_port}"
    cp.server = f"https://{_api_address(cp)}:{api_port}"
    cp.token, cp.unprivileged_token = pki.new_token(), pki.new_token()
    (state / "pki").mkdir(mode=0o700)
    pki.write_token_file(state / "pki" / "tokens.csv", cp.token, cp.unprivileged_token)
    pki.write_service_account_key(state / "pki" / "service-account.key")
    if cp.node:
        from bpfshare.controlplane import node_host

        cp.node_token = pki.new_token()
        with open(state / "pki" / "tokens.csv", "a") as tokens:
            tokens.write(pki.node_token_line(cp.node_token, cp.node))
        pki.write_client_ca_and_cert(state / "pki", "kube-apiserver-kubelet-client", "system:masters")
        node_host.setup_network(api_port)  # the node's address, before kube-apiserver binds it

    deadline = time.monotonic() + timeout
    cp.processes["etcd"] = launch("etcd", _etcd_argv(cp, peer_port), cp.log("etcd"), die_with_parent=die_with_parent)
    cp.save()  # from here on, `stop` can clean up even if we are interrupted
    _wait(cp, "etcd", deadline, lambda: _etcd_healthy(cp))

    cp.processes["kube-apiserver"] = launch(
        "kube-apiserver", _apiserver_argv(cp, api_port), cp.log("kube-apiserver"), die_with_parent=die_with_parent
    )
    cp.save()
    _wait(cp, "kube-apiserver", deadline, lambda: _readyz(cp, verify=False, timeout=2.0) == "ok")

    cp.ca_file.write_text(pki.serving_ca(state / "pki" / "apiserver.crt"))
    pki.write_private(cp.kubeconfig, pki.kubeconfig(cp.server, cp.ca_file, cp.token))
    if _readyz(cp, verify=True, timeout=5.0) != "ok":
        raise ControlPlaneError(f"kube-apiserver is up but its certificate does not verify with {cp.ca_file}")
    if cp.node:
        from bpfshare.controlplane.node import start_node

        start_node(cp, deadline, die_with_parent=die_with_parent)


def _etcd_argv(cp: ControlPlane, peer_port: int) -> list[str]:
    peer = f"http://127.0.0.1:{peer_port}"
    return [
        str(cp.bin_dir / "etcd"),
        "--name=default",
        f"--data-dir={cp.state_dir / 'etcd'}",
        f"--listen-client-urls={cp.etcd_url}",
        f"--advertise-client-urls={cp.etcd_url}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=default={peer}",
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def _api_address(cp: ControlPlane) -> str:
    """127.0.0.1, or with a node the node's address, which pods on the bridge reach (node_host.py)."""
    if cp.node:
        from bpfshare.controlplane.node_host import NODE_IP

        return NODE_IP
    return "127.0.0.1"


def _apiserver_argv(cp: ControlPlane, port: int) -> list[str]:
    pki_dir = cp.state_dir / "pki"
    sa_key = pki_dir / "service-account.key"
    address = _api_address(cp)
    if cp.node:
        # Pods: service-account tokens mounted into them (the ServiceAccount admission plugin), the
        # Node authorizer and NodeRestriction for the kubelet, and a client certificate for the
        # kubelet's API (logs, exec), which trusts its CA.
        admission = [
            "--enable-admission-plugins=NodeRestriction",
            "--authorization-mode=Node,RBAC",
            f"--kubelet-client-certificate={pki_dir / 'kubelet-client.crt'}",
            f"--kubelet-client-key={pki_dir / 'kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
        ]
    else:
        admission = ["--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount"]
    return [
        str(cp.bin_dir / "kube-apiserver"),
        f"--etcd-servers={cp.etcd_url}",
        f"--bind-address={address}",
        f"--advertise-address={address}",  # there may be no default route to pick an address from
        f"--secure-port={port}",
        f"--cert-dir={pki_dir}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--service-account-issuer={cp.server}",
        f"--service-account-key-file={sa_key}",
        f"--service-account-signing-key-file={sa_key}",
        f"--token-auth-file={pki_dir / 'tokens.csv'}",
        *admission,
        "--allow-privileged=true",
        "--profiling=false",
    ]


def _wait(cp: ControlPlane, name: str, deadline: float, ready: Callable[[], bool]) -> None:
    wait_ready(cp.processes, cp.log, name, deadline, ready)


def _etcd_healthy(cp: ControlPlane) -> bool:
    try:
        with urllib.request.urlopen(f"{cp.etcd_url}/health", timeout=2.0) as resp:
            return bool(json.load(resp).get("health") == "true")
    except (OSError, ValueError):
        return False


def _readyz(cp: ControlPlane, *, verify: bool, timeout: float) -> str:
    """The body of GET /readyz (``ok`` when ready), or the error as text."""
    if verify:
        context = ssl.create_default_context(cafile=str(cp.ca_file))
    else:  # before the CA exists (kube-apiserver generates it at startup)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(f"{cp.server}/readyz", headers={"Authorization": f"Bearer {cp.token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            body: bytes = resp.read()
        return body.decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (OSError, ssl.SSLError) as exc:
        return str(exc)
