"""The kube-linter stand-in (``kubelint.py``) finds what each of kube-linter's default checks finds:
a workload that passes every check, then, for each check, that workload with the one fault the check
is about, which must be found and name its object (and container). So a check that quietly stopped
finding anything fails here, not only in the manifests' test, where finding nothing is the goal."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.deploy import kubelint

NS = "apps"


def clean() -> list[dict[str, Any]]:
    """A Deployment that every default check accepts, with its ServiceAccount, Service and PDB."""
    labels = {"app.kubernetes.io/name": "web"}
    container = {
        "name": "web",
        "image": "registry.example.com/web:1.2.3",
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "env": [{"name": "MODE", "value": "prod"}],
        "securityContext": {
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}},
        "startupProbe": {"tcpSocket": {"port": "http"}},
    }
    without_probes = {k: v for k, v in container.items() if not k.endswith("Probe")}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS, "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, "extra": "yes"}},
                "spec": {
                    "serviceAccountName": "web",
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000},
                    "affinity": {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 100,
                                    "podAffinityTerm": {
                                        "topologyKey": "kubernetes.io/hostname",
                                        "labelSelector": {"matchLabels": labels},
                                    },
                                }
                            ]
                        }
                    },
                    "initContainers": [{**copy.deepcopy(without_probes), "name": "init", "ports": []}],
                    "containers": [container],
                    "volumes": [{"name": "data", "hostPath": {"path": "/var/lib/web"}}],
                },
            },
        },
    }
    deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": NS}},
        deployment,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]},
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {
                "minAvailable": 1,
                "selector": {"matchLabels": labels},
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
        },
    ]


Objects = list[dict[str, Any]]


def pod(objects: Objects) -> dict[str, Any]:
    spec: dict[str, Any] = objects[1]["spec"]["template"]["spec"]
    return spec


def web(objects: Objects) -> dict[str, Any]:
    container: dict[str, Any] = pod(objects)["containers"][0]
    return container


def init(objects: Objects) -> dict[str, Any]:
    container: dict[str, Any] = pod(objects)["initContainers"][0]
    return container


def _set(target: Callable[[Objects], dict[str, Any]], path: str, value: Any) -> Callable[[Objects], None]:
    def mutate(objects: Objects) -> None:
        node = target(objects)
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(last)
        else:
            node[last] = value

    return mutate


DELETE = object()
DEPLOYMENT: Callable[[Objects], dict[str, Any]] = lambda objects: objects[1]  # noqa: E731
SERVICE: Callable[[Objects], dict[str, Any]] = lambda objects: objects[2]  # noqa: E731
PDB: Callable[[Objects], dict[str, Any]] = lambda objects: objects[3]  # noqa: E731


def _mount_host(path: str) -> Callable[[Objects], None]:
    def mutate(objects: Objects) -> None:
        pod(objects)["volumes"][0]["hostPath"]["path"] = path

    return mutate


# check -> (the fault, the kind and the container the finding must name)
FAULTS: dict[str, tuple[Callable[[Objects], None], str, str | None]] = {
    "dangling-service": (_set(SERVICE, "spec.selector", {"app": "nothing"}), "Service", None),
    "deprecated-service-account-field": (_set(pod, "serviceAccount", "web"), "Deployment", None),
    "docker-sock": (_mount_host("/var/run/docker.sock"), "Deployment", "web"),
    "drop-net-raw-capability": (_set(init, "securityContext.capabilities", {"drop": ["CHOWN"]}), "Deployment", "init"),
    "duplicate-env-var": (
        _set(web, "env", [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]),
        "Deployment",
        "web",
    ),
    "env-var-secret": (_set(web, "env", [{"name": "DB_SECRET", "value": "hunter2"}]), "Deployment", "web"),
    "host-ipc": (_set(pod, "hostIPC", True), "Deployment", None),
    "host-network": (_set(pod, "hostNetwork", True), "Deployment", None),
    "host-pid": (_set(pod, "hostPID", True), "Deployment", None),
    "invalid-target-ports": (_set(web, "ports", [{"name": "Web_HTTP", "containerPort": 8080}]), "Deployment", "web"),
    "latest-tag": (_set(init, "image", "registry.example.com:5000/web"), "Deployment", "init"),
    "liveness-port": (_set(web, "livenessProbe.httpGet.port", "admin"), "Deployment", "web"),
    "mismatching-selector": (_set(DEPLOYMENT, "spec.selector.matchLabels", {"app": "other"}), "Deployment", None),
    "no-anti-affinity": (_set(pod, "affinity", DELETE), "Deployment", None),
    "no-extensions-v1beta": (_set(DEPLOYMENT, "apiVersion", "extensions/v1beta1"), "Deployment", None),
    "no-read-only-root-fs": (_set(init, "securityContext.readOnlyRootFilesystem", False), "Deployment", "init"),
    "non-existent-service-account": (_set(pod, "serviceAccountName", "nobody"), "Deployment", None),
    "pdb-max-unavailable": (
        lambda objects: PDB(objects)["spec"].update({"maxUnavailable": 0, "minAvailable": None}),
        "PodDisruptionBudget",
        None,
    ),
    "pdb-min-available": (_set(PDB, "spec.minAvailable", 2), "PodDisruptionBudget", None),
    "pdb-unhealthy-pod-eviction-policy": (
        _set(PDB, "spec.unhealthyPodEvictionPolicy", DELETE),
        "PodDisruptionBudget",
        None,
    ),
    "privilege-escalation-container": (
        _set(web, "securityContext.allowPrivilegeEscalation", True),
        "Deployment",
        "web",
    ),
    "privileged-container": (_set(init, "securityContext.privileged", True), "Deployment", "init"),
    "readiness-port": (_set(web, "readinessProbe.httpGet.port", 9999), "Deployment", "web"),
    "run-as-non-root": (_set(init, "securityContext.runAsUser", 0), "Deployment", "init"),
    "sensitive-host-mounts": (_mount_host("/etc"), "Deployment", "web"),
    "ssh-port": (_set(web, "ports", [{"name": "ssh", "containerPort": 22}]), "Deployment", "web"),
    "startup-port": (_set(web, "startupProbe.tcpSocket.port", 2222), "Deployment", "web"),
    "unsafe-sysctls": (
        _set(pod, "securityContext.sysctls", [{"name": "net.ipv4.ip_forward", "value": "1"}]),
        "Deployment",
        None,
    ),
    "unset-cpu-requirements": (_set(init, "resources.requests", {"memory": "64Mi"}), "Deployment", "init"),
    "unset-memory-requirements": (_set(web, "resources.limits", {"cpu": "1"}), "Deployment", "web"),
}


def test_every_default_check_has_a_fault_here() -> None:
    assert sorted(FAULTS) == sorted(kubelint.DEFAULT_CHECKS)
    assert len(kubelint.DEFAULT_CHECKS) == 30


def test_the_clean_workload_passes_every_check() -> None:
    assert [str(f) for f in kubelint.lint(clean())] == []


@pytest.mark.parametrize("check", sorted(FAULTS))
def test_each_check_finds_its_fault_and_names_the_object_and_container(check: str) -> None:
    objects = clean()
    mutate, kind, container = FAULTS[check]
    mutate(objects)
    found = [f for f in kubelint.lint(objects) if f.check == check]
    assert found, f"{check} found nothing"
    assert {(f.kind, f.name, f.namespace, f.container) for f in found} == {(kind, "web", NS, container)}


def test_an_ignore_needs_its_check_on_the_object_and_a_reason() -> None:
    objects = clean()
    pod(objects)["hostNetwork"] = True
    annotations = objects[1]["metadata"].setdefault("annotations", {})
    annotations[kubelint.IGNORE + "host-network"] = "   "
    assert [f.check for f in kubelint.unjustified(objects)] == ["host-network"]  # no reason: not ignored
    annotations[kubelint.IGNORE + "host-network"] = "it programs the node's interfaces"
    annotations[kubelint.IGNORE + "host-pid"] = "not needed, but harmless to kube-linter"
    assert kubelint.unjustified(objects) == []
    objects[2]["metadata"]["annotations"] = {kubelint.IGNORE + "host-network": "on another object"}
    pod(objects)["hostIPC"] = True
    assert [f.check for f in kubelint.unjustified(objects)] == ["host-ipc"]
