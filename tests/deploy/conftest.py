"""Fixtures for the deployment tests: deploy/ applied to the real kube-apiserver, and agents run the
way the DaemonSet runs them (its capabilities only, its service account's token, its ports).

``deployed`` (session) applies `kubectl kustomize deploy/` server-side once and deletes every object
it created by name at the end. bpfshare's CRDs in it are applied with ``--dry-run=server`` only: the
session's CRDs come from crds/ (the ``crds`` fixture) and other tests depend on them; test_manifests
checks that deploy/'s copies are identical. Other CRDs (kopf's ClusterKopfPeering, which the peering
object needs) are applied for real first.

Agents authenticate as the DaemonSet's pods do: with a token bound to a Pod on their node
(``Deployed.pod_token``), the only kind of token the admission policy lets write state objects.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from bpfshare.api.resources import GROUP
from bpfshare.controlplane.agents import Agent, token_kubeconfig
from bpfshare.controlplane.run import ControlPlane
from tests.fixtures.agents import Cluster
from tests.fixtures.kernel import require_root

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
NAMESPACE = "bpfshare-system"
SERVICE_ACCOUNT = "bpfshare-agent"
SA_USER = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
CONTROLLER_SERVICE_ACCOUNT = "bpfshare-controller"
CONTROLLER_USER = f"system:serviceaccount:{NAMESPACE}:{CONTROLLER_SERVICE_ACCOUNT}"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"


def kustomize(cp: ControlPlane, path: Path) -> list[dict[str, Any]]:
    out = cp.kubectl("kustomize", str(path)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def local_kubectl() -> str:
    """A kubectl for `kubectl kustomize` without a control plane: the one the control plane's build
    made, else the PATH's; skips the test without either."""
    from bpfshare.controlplane.build import bin_dir, is_built

    if is_built():
        return str(bin_dir() / "kubectl")
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("no kubectl (build the control plane: make install)")
    return found


def build(path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize PATH`: the objects `kubectl apply -k PATH` would send."""
    out = subprocess.run(
        [local_kubectl(), "kustomize", str(path)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name):
            return obj
    raise AssertionError(f"no {kind} {name or ''} in the built manifests")


def agent_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    ds = find(objects, "DaemonSet", "bpfshare-agent")
    return next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "agent")


def daemonset_caps(objects: list[dict[str, Any]]) -> list[str]:
    """The capabilities the DaemonSet grants the agent container (after dropping ALL)."""
    caps = agent_container(objects)["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    return list(caps["add"])


def agent_pod(name: str, node: str) -> dict[str, Any]:
    """A Pod of the agent's service account bound to ``node`` (spec.nodeName): what a token is bound
    to. No kubelet runs it; it stays Pending, which is all a TokenRequest needs."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"bpfshare.io/test": "token-binding"}},
        "spec": {
            "nodeName": node,
            "serviceAccountName": SERVICE_ACCOUNT,
            "automountServiceAccountToken": False,
            "containers": [{"name": "agent", "image": "bpfshare/agent:0.1.0"}],
        },
    }


@dataclass
class Deployed:
    cp: ControlPlane
    objects: list[dict[str, Any]]

    def token(self, pod: str | None = None) -> str:
        """A real service-account token (TokenRequest API) for the agent's service account; bound to
        ``pod`` (so carrying its node, as the kubelet's projected token does) when given."""
        argv = ["create", "token", SERVICE_ACCOUNT, "-n", NAMESPACE, "--duration=1h"]
        if pod is not None:
            argv += ["--bound-object-kind=Pod", f"--bound-object-name={pod}"]
        return self.cp.kubectl(*argv).stdout.strip()

    def create_pod(self, name: str, node: str) -> None:
        self.cp.kubectl("apply", "-f", "-", input=json.dumps(agent_pod(name, node)))

    def delete_pod(self, name: str) -> None:
        # Forced: without a kubelet a graceful deletion would wait for one forever.
        self.cp.kubectl(
            "delete", "pod", name, "-n", NAMESPACE, "--grace-period=0", "--force", "--ignore-not-found", check=False
        )

    def pod_token(self, node: str) -> tuple[str, str]:
        """(pod, token): a Pod of the agent's service account on ``node`` and a token bound to it."""
        pod = f"bpfshare-agent-{node}"[:63].rstrip("-.")
        self.create_pod(pod, node)
        return pod, self.token(pod)

    def kubeconfig(self, path: Path, token: str | None = None) -> Path:
        """A kubeconfig that authenticates as the agent's service account, as in the pod."""
        return token_kubeconfig(self.cp, token or self.token(), path)


@pytest.fixture(scope="session")
def deployed(crds: ControlPlane) -> Iterator[Deployed]:
    objects = kustomize(crds, DEPLOY)
    is_crd = lambda o: o["kind"] == "CustomResourceDefinition"  # noqa: E731
    crd_docs = [o for o in objects if is_crd(o) and o["spec"]["group"] == GROUP]
    other_crds = [o for o in objects if is_crd(o) and o["spec"]["group"] != GROUP]
    rest = [o for o in objects if not is_crd(o)]
    as_list = lambda docs: json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})  # noqa: E731
    try:
        if other_crds:
            crds.kubectl(
                "apply", "--server-side", "--field-manager=bpfshare-deploy-test", "-f", "-", input=as_list(other_crds)
            )
            names = [f"crd/{o['metadata']['name']}" for o in other_crds]
            crds.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
            time.sleep(1)  # discovery catches up with an Established CRD a moment later
        crds.kubectl("apply", "--server-side", "--field-manager=bpfshare-deploy-test", "-f", "-", input=as_list(rest))
        crds.kubectl(
            "apply",
            "--server-side",
            "--dry-run=server",
            "--force-conflicts",
            "--field-manager=bpfshare-deploy-test",
            "-f",
            "-",
            input=as_list(crd_docs),
        )
        yield Deployed(crds, objects)
    finally:
        for obj in reversed(rest + other_crds):
            meta = obj["metadata"]
            argv = ["delete", obj["kind"].lower(), meta["name"], "--ignore-not-found", "--wait=false"]
            if meta.get("namespace"):
                argv += ["-n", meta["namespace"]]
            crds.kubectl(*argv, check=False)


# -- agents run as the DaemonSet runs them -------------------------------------------------------------


def setpriv_argv(caps: list[str]) -> list[str]:
    """Run as root with exactly ``caps``: a root execve gets permitted = inheritable | bounding, so both
    are cut to the list (as a container runtime does with capabilities drop ALL / add ...)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    names = ",".join(f"+{c.lower()}" for c in caps)
    sets = f"-all,{names}" if caps else "-all"
    return [setpriv, f"--inh-caps={sets}", f"--bounding-set={sets}", "--"]


@dataclass
class DeployedAgent(Agent):
    """An agent with the DaemonSet's arguments, only ``caps``, and the service account's kubeconfig."""

    caps: list[str] = field(default_factory=list)

    def effective_caps(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
        raise AssertionError("no CapEff line")


@dataclass
class DeployCluster(Cluster):
    deployed: Deployed | None = None
    pods: list[str] = field(default_factory=list)

    def start_deployed_agent(self, node: str, caps: list[str] | None = None) -> DeployedAgent:
        """The agent of ``node`` with its pod's token: bound to a Pod on the node, as the kubelet's is."""
        assert self.deployed is not None
        caps = daemonset_caps(self.deployed.objects) if caps is None else caps
        pod, token = self.deployed.pod_token(node)
        self.pods.append(pod)
        agent = self.start_agent(  # Cluster.cleanup stops it and unmounts its bpffs
            node,
            kubeconfig=self.deployed.kubeconfig(self.tmp / f"kubeconfig-{node}", token),
            liveness=True,
            metrics=True,
            prefix=setpriv_argv(caps),
            agent_class=DeployedAgent,
            caps=caps,
        )
        assert isinstance(agent, DeployedAgent)
        return agent

    def cleanup(self) -> None:
        super().cleanup()  # the agents first: deleting a pod revokes its token
        assert self.deployed is not None
        for pod in self.pods:
            self.deployed.delete_pod(pod)


@pytest.fixture
def deploy_cluster(deployed: Deployed, tmp_path: Path) -> Iterator[DeployCluster]:
    require_root()
    c = DeployCluster(deployed.cp, tmp_path, deployed=deployed)
    try:
        yield c
    finally:
        c.cleanup()


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text format -> {(name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))
