"""The agent's and the controller's RBAC: allowed exactly what they use, refused the rest, checked by
`kubectl auth can-i` with impersonation and by real requests made with the service accounts' own tokens."""

from __future__ import annotations

import json
import uuid

import pytest

from bpfshare.api.states import AGENT_FIELD_MANAGER, CONTROLLER_FIELD_MANAGER, MAP_STATE, state_body
from tests.deploy.conftest import CONTROLLER_SERVICE_ACCOUNT, CONTROLLER_USER, NAMESPACE, SA_USER, Deployed

pytestmark = pytest.mark.cluster

# (verb, resource, namespace or None): every request the agent and kopf make.
AGENT_ALLOWED = [
    ("list", "bpfmaps.bpfshare.io", None),
    ("watch", "bpfmaps.bpfshare.io", None),
    ("get", "bpfmaps.bpfshare.io", None),
    ("list", "bpfprograms.bpfshare.io", None),
    ("watch", "bpfprograms.bpfshare.io", None),
    ("get", "bpfprograms.bpfshare.io", None),
    *(
        (verb, f"{plural}.bpfshare.io", None)
        for plural in ("bpfmapstates", "bpfprogramstates")
        for verb in ("get", "list", "create", "patch", "delete")
    ),
    ("get", "nodes", None),
    ("list", "nodes", None),
    ("watch", "nodes", None),
    # attach.*.pods: the pods of its node (a field selector), listed and watched.
    ("list", "pods", None),
    ("watch", "pods", None),
    ("get", "configmaps", "kube-system"),
    ("create", "events", "default"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", None),
]

# What either service account must never do.
COMMON_DENIED = [
    # Secrets, anywhere, in any way.
    ("get", "secrets", "default"),
    ("list", "secrets", None),
    ("watch", "secrets", None),
    ("get", "secrets", "bpfshare-system"),
    # Writes to pods and what leads into them.
    ("create", "pods", "bpfshare-system"),
    ("delete", "pods", "default"),
    ("patch", "pods", "default"),
    ("update", "pods/status", "default"),
    ("create", "pods/exec", "default"),
    ("create", "pods/attach", "default"),
    ("get", "pods/log", "default"),
    ("create", "pods/eviction", "default"),
    ("get", "nodes/proxy", None),
    ("create", "serviceaccounts/token", "default"),
    # RBAC objects.
    ("get", "roles.rbac.authorization.k8s.io", "default"),
    ("list", "clusterroles.rbac.authorization.k8s.io", None),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
    ("create", "rolebindings.rbac.authorization.k8s.io", "default"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", None),
    ("bind", "clusterroles.rbac.authorization.k8s.io", None),
    # The admission policy that limits the agents.
    ("delete", "validatingadmissionpolicies.admissionregistration.k8s.io", None),
    ("patch", "validatingadmissionpolicybindings.admissionregistration.k8s.io", None),
    # The custom resources: users create, change and delete them.
    ("create", "bpfmaps.bpfshare.io", None),
    ("delete", "bpfmaps.bpfshare.io", None),
    ("create", "bpfprograms.bpfshare.io", None),
    ("delete", "bpfprograms.bpfshare.io", None),
    ("deletecollection", "bpfprograms.bpfshare.io", None),
    ("update", "bpfmaps.bpfshare.io", None),
    ("update", "bpfprograms.bpfshare.io/status", None),
    # Nothing else they do not use.
    ("patch", "nodes", None),
    ("delete", "nodes", None),
    ("update", "configmaps", "default"),
    ("create", "configmaps", "default"),
    ("list", "configmaps", None),
    ("watch", "configmaps", None),
    ("create", "events", "kube-system"),
    ("patch", "events", "default"),
    ("delete", "events", "default"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("get", "leases.coordination.k8s.io", "default"),
    ("deletecollection", "bpfmapstates.bpfshare.io", None),
    ("update", "bpfprogramstates.bpfshare.io", None),
]

AGENT_DENIED = [
    *COMMON_DENIED,
    # Pods are listed and watched, never fetched one by one (the rule grants only what is used).
    ("get", "pods", "default"),
    # No writes to the shared objects at all: no finalizer, no status (the controller owns both).
    ("patch", "bpfmaps.bpfshare.io", None),
    ("patch", "bpfprograms.bpfshare.io", None),
    ("patch", "bpfmaps.bpfshare.io/status", None),
    ("patch", "bpfprograms.bpfshare.io/status", None),
    # No watch of states: an agent lists its own once; others' changes are not its business.
    ("watch", "bpfmapstates.bpfshare.io", None),
    ("watch", "bpfprogramstates.bpfshare.io", None),
    # Only the ConfigMaps programs name, by GET.
    ("list", "configmaps", "kube-system"),
    # The controller's peering.
    ("get", "clusterkopfpeerings.kopf.dev", None),
    ("patch", "clusterkopfpeerings.kopf.dev", None),
]

CONTROLLER_ALLOWED = [
    *(
        (verb, f"{plural}.bpfshare.io", None)
        for plural in ("bpfmaps", "bpfprograms")
        for verb in ("get", "list", "watch", "patch")
    ),
    ("patch", "bpfmaps.bpfshare.io/status", None),
    ("patch", "bpfprograms.bpfshare.io/status", None),
    *(
        (verb, f"{plural}.bpfshare.io", None)
        for plural in ("bpfmapstates", "bpfprogramstates")
        for verb in ("get", "list", "watch", "patch", "delete")
    ),
    ("get", "nodes", None),
    ("list", "nodes", None),
    ("watch", "nodes", None),
    *((verb, "clusterkopfpeerings.kopf.dev", None) for verb in ("get", "list", "watch", "patch", "create")),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", None),
]

CONTROLLER_DENIED = [
    *COMMON_DENIED,
    # Pods are the agents' business (attach.*.pods), not the controller's.
    ("get", "pods", "default"),
    ("list", "pods", None),
    ("watch", "pods", None),
    # Only agents report: the controller creates no state.
    ("create", "bpfmapstates.bpfshare.io", None),
    ("create", "bpfprogramstates.bpfshare.io", None),
    # It reads no bytecode and posts no events.
    ("get", "configmaps", "kube-system"),
    ("create", "events", "default"),
    # The controller creates its peering object and kopf patches it; nothing deletes it.
    ("delete", "clusterkopfpeerings.kopf.dev", None),
    ("get", "kopfpeerings.kopf.dev", "bpfshare-system"),
]

CASES = [
    *((SA_USER, True, *case) for case in AGENT_ALLOWED),
    *((SA_USER, False, *case) for case in AGENT_DENIED),
    *((CONTROLLER_USER, True, *case) for case in CONTROLLER_ALLOWED),
    *((CONTROLLER_USER, False, *case) for case in CONTROLLER_DENIED),
]


def can_i(deployed: Deployed, user: str, verb: str, resource: str, namespace: str | None) -> bool:
    kind, _, sub = resource.partition("/")
    argv = ["auth", "can-i", verb, kind, f"--as={user}"]
    if sub:
        argv.append(f"--subresource={sub}")
    argv += ["-n", namespace] if namespace else ["--all-namespaces"]
    proc = deployed.cp.kubectl(*argv, check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stderr
    return answer == "yes"


def _id(case: tuple[str, bool, str, str, str | None]) -> str:
    user, allowed, verb, resource, namespace = case
    who = user.rsplit(":", 1)[1].removeprefix("bpfshare-")
    return f"{who}-{'may' if allowed else 'may-not'}-{verb}-{resource}" + (f"-in-{namespace}" if namespace else "")


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_can_i(deployed: Deployed, case: tuple[str, bool, str, str, str | None]) -> None:
    user, allowed, verb, resource, namespace = case
    answer = can_i(deployed, user, verb, resource, namespace)
    assert answer == allowed, f"{user} {'cannot' if allowed else 'can'} {verb} {resource}"


EVERYONE = {  # what every authenticated user gets: self reviews
    "selfsubjectreviews.authentication.k8s.io",
    "selfsubjectaccessreviews.authorization.k8s.io",
    "selfsubjectrulesreviews.authorization.k8s.io",
}


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (
            SA_USER,
            {
                "bpfmaps.bpfshare.io",
                "bpfprograms.bpfshare.io",
                "bpfmapstates.bpfshare.io",
                "bpfprogramstates.bpfshare.io",
                "nodes",
                "pods",
                "configmaps",
                "events",
                "customresourcedefinitions.apiextensions.k8s.io",
            },
        ),
        (
            CONTROLLER_USER,
            {
                "bpfmaps.bpfshare.io",
                "bpfprograms.bpfshare.io",
                "bpfmaps.bpfshare.io/status",
                "bpfprograms.bpfshare.io/status",
                "bpfmapstates.bpfshare.io",
                "bpfprogramstates.bpfshare.io",
                "nodes",
                "clusterkopfpeerings.kopf.dev",
                "customresourcedefinitions.apiextensions.k8s.io",
            },
        ),
    ],
    ids=["agent", "controller"],
)
def test_nothing_else_is_granted(deployed: Deployed, user: str, expected: set[str]) -> None:
    """The rules the service account has in the default namespace: its ClusterRole's, its events
    Role's (the agent's; the controller posts none), and what every authenticated user gets."""
    out = deployed.cp.kubectl("auth", "can-i", "--list", f"--as={user}", "-n", "default").stdout
    resources = {line.split()[0] for line in out.splitlines()[1:] if line and not line.startswith(" ")}
    assert resources == expected | EVERYONE


def _bpfmap(name: str) -> dict[str, object]:
    return {
        "apiVersion": "bpfshare.io/v1alpha1",
        "kind": "BpfMap",
        "metadata": {"name": name},
        "spec": {"type": "Array", "keySize": 4, "valueSize": 8, "maxEntries": 4},
    }


def test_requests_with_the_service_account_tokens(deployed: Deployed) -> None:
    """Real requests, authenticated by TokenRequest tokens as the pods' would be: the agent's bound to
    a Pod on its node (the admission policy needs the node), the controller's."""
    cp = deployed.cp
    name = f"rbac-token-{uuid.uuid4().hex[:6]}"
    node = f"node-{name}"
    state = state_body(MAP_STATE, name, None, node, {"phase": "Pending", "message": "", "observedGeneration": 1})
    pod = ""
    ssa = ["apply", "--server-side", "-f", "-"]
    try:
        cp.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
        )
        pod, agent = deployed.pod_token(node)
        controller = cp.kubectl("create", "token", CONTROLLER_SERVICE_ACCOUNT, "-n", NAMESPACE).stdout.strip()
        # The agent may not even create one by server-side apply (a PATCH, which it may not make at all).
        proc = cp.kubectl(
            *ssa, f"--field-manager={AGENT_FIELD_MANAGER}", input=json.dumps(_bpfmap(name)), token=agent, check=False
        )
        assert proc.returncode != 0 and "cannot patch resource" in proc.stderr
        cp.kubectl("apply", "-f", "-", input=json.dumps(_bpfmap(name)))  # the user creates it
        # The agent writes nothing on the shared object: no finalizer, no status.
        finalizer = {**_bpfmap(name), "metadata": {"name": name, "finalizers": ["bpfshare.io/node-x"]}}
        del finalizer["spec"]
        status = {
            "apiVersion": "bpfshare.io/v1alpha1",
            "kind": "BpfMap",
            "metadata": {"name": name},
            "status": {"ready": "1/1"},
        }
        for doc, extra in ((finalizer, []), (status, ["--subresource=status"])):
            proc = cp.kubectl(
                *ssa, *extra, f"--field-manager={AGENT_FIELD_MANAGER}", input=json.dumps(doc), token=agent, check=False
            )
            assert proc.returncode != 0 and "cannot patch resource" in proc.stderr, proc.stderr
        # Its state: written in one server-side apply (spec and status).
        cp.kubectl(*ssa, f"--field-manager={AGENT_FIELD_MANAGER}", input=json.dumps(state), token=agent)
        # A ConfigMap by name, never the list.
        assert cp.kubectl(
            "get", "configmap", "kube-root-ca.crt", "-n", "default", token=agent, check=False
        ).returncode in (0, 1)
        for argv in (
            ("get", "configmaps", "-A"),
            ("delete", "bpfmap", name),
            ("get", "secrets", "-n", "default"),
            ("delete", "pod", "any-pod", "-n", "default"),
            ("get", "clusterkopfpeerings"),
        ):
            proc = cp.kubectl(*argv, token=agent, check=False)
            assert proc.returncode != 0 and "Forbidden" in proc.stderr, argv
        # The pods of its node: the list the agent makes (attach.*.pods).
        listed = cp.kubectl("get", "pods", "-A", f"--field-selector=spec.nodeName={node}", token=agent)
        assert listed.returncode == 0, listed.stderr
        # The controller: the finalizer and the cluster view on the shared object.
        finalizer["metadata"]["finalizers"] = ["bpfshare.io/controller"]  # type: ignore[index]
        cp.kubectl(*ssa, f"--field-manager={CONTROLLER_FIELD_MANAGER}", input=json.dumps(finalizer), token=controller)
        cp.kubectl(
            *ssa,
            "--subresource=status",
            f"--field-manager={CONTROLLER_FIELD_MANAGER}",
            input=json.dumps(status),
            token=controller,
        )
        live = json.loads(cp.kubectl("get", "bpfmap", name, "-o", "json").stdout)
        assert live["status"]["ready"] == "1/1" and live["metadata"]["finalizers"] == ["bpfshare.io/controller"]
        # It releases a vanished node's state (finalizer, delete); it creates none and reads no Secret.
        state_name = str(state["metadata"]["name"])  # type: ignore[index]
        patch = json.dumps([{"op": "remove", "path": "/metadata/finalizers"}])
        cp.kubectl("patch", "bpfmapstate", state_name, "--type=json", "-p", patch, token=controller)
        cp.kubectl("delete", "bpfmapstate", state_name, token=controller)
        proc = cp.kubectl(
            *ssa, f"--field-manager={CONTROLLER_FIELD_MANAGER}", input=json.dumps(state), token=controller, check=False
        )
        assert proc.returncode != 0 and "cannot create resource" in proc.stderr
        for argv in (("delete", "bpfmap", name), ("get", "secrets", "-n", "default"), ("get", "configmaps", "-A")):
            proc = cp.kubectl(*argv, token=controller, check=False)
            assert proc.returncode != 0 and "Forbidden" in proc.stderr, argv
    finally:
        for kind in ("bpfmapstate", "bpfmap"):
            obj = str(state["metadata"]["name"]) if kind == "bpfmapstate" else name  # type: ignore[index]
            cp.kubectl("patch", kind, obj, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
            cp.kubectl("delete", kind, obj, "--ignore-not-found", check=False)
        if pod:
            deployed.delete_pod(pod)
        cp.kubectl("delete", "node", node, "--ignore-not-found", check=False)
