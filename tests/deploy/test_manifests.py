"""deploy/ against the real kube-apiserver (the tests marked ``cluster``): kustomize builds, the API server
accepts every object, pods made from the DaemonSet's and the controller Deployment's templates pass
admission, and the manifests say what the agent and the controller need. The unmarked tests read files
and `kubectl kustomize` output only: deploy/'s CRD copies equal crds/, the Dockerfile uses the tested
build steps, the sync script names the copies, kube-linter's default checks pass (each remaining
finding ignored with its reason; ``kubelint.py`` stands in for kube-linter), the recommended labels,
resource requests and limits on every container, probes on the ports their arguments open."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bpfshare import __version__
from tests.deploy import kubelint
from tests.deploy.conftest import (
    CONTROLLER_SERVICE_ACCOUNT,
    DEPLOY,
    NAMESPACE,
    REPO,
    SERVICE_ACCOUNT,
    Deployed,
    agent_container,
    build,
    daemonset_caps,
    find,
    kustomize,
)

CRD_FILES = ("bpfmap.yaml", "bpfprogram.yaml", "bpfmapstate.yaml", "bpfprogramstate.yaml")


def test_deploy_copies_of_the_crds_are_identical_to_crds() -> None:
    for name in CRD_FILES:
        assert (DEPLOY / "base" / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), (
            f"deploy/base/crds/{name} differs from crds/{name}: run scripts/sync-deploy-crds.sh"
        )


def _peering_objects() -> list[tuple[str, str]]:
    """What deploy/base/peering.yaml holds (kopf's peering CRD)."""
    docs = yaml.safe_load_all((DEPLOY / "base" / "peering.yaml").read_text())
    return [(d["kind"], d["metadata"]["name"]) for d in docs if d]


@pytest.mark.cluster
def test_base_builds_with_every_object_the_install_needs(deployed: Deployed) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in deployed.objects)
    assert kinds == sorted(
        [
            ("Namespace", NAMESPACE),
            ("CustomResourceDefinition", "bpfmaps.bpfshare.io"),
            ("CustomResourceDefinition", "bpfprograms.bpfshare.io"),
            ("CustomResourceDefinition", "bpfmapstates.bpfshare.io"),
            ("CustomResourceDefinition", "bpfprogramstates.bpfshare.io"),
            ("ServiceAccount", SERVICE_ACCOUNT),
            ("ClusterRole", "bpfshare-agent"),
            ("ClusterRoleBinding", "bpfshare-agent"),
            ("Role", "bpfshare-agent-events"),
            ("RoleBinding", "bpfshare-agent-events"),
            ("DaemonSet", "bpfshare-agent"),
            ("ServiceAccount", CONTROLLER_SERVICE_ACCOUNT),
            ("ClusterRole", "bpfshare-controller"),
            ("ClusterRoleBinding", "bpfshare-controller"),
            ("Deployment", "bpfshare-controller"),
            ("PodDisruptionBudget", "bpfshare-controller"),
            ("ValidatingAdmissionPolicy", "bpfshare-agent-own-node"),
            ("ValidatingAdmissionPolicyBinding", "bpfshare-agent-own-node"),
            *_peering_objects(),
        ]
    )
    # Not the peering object: a first `kubectl apply -k` could not create it (its CRD comes in the same
    # apply); the controller creates it when it starts (tests/fixtures/controller.py starts without one).
    assert ("ClusterKopfPeering", "bpfshare-controller") not in kinds
    assert deployed.objects[0]["kind"] == "Namespace"  # kustomize orders it first: one apply suffices
    for obj in deployed.objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "bpfshare", (obj["kind"], obj["metadata"])


@pytest.mark.cluster
def test_every_object_was_applied_server_side(deployed: Deployed) -> None:
    for obj in deployed.objects:
        if obj["kind"] == "CustomResourceDefinition" and obj["spec"]["group"] == "bpfshare.io":
            continue  # dry-run only (see conftest); test_deploy_copies... ties them to crds/
        meta = obj["metadata"]
        argv = ["get", obj["kind"].lower(), meta["name"], "-o", "json", "--show-managed-fields"]
        if meta.get("namespace"):
            argv += ["-n", meta["namespace"]]
        live = json.loads(deployed.cp.kubectl(*argv).stdout)
        managers = {m["manager"] for m in live["metadata"].get("managedFields") or []}
        assert "bpfshare-deploy-test" in managers, (obj["kind"], meta["name"])
    ds = json.loads(deployed.cp.kubectl("get", "daemonset", "bpfshare-agent", "-n", NAMESPACE, "-o", "json").stdout)
    assert ds["spec"]["template"]["spec"]["priorityClassName"] == "system-node-critical"


@pytest.mark.cluster
def test_example_overlay_builds_and_is_accepted(deployed: Deployed) -> None:
    objects = kustomize(deployed.cp, DEPLOY / "overlays" / "example")
    agent = agent_container(objects)
    assert agent["image"] == "registry.example.com/platform/bpfshare-agent:0.1.0"
    ds = find(objects, "DaemonSet", "bpfshare-agent")
    assert ds["spec"]["template"]["spec"]["nodeSelector"] == {"bpfshare.io/agent": "true"}
    init = ds["spec"]["template"]["spec"]["initContainers"][0]
    assert init["image"] == agent["image"]
    assert daemonset_caps(objects) == daemonset_caps(deployed.objects)  # the patch keeps the security context
    assert controller_container(objects)["image"] == agent["image"]  # one image, one `images:` entry
    items = [o for o in objects if o["kind"] != "CustomResourceDefinition"]
    deployed.cp.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--force-conflicts",
        "--field-manager=bpfshare-overlay-test",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
    )


def controller_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = find(objects, "Deployment", "bpfshare-controller")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _pod_from_template(
    deployed: Deployed, node: str = "any-node", kind: str = "DaemonSet", name: str = "bpfshare-agent"
) -> dict[str, Any]:
    template = find(deployed.objects, kind, name)["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-admission-test",
            "namespace": NAMESPACE,
            "labels": template["metadata"]["labels"],
        },
        "spec": {**template["spec"], "nodeName": node},
    }


@pytest.mark.cluster
def test_a_pod_from_the_daemonset_template_passes_admission(deployed: Deployed) -> None:
    """What the DaemonSet controller would create: validation (capabilities, Bidirectional propagation
    only in the privileged init container), the Priority plugin (system-node-critical exists) and
    Pod Security admission (the namespace's "privileged" level)."""
    pod = _pod_from_template(deployed)
    out = deployed.cp.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(pod)).stdout
    created = json.loads(out)
    assert created["spec"]["priority"] == 2000001000
    assert created["spec"]["serviceAccountName"] == SERVICE_ACCOUNT


def _namespace(deployed: Deployed, name: str, level: str) -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": level}},
    }
    deployed.cp.kubectl("apply", "-f", "-", input=json.dumps(doc))


@pytest.mark.cluster
def test_pod_security_would_refuse_the_agent_in_a_baseline_namespace(deployed: Deployed) -> None:
    """The namespace label is what lets the pod in: the same pod in a 'baseline' namespace is refused."""
    name = "bpfshare-psa-baseline-test"
    _namespace(deployed, name, "baseline")
    try:
        pod = _pod_from_template(deployed)
        pod["metadata"]["namespace"] = name
        pod["spec"]["serviceAccountName"] = "default"
        proc = deployed.cp.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
        assert proc.returncode != 0
        assert "violates PodSecurity" in proc.stderr and "hostNetwork" in proc.stderr
    finally:
        deployed.cp.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.mark.cluster
def test_the_controller_pod_passes_the_restricted_pod_security_level(deployed: Deployed) -> None:
    """The controller needs nothing the "restricted" level forbids (and gets nothing more than it allows):
    a pod from its template is admitted in a namespace enforcing it, and in bpfshare-system."""
    name = "bpfshare-psa-restricted-test"
    _namespace(deployed, name, "restricted")
    try:
        pod = _pod_from_template(deployed, kind="Deployment", name="bpfshare-controller")
        del pod["spec"]["nodeName"]
        out = deployed.cp.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(pod)).stdout
        assert json.loads(out)["spec"]["serviceAccountName"] == CONTROLLER_SERVICE_ACCOUNT
        pod["metadata"]["namespace"] = name
        proc = deployed.cp.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
        assert proc.returncode == 0 and "PodSecurity" not in proc.stderr, proc.stderr
        # The check is real: the agent's pod is refused there.
        agent = _pod_from_template(deployed)
        agent["metadata"]["namespace"] = name
        proc = deployed.cp.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(agent), check=False)
        assert proc.returncode != 0 and "violates PodSecurity" in proc.stderr
    finally:
        deployed.cp.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.mark.cluster
def test_the_examples_are_accepted_by_the_installed_crds(deployed: Deployed) -> None:
    """`kubectl apply -k deploy/` then `kubectl apply -f examples/` is the whole install."""
    out = deployed.cp.kubectl("apply", "--dry-run=server", "-f", str(REPO / "examples"), "-o", "name").stdout
    assert sorted(out.split()) == [
        "bpfmap.bpfshare.io/flow-counts",
        "bpfprogram.bpfshare.io/count-cgroup-egress",
        "bpfprogram.bpfshare.io/count-ingress",
    ]


def _arg(container: dict[str, Any], flag: str) -> str:
    for arg in container.get("args") or []:
        if arg.startswith(f"{flag}="):
            return str(arg.split("=", 1)[1])
    raise AssertionError(f"no {flag}= in {container.get('args')}")


@pytest.mark.cluster
def test_the_daemonset_runs_the_agent_as_documented(deployed: Deployed) -> None:
    ds = find(deployed.objects, "DaemonSet", "bpfshare-agent")
    spec = ds["spec"]["template"]["spec"]
    agent = agent_container(deployed.objects)
    assert spec["hostNetwork"] is True and not spec.get("hostPID")
    assert spec["serviceAccountName"] == SERVICE_ACCOUNT
    assert {"operator": "Exists"} in spec["tolerations"]
    assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    # Not privileged: named capabilities only.
    security = agent["securityContext"]
    assert security["privileged"] is False and security["readOnlyRootFilesystem"] is True
    assert sorted(daemonset_caps(deployed.objects)) == ["BPF", "NET_ADMIN", "SYS_ADMIN"]
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # Probes and metrics point at the ports the agent's arguments open.
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    liveness = _arg(agent, "--liveness")
    assert re.fullmatch(rf"http://0\.0\.0\.0:{ports['healthz']}/healthz", liveness)
    assert _arg(agent, "--metrics") == f"0.0.0.0:{ports['metrics']}"
    for probe in ("startupProbe", "livenessProbe"):  # alive
        assert agent[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}  # synced
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    assert agent["resources"]["requests"] and agent["resources"]["limits"]["memory"]
    # BPF maps are charged to the agent's memory cgroup: the limit leaves room for the largest map the
    # agent may create (--map-memory-budget) beside the agent itself (~150Mi measured idle with 1000 resources).
    from bpfshare.commands.limits import parse_quantity

    limit = parse_quantity(agent["resources"]["limits"]["memory"])
    assert limit >= parse_quantity(_arg(agent, "--map-memory-budget")) + (256 << 20)
    assert parse_quantity(_arg(agent, "--max-bytecode-bytes")) <= 64 << 20
    # Mounts: bpffs and netns follow host mounts; only the init container propagates back.
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    assert mounts["bpffs"]["mountPath"] == "/sys/fs/bpf"
    assert mounts["bpffs"]["mountPropagation"] == "HostToContainer"
    assert mounts["netns"]["mountPropagation"] == "HostToContainer"
    assert mounts["cgroup"]["mountPath"] == "/sys/fs/cgroup"
    assert _arg(agent, "--pin-root").startswith("/sys/fs/bpf/")
    # The runtime's socket (attach.*.pods) read-only, where the agent looks for it by default, and
    # only if it is a socket (no directory made in its place).
    from bpfshare.cri.client import DEFAULT_SOCKETS

    assert mounts["runtime-socket"]["readOnly"] is True
    assert Path(mounts["runtime-socket"]["mountPath"]) == DEFAULT_SOCKETS[0]
    volumes = {v["name"]: v["hostPath"] for v in spec["volumes"] if "hostPath" in v}
    assert {name: v["path"] for name, v in volumes.items()} == {
        "bpffs": "/sys/fs/bpf",
        "cgroup": "/sys/fs/cgroup",
        "netns": "/run/netns",
        "runtime-socket": "/run/containerd/containerd.sock",
    }
    assert volumes["runtime-socket"]["type"] == "Socket"
    init = spec["initContainers"][0]
    assert init["command"][0] == "/usr/local/bin/bpfshare-mount-bpffs"
    assert init["securityContext"]["privileged"] is True
    assert init["volumeMounts"][0]["mountPropagation"] == "Bidirectional"


@pytest.mark.cluster
def test_the_controller_runs_as_documented(deployed: Deployed) -> None:
    deployment = find(deployed.objects, "Deployment", "bpfshare-controller")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    container = controller_container(deployed.objects)
    assert spec["replicas"] == 2  # one active, one standby (kopf peering)
    assert spec["selector"]["matchLabels"] == {"app.kubernetes.io/name": "bpfshare-controller"}
    labels = spec["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "bpfshare-controller" and labels["app.kubernetes.io/component"]
    assert pod["serviceAccountName"] == CONTROLLER_SERVICE_ACCOUNT
    # The agent's image, another command.
    assert container["image"] == agent_container(deployed.objects)["image"]
    assert container["command"] == ["bpfshare", "controller"]
    # Not root, nothing extra: no capabilities, no escalation, read-only root, the runtime's seccomp.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and "hostPath" not in json.dumps(pod["volumes"])
    # The liveness endpoint the arguments open is what the probes ask.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert re.fullmatch(rf"http://0\.0\.0\.0:{ports['healthz']}/healthz", _arg(container, "--liveness"))
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert _arg(container, "--readiness") == f"0.0.0.0:{ports['readyz']}"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "readyz"}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    # Voluntary disruptions leave one replica; a replica that is not Ready does not hold a drain.
    pdb = find(deployed.objects, "PodDisruptionBudget", "bpfshare-controller")
    assert pdb["spec"] == {"minAvailable": 1, "selector": spec["selector"], "unhealthyPodEvictionPolicy": "AlwaysAllow"}
    live = json.loads(deployed.cp.kubectl("get", "pdb", "bpfshare-controller", "-n", NAMESPACE, "-o", "json").stdout)
    assert live["spec"]["minAvailable"] == 1


def test_dockerfile_uses_only_the_tested_build_steps_and_existing_paths() -> None:
    """Every RUN is a step of scripts/image-build.sh (run by test_image.py), every COPY source exists and
    is not excluded by .dockerignore, and the image ships what the DaemonSet calls."""
    text = (REPO / "Dockerfile").read_text()
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    steps = []
    for line in lines:
        if line.startswith("RUN "):
            for command in line[4:].split("&&"):
                words = [w for w in command.split() if "=" not in w or w.startswith("/")]
                if words[0] in ("rm",):
                    continue
                assert words[0].endswith("image-build.sh"), line
                steps.append(words[1])
        elif line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source
    assert sorted(steps) == ["bpf", "builder-deps", "install-wheel", "runtime-deps", "wheel"]
    assert 'ENTRYPOINT ["bpfshare", "agent"]' in text
    assert "/usr/local/bin/bpfshare-mount-bpffs" in text
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    for source in (
        "pyproject.toml",
        "README.md",
        "operator/bpfshare/",
        "bpf/",
        "scripts/image-build.sh",
        "scripts/mount-bpffs.sh",
    ):
        assert f"!{source}" in ignore


def test_sync_script_names_the_copies_the_kustomization_uses() -> None:
    script = (REPO / "scripts" / "sync-deploy-crds.sh").read_text()
    kustomization = (DEPLOY / "base" / "kustomization.yaml").read_text()
    assert "crds/*.yaml" in script
    assert sorted(p.name for p in (REPO / "crds").glob("*.yaml")) == sorted(CRD_FILES)  # a new CRD is listed here
    for name in CRD_FILES:
        assert (REPO / "crds" / name).exists() and f"crds/{name}" in kustomization
    assert Path(REPO / "scripts" / "sync-deploy-crds.sh").stat().st_mode & 0o111


# -- without a cluster: `kubectl kustomize` output --------------------------------------------------------

BUILDS = {"deploy": DEPLOY, "example overlay": DEPLOY / "overlays" / "example"}
RECOMMENDED_LABELS = ("name", "instance", "version", "component", "part-of", "managed-by")


@pytest.fixture(scope="module", params=sorted(BUILDS))
def built(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return build(BUILDS[request.param])


def _base_files() -> list[dict[str, Any]]:
    """deploy/base's files as they are, without kustomize (``kube-linter lint deploy/base/*.yaml``)."""
    docs = []
    for path in sorted((DEPLOY / "base").glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_the_manifests_pass_kube_linters_default_checks(built: list[dict[str, Any]]) -> None:
    """Every finding of kube-linter's default checks (``kubelint.py``) is ignored on its object by an
    annotation that gives the reason; nothing else is found."""
    assert [str(f) for f in kubelint.unjustified(built)] == []


def test_the_base_files_pass_kube_linter_without_kustomize_too() -> None:
    """The files name a tagged image themselves (latest-tag), not only after kustomize's `images:`."""
    assert [str(f) for f in kubelint.unjustified(_base_files())] == []


def test_every_lint_ignore_has_a_reason_and_silences_a_finding(built: list[dict[str, Any]]) -> None:
    """No blanket ignore, no ignore of a check kube-linter does not run by default, none left after
    its finding went away: each ignore-check annotation names a default check that finds something on
    that very object, and says why it must stay."""
    findings = {(f.kind, f.name, f.check) for f in kubelint.lint(built)}
    ignored = []
    for obj in built:
        meta = obj["metadata"]
        assert kubelint.IGNORE_ALL not in (meta.get("annotations") or {}), (obj["kind"], meta["name"])
        for check, reason in kubelint.ignores(obj).items():
            where = f"{obj['kind']} {meta['name']}: ignore-check.kube-linter.io/{check}"
            assert check in kubelint.DEFAULT_CHECKS, f"{where}: not a default check"
            assert len(reason) >= 20, f"{where}: the reason is missing or too short to be one ({reason!r})"
            assert (obj["kind"], meta["name"], check) in findings, f"{where}: nothing to ignore"
            ignored.append((obj["kind"], meta["name"], check))
    # The node agent's unavoidable ones, and only on it (the controller needs none).
    assert sorted(ignored) == [
        ("DaemonSet", "bpfshare-agent", "host-network"),
        ("DaemonSet", "bpfshare-agent", "privilege-escalation-container"),
        ("DaemonSet", "bpfshare-agent", "privileged-container"),
        ("DaemonSet", "bpfshare-agent", "run-as-non-root"),
    ]


def _templates(objects: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, its pod template) for the DaemonSet and the Deployment."""
    return [(o, o["spec"]["template"]) for o in objects if o["kind"] in ("DaemonSet", "Deployment")]


def test_every_object_and_pod_template_has_the_recommended_labels(built: list[dict[str, Any]]) -> None:
    image_tags = set()
    for obj in built:
        labels = obj["metadata"].get("labels") or {}
        where = f"{obj['kind']} {obj['metadata']['name']}"
        missing = [k for k in RECOMMENDED_LABELS if not labels.get(f"app.kubernetes.io/{k}")]
        assert missing == [], f"{where} lacks app.kubernetes.io/{missing}"
        assert labels["app.kubernetes.io/part-of"] == labels["app.kubernetes.io/instance"] == "bpfshare", where
        assert labels["app.kubernetes.io/version"] == __version__, where
        assert labels["app.kubernetes.io/managed-by"] == "kustomize", where
    for workload, template in _templates(built):
        assert template["metadata"]["labels"] == workload["metadata"]["labels"], workload["metadata"]["name"]
        # Selectors cannot change on a live DaemonSet or Deployment: the name alone, as before.
        name = workload["metadata"]["labels"]["app.kubernetes.io/name"]
        assert workload["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/name": name}}
        for container in kubelint.containers(template):
            image_tags.add(container["image"].rpartition(":")[2])
    assert image_tags == {__version__}  # the version label says which image runs
    components = {
        (o["kind"], o["metadata"]["name"]): o["metadata"]["labels"]["app.kubernetes.io/component"] for o in built
    }
    assert components[("DaemonSet", "bpfshare-agent")] == "agent"
    assert components[("Deployment", "bpfshare-controller")] == "controller"
    assert components[("CustomResourceDefinition", "bpfmaps.bpfshare.io")] == "crd"
    pdb = find(built, "PodDisruptionBudget", "bpfshare-controller")
    assert pdb["spec"]["selector"] == find(built, "Deployment", "bpfshare-controller")["spec"]["selector"]


def test_the_crd_labels_come_from_the_kustomization_not_from_the_copies() -> None:
    """deploy/base/crds/ stay byte copies of crds/ (test_deploy_copies_...): the patch labels them."""
    for name in CRD_FILES:
        doc = yaml.safe_load((DEPLOY / "base" / "crds" / name).read_text())
        assert "labels" not in doc["metadata"], name


def test_every_container_has_cpu_and_memory_requests_and_limits(built: list[dict[str, Any]]) -> None:
    from bpfshare.commands.limits import parse_quantity

    seen = []
    for workload, template in _templates(built):
        for container in kubelint.containers(template):
            resources = container.get("resources") or {}
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    value = (resources.get(kind) or {}).get(resource)
                    assert value, f"{workload['metadata']['name']}/{container['name']}: no {resource} in {kind}"
            assert parse_quantity(resources["requests"]["memory"]) <= parse_quantity(resources["limits"]["memory"])
            seen.append(container["name"])
    assert sorted(seen) == ["agent", "controller", "mount-bpffs"]


def test_the_init_container_has_a_read_only_root_filesystem(built: list[dict[str, Any]]) -> None:
    ds = find(built, "DaemonSet", "bpfshare-agent")
    (init,) = ds["spec"]["template"]["spec"]["initContainers"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True


def test_liveness_asks_alive_and_readiness_asks_synced_on_the_ports_the_arguments_open(
    built: list[dict[str, Any]],
) -> None:
    """Liveness and startup: kopf's /healthz (--liveness). Readiness: /readyz, on the agent's metrics
    server (--metrics) and on the controller's --readiness address."""
    agent = agent_container(built)
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert _arg(agent, "--liveness") == f"http://0.0.0.0:{ports['healthz']}/healthz"
    assert _arg(agent, "--metrics") == f"0.0.0.0:{ports['metrics']}"
    assert (
        agent["livenessProbe"]["httpGet"] == agent["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    )
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    controller = controller_container(built)
    ports = {p["name"]: p["containerPort"] for p in controller["ports"]}
    assert _arg(controller, "--liveness") == f"http://0.0.0.0:{ports['healthz']}/healthz"
    assert _arg(controller, "--readiness") == f"0.0.0.0:{ports['readyz']}"
    assert controller["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert controller["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "readyz"}


def test_the_runtime_socket_overlay_changes_only_the_sockets_host_path(tmp_path: Path) -> None:
    """What the real node's tests and ``demo --node`` apply (node_deploy.py), as docs/install.md tells
    users of another runtime to: deploy/ with the runtime socket's hostPath elsewhere, nothing else."""
    from bpfshare.controlplane.node_deploy import write_runtime_socket_overlay

    socket_path = Path("/var/run/crio/crio.sock")
    write_runtime_socket_overlay(tmp_path, DEPLOY, socket_path)
    base, patched = build(DEPLOY), build(tmp_path)
    base_ds, patched_ds = find(base, "DaemonSet"), find(patched, "DaemonSet")
    volumes = {v["name"]: v for v in patched_ds["spec"]["template"]["spec"]["volumes"]}
    assert volumes["runtime-socket"]["hostPath"] == {"path": str(socket_path), "type": "Socket"}
    volumes["runtime-socket"]["hostPath"]["path"] = "/run/containerd/containerd.sock"
    # The same volumes otherwise (kustomize's merge moves the patched one first: order means nothing).
    for ds, by_name in (
        (patched_ds, volumes),
        (base_ds, {v["name"]: v for v in base_ds["spec"]["template"]["spec"]["volumes"]}),
    ):
        ds["spec"]["template"]["spec"]["volumes"] = sorted(by_name.values(), key=lambda v: v["name"])
    assert patched == base
