"""Run ``bpfshare controller`` replicas as processes: the demo's, the tests' and the benchmarks'.

A ``Controller`` is one replica, a process like an agent's (``agents.Agent``: start, stop, kill,
alive, log_tail, problems, health, close), with its own argv. ``install_peering`` installs kopf's
peering CRD and the peering object the replicas share (``deploy/base/peering.yaml``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bpfshare.controlplane.agents import Agent
from bpfshare.controlplane.procs import free_ports
from bpfshare.controlplane.run import ControlPlane
from bpfshare.controlplane.wait import Kubectl, poll

PEERING_YAML = Path(__file__).resolve().parents[3] / "deploy" / "base" / "peering.yaml"
DEFAULT_PEERING = "bpfshare-controller"


@dataclass
class Controller(Agent):
    """One controller replica. ``node`` is the replica's name (in messages); it pins nothing, so
    ``pin_root`` is unused."""

    peering: str = DEFAULT_PEERING
    priority: int | None = None
    verbose: bool = False

    def argv(self) -> list[str]:
        argv = [*self.prefix, sys.executable, "-m", "bpfshare", "controller", "--peering", self.peering]
        if self.priority is not None:
            argv += ["--priority", str(self.priority)]
        if self.liveness_port is not None:
            argv.append(f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz")
        if self.verbose:
            argv.append("-v")
        return argv

    def is_active(self) -> bool:
        """The liveness probe says this replica is the active one (kopf refreshes probes every 10 s at most)."""
        health: dict[str, Any] = self.health()
        return bool(health.get("active"))


def start_controller(
    cp: ControlPlane | None,
    log: Path,
    *,
    kubeconfig: Path | None = None,
    peering: str = DEFAULT_PEERING,
    env: Mapping[str, str] | None = None,
    name: str = "controller",
    priority: int | None = None,
    liveness: bool = True,
    verbose: bool = False,
) -> Controller:
    """Start a controller replica (the admin's kubeconfig of ``cp`` unless one is given; without ``cp``,
    the ``kubeconfig`` given, e.g. the current one's cluster), serving liveness on a free loopback port.
    The caller ``close()``s it."""
    if kubeconfig is None:
        if cp is None:
            raise ValueError("start_controller needs a control plane or a kubeconfig")
        kubeconfig = cp.kubeconfig
    (port,) = free_ports(1)
    controller = Controller(
        name,
        Path("/nonexistent"),
        kubeconfig,
        log,
        liveness_port=port if liveness else None,
        env=dict(env or {}),
        peering=peering,
        priority=priority,
        verbose=verbose,
    )
    try:
        controller.start()
    except BaseException:
        controller.close()
        raise
    return controller


def peering_documents(path: Path = PEERING_YAML) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def install_peering(kubectl: Kubectl, path: Path = PEERING_YAML, timeout: float = 60.0) -> None:
    """Apply kopf's peering CRD and wait until it is served. The peering object itself is the
    controller's to create when it starts (``controller.operator.wait_for_peering``); anything else
    the file holds is applied after the CRD is established (one ``apply`` of both would fail)."""
    import json

    docs = peering_documents(path)
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    rest = [d for d in docs if d.get("kind") != "CustomResourceDefinition"]
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": crds}))
    for crd in crds:
        name = crd["metadata"]["name"]
        kubectl("wait", "--for=condition=Established", f"crd/{name}", f"--timeout={int(timeout)}s")
    if not rest:
        return

    def applied() -> bool:
        items = json.dumps({"apiVersion": "v1", "kind": "List", "items": rest})
        return kubectl("apply", "-f", "-", input=items, check=False).returncode == 0

    poll(applied, "the objects of " + str(path), timeout, interval=0.5)
