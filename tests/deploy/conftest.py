"""Fixtures for the deployment tests: deploy/ applied to the real kube-apiserver, and agents run the
way the DaemonSet runs them (its capabilities only, its service account's token, its ports).

``deployed`` (session) applies `kubectl kustomize deploy/` server-side once and deletes every object
it created by name at the end. The CRDs in it are applied with ``--dry-run=server`` only: the session's
CRDs come from crds/ (the ``crds`` fixture) and other tests depend on them; test_manifests checks that
deploy/'s copies are identical.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from bpfshare.controlplane.agents import Agent, token_kubeconfig
from bpfshare.controlplane.run import ControlPlane
from tests.fixtures.agents import Cluster
from tests.fixtures.kernel import require_root

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
NAMESPACE = "bpfshare-system"
SERVICE_ACCOUNT = "bpfshare-agent"
SA_USER = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"


def kustomize(cp: ControlPlane, path: Path) -> list[dict[str, Any]]:
    out = cp.kubectl("kustomize", str(path)).stdout
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


@dataclass
class Deployed:
    cp: ControlPlane
    objects: list[dict[str, Any]]

    def token(self) -> str:
        """A real service-account token (TokenRequest API) for the agent's service account."""
        return self.cp.kubectl("create", "token", SERVICE_ACCOUNT, "-n", NAMESPACE, "--duration=1h").stdout.strip()

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig that authenticates as the agent's service account, as in the pod."""
        return token_kubeconfig(self.cp, self.token(), path)


@pytest.fixture(scope="session")
def deployed(crds: ControlPlane) -> Iterator[Deployed]:
    objects = kustomize(crds, DEPLOY)
    crd_docs = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    rest = [o for o in objects if o["kind"] != "CustomResourceDefinition"]
    as_list = lambda docs: json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})  # noqa: E731
    try:
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
        for obj in reversed(rest):
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

    def start_deployed_agent(self, node: str, caps: list[str] | None = None) -> DeployedAgent:
        assert self.deployed is not None
        caps = daemonset_caps(self.deployed.objects) if caps is None else caps
        agent = self.start_agent(  # Cluster.cleanup stops it and unmounts its bpffs
            node,
            kubeconfig=self.deployed.kubeconfig(self.tmp / f"kubeconfig-{node}"),
            liveness=True,
            metrics=True,
            prefix=setpriv_argv(caps),
            agent_class=DeployedAgent,
            caps=caps,
        )
        assert isinstance(agent, DeployedAgent)
        return agent


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
