"""The agent's RBAC: allowed exactly what it uses, refused the rest, checked by `kubectl auth can-i`
with impersonation and by real requests made with the service account's own token."""

from __future__ import annotations

import json

import pytest

from tests.deploy.conftest import SA_USER, Deployed

pytestmark = pytest.mark.cluster

# (verb, resource, namespace or None): every request the agent and kopf make.
ALLOWED = [
    ("list", "bpfmaps.bpfshare.io", None),
    ("watch", "bpfmaps.bpfshare.io", None),
    ("get", "bpfmaps.bpfshare.io", None),
    ("patch", "bpfmaps.bpfshare.io", None),
    ("list", "bpfprograms.bpfshare.io", None),
    ("watch", "bpfprograms.bpfshare.io", None),
    ("get", "bpfprograms.bpfshare.io", None),
    ("patch", "bpfprograms.bpfshare.io", None),
    ("patch", "bpfmaps.bpfshare.io/status", None),
    ("patch", "bpfprograms.bpfshare.io/status", None),
    ("get", "nodes", None),
    ("list", "nodes", None),
    ("watch", "nodes", None),
    ("get", "configmaps", "kube-system"),
    ("list", "configmaps", None),
    ("watch", "configmaps", None),
    ("create", "events", "default"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", None),
]

DENIED = [
    # Secrets, anywhere, in any way.
    ("get", "secrets", "default"),
    ("list", "secrets", None),
    ("watch", "secrets", None),
    ("get", "secrets", "bpfshare-system"),
    # Pods and what leads into them.
    ("get", "pods", "default"),
    ("list", "pods", None),
    ("create", "pods", "bpfshare-system"),
    ("create", "pods/exec", "default"),
    ("get", "nodes/proxy", None),
    ("create", "serviceaccounts/token", "default"),
    # RBAC objects.
    ("get", "roles.rbac.authorization.k8s.io", "default"),
    ("list", "clusterroles.rbac.authorization.k8s.io", None),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
    ("create", "rolebindings.rbac.authorization.k8s.io", "default"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", None),
    ("bind", "clusterroles.rbac.authorization.k8s.io", None),
    # The custom resources: users create, change and delete them; the agent patches only.
    ("create", "bpfmaps.bpfshare.io", None),
    ("delete", "bpfmaps.bpfshare.io", None),
    ("create", "bpfprograms.bpfshare.io", None),
    ("delete", "bpfprograms.bpfshare.io", None),
    ("deletecollection", "bpfprograms.bpfshare.io", None),
    ("update", "bpfmaps.bpfshare.io", None),
    ("update", "bpfprograms.bpfshare.io/status", None),
    # Nothing else it does not use.
    ("patch", "nodes", None),
    ("update", "configmaps", "default"),
    ("create", "configmaps", "default"),
    ("create", "events", "kube-system"),
    ("patch", "events", "default"),
    ("delete", "events", "default"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("get", "leases.coordination.k8s.io", "default"),
]


def can_i(deployed: Deployed, verb: str, resource: str, namespace: str | None) -> bool:
    kind, _, sub = resource.partition("/")
    argv = ["auth", "can-i", verb, kind, f"--as={SA_USER}"]
    if sub:
        argv.append(f"--subresource={sub}")
    argv += ["-n", namespace] if namespace else ["--all-namespaces"]
    proc = deployed.cp.kubectl(*argv, check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stderr
    return answer == "yes"


@pytest.mark.parametrize(("verb", "resource", "namespace"), ALLOWED)
def test_the_agent_may(deployed: Deployed, verb: str, resource: str, namespace: str | None) -> None:
    assert can_i(deployed, verb, resource, namespace), f"{SA_USER} cannot {verb} {resource}"


@pytest.mark.parametrize(("verb", "resource", "namespace"), DENIED)
def test_the_agent_may_not(deployed: Deployed, verb: str, resource: str, namespace: str | None) -> None:
    assert not can_i(deployed, verb, resource, namespace), f"{SA_USER} can {verb} {resource}"


def test_nothing_else_is_granted(deployed: Deployed) -> None:
    """The rules the service account has in the default namespace: the ClusterRole's, the events Role's,
    and what every authenticated user gets (self reviews, discovery)."""
    out = deployed.cp.kubectl("auth", "can-i", "--list", f"--as={SA_USER}", "-n", "default").stdout
    resources = {line.split()[0] for line in out.splitlines()[1:] if line and not line.startswith(" ")}
    assert resources == {
        "bpfmaps.bpfshare.io",
        "bpfprograms.bpfshare.io",
        "bpfmaps.bpfshare.io/status",
        "bpfprograms.bpfshare.io/status",
        "nodes",
        "configmaps",
        "events",
        "customresourcedefinitions.apiextensions.k8s.io",
        "selfsubjectreviews.authentication.k8s.io",
        "selfsubjectaccessreviews.authorization.k8s.io",
        "selfsubjectrulesreviews.authorization.k8s.io",
    }


def test_requests_with_the_service_account_token(deployed: Deployed) -> None:
    """Real requests, authenticated by a TokenRequest token as the pod's would be."""
    cp, token = deployed.cp, deployed.token()
    name = "rbac-token-test"
    doc = {
        "apiVersion": "bpfshare.io/v1alpha1",
        "kind": "BpfMap",
        "metadata": {"name": name},
        "spec": {"type": "Array", "keySize": 4, "valueSize": 8, "maxEntries": 4},
    }
    try:
        # Server-side apply of a missing object would create it: the API server checks `create`.
        proc = cp.kubectl(
            "apply",
            "--server-side",
            "--field-manager=agent-test",
            "-f",
            "-",
            input=json.dumps(doc),
            token=token,
            check=False,
        )
        assert proc.returncode != 0 and "cannot create resource" in proc.stderr
        cp.kubectl("apply", "-f", "-", input=json.dumps(doc))  # the user creates it
        # The agent's two writes: its finalizer, and its status entry.
        finalizer = {
            "apiVersion": "bpfshare.io/v1alpha1",
            "kind": "BpfMap",
            "metadata": {"name": name, "finalizers": ["bpfshare.io/node-rbac-test"]},
        }
        cp.kubectl(
            "apply", "--server-side", "--field-manager=agent-test", "-f", "-", input=json.dumps(finalizer), token=token
        )
        status = json.dumps(
            {
                "apiVersion": "bpfshare.io/v1alpha1",
                "kind": "BpfMap",
                "metadata": {"name": name},
                "status": {
                    "nodes": [{"node": "rbac-test", "phase": "Pending", "message": "", "observedGeneration": 1}]
                },
            }
        )
        cp.kubectl(
            "apply",
            "--server-side",
            "--subresource=status",
            "--field-manager=agent-test",
            "-f",
            "-",
            input=status,
            token=token,
        )
        live = json.loads(cp.kubectl("get", "bpfmap", name, "-o", "json").stdout)
        assert live["status"]["nodes"][0]["node"] == "rbac-test"
        assert "bpfshare.io/node-rbac-test" in live["metadata"]["finalizers"]
        # Refused: deleting it, reading a Secret, listing Pods.
        for argv in (("delete", "bpfmap", name), ("get", "secrets", "-n", "default"), ("get", "pods", "-A")):
            proc = cp.kubectl(*argv, token=token, check=False)
            assert proc.returncode != 0 and "Forbidden" in proc.stderr, argv
    finally:
        cp.kubectl("patch", "bpfmap", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
        cp.kubectl("delete", "bpfmap", name, "--ignore-not-found", check=False)
