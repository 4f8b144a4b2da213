"""bpfshare installed on the real node as users install it: the image from the Dockerfile, then
``kubectl apply -k deploy/``, the DaemonSet and the controller Deployment rolled out as pods.

The demo's ``--node`` mode and the real-node tests share this, so both exercise the manifests users
apply. One thing differs on the test node, as on any node whose runtime listens elsewhere than
containerd's usual /run/containerd/containerd.sock: its socket is in the node's state directory (the
machine may run a containerd of its own there), so an overlay patches the DaemonSet's runtime-socket
hostPath, as docs/install.md tells users of CRI-O or k3s to.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

from bpfshare.controlplane import ControlPlaneError

NAMESPACE = "bpfshare-system"
AGENT_DAEMONSET = "bpfshare-agent"
CONTROLLER_DEPLOYMENT = "bpfshare-controller"
ROLLOUT_TIMEOUT = 180.0


class Kubectl(Protocol):
    def __call__(self, *args: str, check: bool = True, input: str | None = None) -> Any: ...


def repo_root() -> Path:
    """The source checkout this package runs from (the Dockerfile and deploy/ are not in the wheel)."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "Dockerfile").is_file() or not (root / "deploy" / "kustomization.yaml").is_file():
        raise ControlPlaneError(
            f"the real node's image and manifests come from a source checkout (Dockerfile, deploy/), "
            f"and {root} is not one: run this from the bpfshare repository (make install)"
        )
    return root


def install_image(containerd_address: Path | str) -> str:
    """Build the agent image from the Dockerfile and import it into the node's containerd."""
    from bpfshare.controlplane.image import build_image, import_image

    archive = build_image(repo_root())
    import_image(archive, str(containerd_address))
    return str(archive)


BASE_RUNTIME_SOCKET = Path("/run/containerd/containerd.sock")  # deploy/base/daemonset.yaml's hostPath


def write_runtime_socket_overlay(overlay: Path, deploy_dir: Path, runtime_socket: Path) -> None:
    """A kustomization in ``overlay`` of ``deploy_dir`` whose DaemonSet mounts the runtime socket from
    ``runtime_socket`` (the mount inside the container, where the agent looks, stays)."""
    patch = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": AGENT_DAEMONSET, "namespace": NAMESPACE},
        "spec": {"template": {"spec": {"volumes": [
            {"name": "runtime-socket", "hostPath": {"path": str(runtime_socket), "type": "Socket"}},
        ]}}},
    }  # fmt: skip
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        # kustomize refuses an absolute path to a base: relative, from the overlay.
        "resources": [os.path.relpath(deploy_dir.resolve(), overlay.resolve())],
        "patches": [{"patch": json.dumps(patch)}],
    }
    (overlay / "kustomization.yaml").write_text(json.dumps(kustomization, indent=2))


def deploy(kubectl: Kubectl, root: Path | None = None, runtime_socket: Path | None = None) -> None:
    """``kubectl apply --server-side -k deploy/`` (server-side: the CRDs are too big for the
    last-applied annotation), then wait for both rollouts. A ``runtime_socket`` elsewhere than the
    base's is patched in by an overlay."""
    deploy_dir = (root or repo_root()) / "deploy"
    apply = ("apply", "--server-side", "--force-conflicts", "-k")
    if runtime_socket is None or runtime_socket == BASE_RUNTIME_SOCKET:
        kubectl(*apply, str(deploy_dir))
    else:
        with tempfile.TemporaryDirectory(prefix="bpfshare-overlay-") as overlay:
            write_runtime_socket_overlay(Path(overlay), deploy_dir, runtime_socket)
            kubectl(*apply, overlay)
    wait_rolled_out(kubectl)


def wait_rolled_out(kubectl: Kubectl, timeout: float = ROLLOUT_TIMEOUT) -> None:
    for kind, name in (("daemonset", AGENT_DAEMONSET), ("deployment", CONTROLLER_DEPLOYMENT)):
        result = kubectl(
            "-n", NAMESPACE, "rollout", "status", f"{kind}/{name}", f"--timeout={int(timeout)}s", check=False
        )
        if result.returncode != 0:
            pods = kubectl("-n", NAMESPACE, "get", "pods", "-o", "wide", check=False).stdout
            raise ControlPlaneError(f"{kind}/{name} did not roll out: {result.stderr.strip()}\n{pods}")


def undeploy(kubectl: Kubectl, root: Path | None = None) -> None:
    """``kubectl delete -k deploy/``, waiting for the pods to go (the agent's pins stay, as on a node)."""
    deploy_dir = (root or repo_root()) / "deploy"
    kubectl("delete", "-k", str(deploy_dir), "--ignore-not-found", "--wait=true", "--timeout=120s", check=False)


def pods(kubectl: Kubectl, selector: str) -> list[dict[str, Any]]:
    out = kubectl("-n", NAMESPACE, "get", "pods", "-l", selector, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def agent_pod(kubectl: Kubectl, timeout: float = ROLLOUT_TIMEOUT) -> dict[str, Any]:
    """The one running, ready agent pod (the node runs one)."""
    deadline = time.monotonic() + timeout
    while True:
        ready = [
            p
            for p in pods(kubectl, f"app.kubernetes.io/name={AGENT_DAEMONSET}")
            if p["metadata"].get("deletionTimestamp") is None
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
        ]
        if len(ready) == 1:
            return ready[0]
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"no single ready agent pod after {timeout:.0f}s ({len(ready)} ready)")
        time.sleep(0.5)
