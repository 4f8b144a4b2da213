"""The admission policy (deploy/base/admission.yaml) against the real kube-apiserver: an agent's
pod-bound token writes its own node's BpfMapStates and BpfProgramStates and nothing else.

Each test's agent pods are Pods of the agent's service account with spec.nodeName set (no kubelet runs
them; they stay Pending). A TokenRequest bound to such a Pod carries the node, and the API server
gives it to admission as the user's extra ``authentication.kubernetes.io/node-name``: exactly what the
kubelet's projected token gives the DaemonSet's pods. Requests are made with those tokens, as the agent
makes them (server-side apply of ``api.states.state_body``, a JSON patch removing its finalizer, DELETE).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from bpfshare.api.states import (
    AGENT_FIELD_MANAGER,
    AGENT_FINALIZER,
    MAP_STATE,
    PROGRAM_STATE,
    STATE_KINDS,
    StateKind,
    state_body,
    state_name,
)
from tests.deploy.conftest import CONTROLLER_USER, NODE_NAME_EXTRA, SA_USER, Deployed, find

pytestmark = pytest.mark.cluster
POLICY = "ValidatingAdmissionPolicy 'bpfshare-agent-own-node' with binding 'bpfshare-agent-own-node' denied request"


@dataclass
class Agents:
    """Two nodes, an agent pod on each and its pod-bound token; every object made here, for cleanup."""

    deployed: Deployed
    nodes: list[str] = field(default_factory=list)
    pods: list[str] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)  # node -> token
    states: list[tuple[str, str]] = field(default_factory=list)  # (plural, name)

    def kubectl(
        self, *args: str, token: str | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.deployed.cp.kubectl(*args, token=token, input=input, check=False)

    def add(self, node: str) -> None:
        self.nodes.append(node)
        self.deployed.cp.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
        )
        pod, token = self.deployed.pod_token(node)
        self.pods.append(pod)
        self.tokens[node] = token

    def body(self, kind: StateKind, resource: str, node: str, phase: str = "Pending") -> dict[str, Any]:
        doc = state_body(kind, resource, None, node, {"phase": phase, "message": "", "observedGeneration": 1})
        self.states.append((kind.plural, str(doc["metadata"]["name"])))  # type: ignore[index]
        return doc

    def apply(self, doc: dict[str, Any], token: str | None) -> subprocess.CompletedProcess[str]:
        """Server-side apply of the whole object, as the agent writes it (as admin when ``token`` is None)."""
        argv = ["apply", "--server-side", f"--field-manager={AGENT_FIELD_MANAGER}", "--force-conflicts", "-f", "-"]
        return self.kubectl(*argv, token=token, input=json.dumps(doc))

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        proc = self.kubectl("get", plural, name, "-o", "json", "--ignore-not-found")
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    def cleanup(self) -> None:
        for plural, name in self.states:
            self.kubectl("patch", plural, name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
            self.kubectl("delete", plural, name, "--ignore-not-found", "--wait=false")
        for pod in self.pods:
            self.deployed.delete_pod(pod)
        for node in self.nodes:
            self.kubectl("delete", "node", node, "--ignore-not-found")


@pytest.fixture
def agents(deployed: Deployed) -> Iterator[Agents]:
    a = Agents(deployed)
    suffix = uuid.uuid4().hex[:6]
    try:
        # One plain node name and one with dots, as cloud providers name nodes: the name rule takes
        # the state's first component as the resource and everything after it as the node.
        a.add(f"vap-a-{suffix}")
        a.add(f"ip-10-0-0-{int(suffix[:2], 16)}.vap-b-{suffix}.internal")
        yield a
    finally:
        a.cleanup()


def refused(proc: subprocess.CompletedProcess[str], message: str) -> bool:
    return proc.returncode != 0 and POLICY in proc.stderr and message in proc.stderr


def test_a_pod_bound_token_carries_its_node(agents: Agents) -> None:
    """What the policy reads: the node of the pod the token is bound to (no API server flag needed:
    ServiceAccountTokenPodNodeInfo is on by default since 1.30, GA in 1.32)."""
    node = agents.nodes[0]
    review = json.loads(agents.kubectl("auth", "whoami", "-o", "json", token=agents.tokens[node]).stdout)
    user = review["status"]["userInfo"]
    assert user["username"] == SA_USER
    assert user["extra"][NODE_NAME_EXTRA] == [node]
    assert user["extra"]["authentication.kubernetes.io/pod-name"] == [agents.pods[0]]
    unbound = json.loads(agents.kubectl("auth", "whoami", "-o", "json", token=agents.deployed.token()).stdout)
    assert NODE_NAME_EXTRA not in (unbound["status"]["userInfo"].get("extra") or {})


@pytest.mark.parametrize("kind", STATE_KINDS, ids=lambda k: k.kind)
def test_an_agent_creates_updates_and_deletes_its_own_nodes_states(agents: Agents, kind: StateKind) -> None:
    for node in agents.nodes:
        token = agents.tokens[node]
        doc = agents.body(kind, "vap-res", node)
        name = doc["metadata"]["name"]
        assert name == f"vap-res.{node}"
        proc = agents.apply(doc, token)
        assert proc.returncode == 0, proc.stderr
        proc = agents.apply(agents.body(kind, "vap-res", node, phase="Ready"), token)  # UPDATE
        assert proc.returncode == 0, proc.stderr
        assert (agents.get(kind.plural, name) or {})["status"]["phase"] == "Ready"
        # DELETE (the finalizer holds it), then the agent removes its finalizer (UPDATE): gone.
        proc = agents.kubectl("delete", kind.plural, name, "--wait=false", token=token)
        assert proc.returncode == 0, proc.stderr
        live = agents.get(kind.plural, name) or {}
        assert live["metadata"]["deletionTimestamp"] and live["metadata"]["finalizers"] == [AGENT_FINALIZER]
        patch = json.dumps([{"op": "remove", "path": "/metadata/finalizers"}])
        proc = agents.kubectl("patch", kind.plural, name, "--type=json", "-p", patch, token=token)
        assert proc.returncode == 0, proc.stderr
        assert agents.get(kind.plural, name) is None


def test_a_hashed_state_name_of_a_dotted_resource_is_the_nodes(agents: Agents) -> None:
    """Resource names with dots (or too long) become `<prefix>-<hash>.<node>`: still the node's."""
    node = agents.nodes[1]
    doc = agents.body(MAP_STATE, "team.flow-counts", node)
    assert doc["metadata"]["name"] == state_name("team.flow-counts", node) != f"team.flow-counts.{node}"
    proc = agents.apply(doc, agents.tokens[node])
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("kind", STATE_KINDS, ids=lambda k: k.kind)
def test_an_agent_cannot_write_another_nodes_state(agents: Agents, kind: StateKind) -> None:
    node, other = agents.nodes
    token = agents.tokens[node]
    # spec.node of the other node (and the name and label that go with it).
    proc = agents.apply(agents.body(kind, "vap-res", other), token)
    assert refused(proc, f"bpfshare-agent of node {node} may not write a state of node {other}"), proc.stderr
    # Its own spec.node under a name of the other node.
    doc = agents.body(kind, "vap-res", node)
    doc["metadata"]["name"] = f"vap-res.{other}"
    agents.states.append((kind.plural, doc["metadata"]["name"]))
    proc = agents.apply(doc, token)
    assert refused(proc, f"may not write vap-res.{other}: a state of this node is named <resource>.{node}"), proc.stderr
    # A name whose first component is not the resource's (another dot before the node's name).
    doc = agents.body(kind, "vap-res", node)
    doc["metadata"]["name"] = f"vap-res.x.{node}"
    agents.states.append((kind.plural, doc["metadata"]["name"]))
    assert refused(agents.apply(doc, token), f"may not write vap-res.x.{node}")
    # The other node's label on its own state (what `kubectl get -l bpfshare.io/node=` lists by).
    doc = agents.body(kind, "vap-label", node)
    doc["metadata"]["labels"]["bpfshare.io/node"] = other
    proc = agents.apply(doc, token)
    assert refused(proc, f"must label its states bpfshare.io/node={node}"), proc.stderr
    for plural, name in agents.states:
        assert agents.get(plural, name) is None


def test_an_agent_cannot_change_or_delete_another_nodes_state(agents: Agents) -> None:
    node, other = agents.nodes
    doc = agents.body(PROGRAM_STATE, "vap-res", other)
    assert agents.apply(doc, agents.tokens[other]).returncode == 0  # the other node's own agent writes it
    name = doc["metadata"]["name"]
    token = agents.tokens[node]
    message = f"bpfshare-agent of node {node} may not change or delete a state of node {other}"
    patch = json.dumps([{"op": "remove", "path": "/metadata/finalizers"}])
    assert refused(
        agents.kubectl("patch", PROGRAM_STATE.plural, name, "--type=json", "-p", patch, token=token), message
    )
    assert refused(agents.kubectl("delete", PROGRAM_STATE.plural, name, "--wait=false", token=token), message)
    live = agents.get(PROGRAM_STATE.plural, name) or {}
    assert live["metadata"]["finalizers"] == [AGENT_FINALIZER] and "deletionTimestamp" not in live["metadata"]


def test_a_token_not_bound_to_a_pod_writes_no_state(agents: Agents) -> None:
    """`kubectl create token` without a bound Pod: the right service account, no node: refused."""
    node = agents.nodes[0]
    proc = agents.apply(agents.body(MAP_STATE, "vap-unbound", node), agents.deployed.token())
    assert refused(proc, "only with a service account token bound to a pod on a node"), proc.stderr
    assert agents.get(MAP_STATE.plural, f"vap-unbound.{node}") is None


def test_the_policy_leaves_users_and_the_controller_alone(agents: Agents) -> None:
    """Only the agent's service account is matched: an admin writes any state, and the controller
    (impersonated) removes the agent's finalizer from, and deletes, a state of a vanished node."""
    node = agents.nodes[0]
    doc = agents.body(MAP_STATE, "vap-admin", f"gone-{node}")
    proc = agents.apply(doc, None)
    assert proc.returncode == 0, proc.stderr
    name = doc["metadata"]["name"]
    patch = json.dumps([{"op": "remove", "path": "/metadata/finalizers"}])
    proc = agents.kubectl("patch", MAP_STATE.plural, name, "--type=json", "-p", patch, f"--as={CONTROLLER_USER}")
    assert proc.returncode == 0, proc.stderr
    proc = agents.kubectl("delete", MAP_STATE.plural, name, f"--as={CONTROLLER_USER}")
    assert proc.returncode == 0, proc.stderr
    assert agents.get(MAP_STATE.plural, name) is None


def test_the_policy_names_the_agents_service_account(deployed: Deployed) -> None:
    """The match condition's username is the service account the DaemonSet runs as."""
    policy = find(deployed.objects, "ValidatingAdmissionPolicy")
    ds = find(deployed.objects, "DaemonSet", "bpfshare-agent")
    user = f"system:serviceaccount:{ds['metadata']['namespace']}:{ds['spec']['template']['spec']['serviceAccountName']}"
    (match,) = policy["spec"]["matchConditions"]
    assert match["expression"] == f"request.userInfo.username == '{user}'"
    binding = find(deployed.objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
