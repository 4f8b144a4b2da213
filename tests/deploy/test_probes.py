"""The controller's probes as its Deployment asks them, against the real kube-apiserver: two replicas
with --readiness (on a free loopback port): each is alive (/healthz) and ready
(/readyz 200 ``ok``) once its watches have listed, the paused standby as much as the active one, so a
rolling update or a drain waits for a replica that could take over. (The agent's readiness:
test_deployed_agent.py; before the listings, with the reasons: tests/logic.)"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bpfshare.controlplane.controllers import Controller, install_peering
from bpfshare.controlplane.procs import free_ports
from bpfshare.controlplane.run import ControlPlane
from bpfshare.controlplane.wait import poll
from tests.fixtures.http import http_get

pytestmark = pytest.mark.cluster


def readyz(port: int) -> tuple[int, str]:
    """(status, body) of the readinessProbe's request; (0, why) while nothing answers."""
    return http_get(f"http://127.0.0.1:{port}/readyz")


@dataclass
class ReadyController(Controller):
    """A replica with --readiness, as the Deployment gives it (on loopback and a port of its own here:
    test_manifests.py ties the manifest's argument to the probe's port)."""

    readiness_port: int = 0

    def argv(self) -> list[str]:
        return [*super().argv(), f"--readiness=127.0.0.1:{self.readiness_port}"]


@pytest.fixture
def replicas(crds: ControlPlane, tmp_path: Path) -> Iterator[list[ReadyController]]:
    install_peering(crds.kubectl)
    peering = f"bpfshare-{uuid.uuid4().hex[:10]}"
    body = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": peering}}
    crds.kubectl("apply", "-f", "-", input=json.dumps(body))
    started: list[ReadyController] = []
    try:
        for i in range(2):
            liveness, readiness = free_ports(2)
            replica = ReadyController(
                f"controller-{i}",
                Path("/nonexistent"),
                crds.kubeconfig,
                tmp_path / f"controller-{i}.log",
                liveness_port=liveness,
                peering=peering,
                priority=100 + i,
                readiness_port=readiness,
            )
            started.append(replica)
            replica.start()
        yield started
    finally:
        for replica in started:
            replica.close()
        crds.kubectl("delete", "clusterkopfpeering", peering, "--ignore-not-found", "--wait=false", check=False)


def test_both_replicas_are_alive_and_ready_once_their_watches_listed(replicas: list[ReadyController]) -> None:
    for replica in replicas:
        poll(
            lambda r=replica: readyz(r.readiness_port) == (200, "ok") or None,  # type: ignore[misc]
            f"{replica.node} /readyz to answer ok",
            timeout=60,
        )
        replica.wait_serving()  # alive: kopf's /healthz
    # One active, one paused (peering; kopf refreshes the probe every 10 s at most), both ready: the
    # standby's view is as current.
    poll(lambda: sorted(r.is_active() for r in replicas) == [False, True] or None, "one active replica", timeout=60)
    assert [readyz(r.readiness_port) for r in replicas] == [(200, "ok"), (200, "ok")]
