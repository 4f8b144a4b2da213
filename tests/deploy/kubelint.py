"""A stand-in for kube-linter's default checks, for the tests of deploy/ (kube-linter itself cannot be
installed here: it is a Go program published on neither PyPI nor npm, and the Go module proxy refuses it).

``DEFAULT_CHECKS`` is kube-linter's list of checks enabled by default (internal/defaultchecks in
stackrox/kube-linter, 30 checks; their documentation: docs/generated/checks.md). ``lint`` runs each on
rendered objects as kube-linter's templates do, with their default parameters: which objects a check
looks at (deployment-likes: Pod, Deployment, DaemonSet, StatefulSet, ReplicaSet, ReplicationController,
Job, CronJob; Services; PodDisruptionBudgets), which containers (most: init containers too; the probe
ports: the others only) and what counts as a finding. It is a model of the real tool, not a copy: run
kube-linter itself where it can be installed (``kube-linter lint deploy/``).

An object silences a check with the annotation ``ignore-check.kube-linter.io/<check>`` on its own
metadata, as in kube-linter; ``unjustified`` is stricter than kube-linter in one way: the annotation
must carry a reason (a non-empty value).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

IGNORE = "ignore-check.kube-linter.io/"
IGNORE_ALL = "kube-linter.io/ignore-all"

DEFAULT_CHECKS = (
    "dangling-service",
    "deprecated-service-account-field",
    "docker-sock",
    "drop-net-raw-capability",
    "duplicate-env-var",
    "env-var-secret",
    "host-ipc",
    "host-network",
    "host-pid",
    "invalid-target-ports",
    "latest-tag",
    "liveness-port",
    "mismatching-selector",
    "no-anti-affinity",
    "no-extensions-v1beta",
    "no-read-only-root-fs",
    "non-existent-service-account",
    "pdb-max-unavailable",
    "pdb-min-available",
    "pdb-unhealthy-pod-eviction-policy",
    "privilege-escalation-container",
    "privileged-container",
    "readiness-port",
    "run-as-non-root",
    "sensitive-host-mounts",
    "ssh-port",
    "startup-port",
    "unsafe-sysctls",
    "unset-cpu-requirements",
    "unset-memory-requirements",
)

DEPLOYMENT_LIKE = (
    "Pod",
    "Deployment",
    "DaemonSet",
    "StatefulSet",
    "ReplicaSet",
    "ReplicationController",
    "Job",
    "CronJob",
)
WITH_REPLICAS = ("Deployment", "StatefulSet", "ReplicaSet", "ReplicationController")
LATEST_TAG_BLOCKLIST = (r".*:(latest)$", r"^[^:]*$", r"(.*/[^:]+)$")
SENSITIVE_HOST_DIRS = (r"^/$", r"^/boot$", r"^/dev$", r"^/etc$", r"^/lib$", r"^/proc$", r"^/sys$", r"^/usr$")
UNSAFE_SYSCTLS = ("kernel.msg", "kernel.sem", "kernel.shm", "fs.mqueue.", "net.")


@dataclass(frozen=True)
class Finding:
    check: str
    kind: str
    name: str
    namespace: str
    container: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"
        container = f", container {self.container}" if self.container else ""
        return f"{self.check}: {where}{container}: {self.message}"


# -- reading objects -------------------------------------------------------------------------------------


def meta(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj.get("metadata") or {})


def pod_template(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod (metadata and spec) a deployment-like runs; None for other objects."""
    kind = obj.get("kind")
    if kind not in DEPLOYMENT_LIKE:
        return None
    if kind == "Pod":
        return {"metadata": meta(obj), "spec": obj.get("spec") or {}}
    spec = obj.get("spec") or {}
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    template = spec.get("template") or {}
    return {"metadata": template.get("metadata") or {}, "spec": template.get("spec") or {}}


def containers(pod: dict[str, Any], *, init: bool = True) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return [*(spec.get("initContainers") or [] if init else []), *(spec.get("containers") or [])]


def replicas(obj: dict[str, Any]) -> int | None:
    """spec.replicas (1 when unset) of the kinds that have it; None for the others."""
    if obj.get("kind") not in WITH_REPLICAS:
        return None
    value = (obj.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels, matchExpressions) against labels; an empty one matches all."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and key in labels and labels[key] in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def cpu_millis(quantity: Any) -> float:
    if quantity is None:
        return 0.0
    text = str(quantity)
    return float(text[:-1]) if text.endswith("m") else float(text) * 1000


def memory_bytes(quantity: Any) -> float:
    if quantity is None:
        return 0.0
    text = str(quantity)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def valid_port_name(name: str) -> bool:
    """k8s.io/apimachinery IsValidPortName (IANA service names): 1-15 lowercase letters, digits and
    single inner dashes, at least one letter."""
    return (
        1 <= len(name) <= 15
        and re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", name) is not None
        and "--" not in name
        and re.search(r"[a-z]", name) is not None
    )


# -- the checks ------------------------------------------------------------------------------------------

# (check, container or None, message) for one object; ``objects`` is everything linted together.
Found = Iterator[tuple[str, str | None, str]]
Check = Callable[[dict[str, Any], list[dict[str, Any]]], Found]
CHECKS: dict[str, Check] = {}


def check(name: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        assert name in DEFAULT_CHECKS, name
        CHECKS[name] = fn
        return fn

    return register


def per_pod(fn: Callable[[dict[str, Any], dict[str, Any], list[dict[str, Any]]], Found]) -> Check:
    def run(obj: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
        pod = pod_template(obj)
        if pod is not None:
            yield from fn(obj, pod, objects)

    return run


def _sc(container: dict[str, Any]) -> dict[str, Any]:
    return dict(container.get("securityContext") or {})


def _host_mounts(pod: dict[str, Any], patterns: tuple[str, ...]) -> Found:
    volumes = {
        v["name"]: v["hostPath"]["path"] for v in pod["spec"].get("volumes") or [] if v.get("hostPath") is not None
    }
    for c in containers(pod):
        for mount in c.get("volumeMounts") or []:
            path = volumes.get(mount["name"])
            if path is not None and any(re.search(p, path) for p in patterns):
                yield c["name"], f"host system directory {path!r} is mounted"


@check("dangling-service")
def _dangling_service(obj: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    if obj.get("kind") != "Service":
        return
    selector = (obj.get("spec") or {}).get("selector")
    if not selector:
        return
    namespace = meta(obj).get("namespace")
    pods = [pod for o in objects if meta(o).get("namespace") == namespace and (pod := pod_template(o)) is not None]
    if not any(selector_matches({"matchLabels": selector}, pod["metadata"].get("labels") or {}) for pod in pods):
        yield None, f"no pods found matching service labels ({selector})"


@check("deprecated-service-account-field")
@per_pod
def _deprecated_sa(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    if pod["spec"].get("serviceAccount"):
        yield None, "serviceAccount is specified, which has been deprecated (use serviceAccountName)"


@check("docker-sock")
@per_pod
def _docker_sock(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    yield from _host_mounts(pod, (r"docker.sock$",))


@check("drop-net-raw-capability")
@per_pod
def _net_raw(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    for c in containers(pod):
        caps = _sc(c).get("capabilities")
        if caps is None:  # kube-linter looks only at containers that say something of capabilities
            continue
        if any(str(cap).upper() in ("NET_RAW", "ALL") for cap in caps.get("add") or []):
            yield c["name"], "adds NET_RAW"
        if not any(str(cap).upper() in ("NET_RAW", "ALL") for cap in caps.get("drop") or []):
            yield c["name"], "does not drop NET_RAW"


@check("duplicate-env-var")
@per_pod
def _duplicate_env(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    for c in containers(pod):
        names = [e["name"] for e in c.get("env") or []]
        for name in sorted({n for n in names if names.count(n) > 1}):
            yield c["name"], f"duplicate environment variable {name}"


@check("env-var-secret")
@per_pod
def _env_secret(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    for c in containers(pod):
        for e in c.get("env") or []:
            if re.fullmatch(r"(?i).*secret.*", e["name"]) and e.get("value"):
                yield c["name"], f"environment variable {e['name']} holds a secret in its value"


def _host_namespace(field: str) -> Check:
    @per_pod
    def run(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
        if pod["spec"].get(field):
            yield None, f"resource shares the host's namespace ({field}: true)"

    return run


check("host-ipc")(_host_namespace("hostIPC"))
check("host-network")(_host_namespace("hostNetwork"))
check("host-pid")(_host_namespace("hostPID"))


@check("invalid-target-ports")
def _target_ports(obj: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    pod = pod_template(obj)
    if pod is not None:
        for c in containers(pod):
            for port in c.get("ports") or []:
                if port.get("name") and not valid_port_name(port["name"]):
                    yield c["name"], f"port name {port['name']!r} is not a valid IANA service name"
    elif obj.get("kind") == "Service":
        for port in (obj.get("spec") or {}).get("ports") or []:
            target = port.get("targetPort")
            if isinstance(target, str) and not valid_port_name(target):
                yield None, f"targetPort {target!r} is not a valid IANA service name"
            elif isinstance(target, int) and target != 0 and not 1 <= target <= 65535:
                yield None, f"targetPort {target} is not a valid port number"


@check("latest-tag")
@per_pod
def _latest_tag(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    for c in containers(pod):
        image = str(c.get("image") or "")
        if any(re.search(pattern, image) for pattern in LATEST_TAG_BLOCKLIST):
            yield c["name"], f"image {image!r} has no tag, or the tag latest"


def _probe_port(probe: str) -> Check:
    @per_pod
    def run(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
        for c in containers(pod, init=False):
            spec = c.get(probe)
            if not spec:
                continue
            exposed: set[int | str] = set()
            for port in c.get("ports") or []:
                if port.get("protocol", "TCP") == "TCP":
                    exposed |= {port["containerPort"], *([port["name"]] if port.get("name") else [])}
            for handler in ("httpGet", "tcpSocket", "grpc"):
                if handler in spec and spec[handler]["port"] not in exposed:
                    yield c["name"], f"does not expose port {spec[handler]['port']} for the {probe} ({handler})"

    return run


check("liveness-port")(_probe_port("livenessProbe"))
check("readiness-port")(_probe_port("readinessProbe"))
check("startup-port")(_probe_port("startupProbe"))


@check("mismatching-selector")
@per_pod
def _mismatching_selector(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    if obj["kind"] in ("Pod", "Job", "CronJob"):
        return
    selector = (obj.get("spec") or {}).get("selector")
    if not selector:
        yield None, "object has no selector specified"
    elif not selector_matches(selector, pod["metadata"].get("labels") or {}):
        yield None, f"labels {pod['metadata'].get('labels')} do not match the selector {selector}"


@check("no-anti-affinity")
@per_pod
def _anti_affinity(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    count = replicas(obj)
    if count is None or count < 2:
        return
    anti = (pod["spec"].get("affinity") or {}).get("podAntiAffinity") or {}
    terms = [t["podAffinityTerm"] for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution") or []]
    terms += anti.get("requiredDuringSchedulingIgnoredDuringExecution") or []
    labels = pod["metadata"].get("labels") or {}
    namespace = meta(obj).get("namespace")
    for term in terms:
        if (
            term.get("topologyKey") == "kubernetes.io/hostname"
            and (not term.get("namespaces") or namespace in term["namespaces"])
            and term.get("labelSelector") is not None
            and selector_matches(term["labelSelector"], labels)
        ):
            return
    yield (
        None,
        f"object has {count} replicas but no inter-pod anti-affinity on kubernetes.io/hostname matching its pods",
    )


@check("no-extensions-v1beta")
def _extensions(obj: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    if re.fullmatch(r"extensions/v1beta.+", str(obj.get("apiVersion", ""))):
        yield None, f"disallowed API object {obj.get('apiVersion')} {obj.get('kind')}"


@check("no-read-only-root-fs")
@per_pod
def _read_only_root(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    for c in containers(pod):
        if _sc(c).get("readOnlyRootFilesystem") is not True:
            yield c["name"], "does not have a read-only root file system"


@check("non-existent-service-account")
@per_pod
def _service_account(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    name = pod["spec"].get("serviceAccountName") or pod["spec"].get("serviceAccount")
    if not name or name == "default":
        return
    namespace = meta(obj).get("namespace")
    if not any(
        o.get("kind") == "ServiceAccount" and meta(o).get("name") == name and meta(o).get("namespace") == namespace
        for o in objects
    ):
        yield None, f"serviceAccount {name!r} not found"


def _pdb_targets(pdb: dict[str, Any], objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The deployment-likes of the PDB's namespace whose selector the PDB's selector matches."""
    selector = (pdb.get("spec") or {}).get("selector") or {}
    namespace = meta(pdb).get("namespace")
    return [
        o
        for o in objects
        if pod_template(o) is not None
        and meta(o).get("namespace") == namespace
        and (o.get("spec") or {}).get("selector")
        and selector_matches(selector, ((o.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
    ]


def _int_or_percent(value: Any) -> tuple[int, bool]:
    text = str(value)
    return (int(text[:-1]), True) if text.endswith("%") else (int(text), False)


@check("pdb-max-unavailable")
def _pdb_max_unavailable(obj: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    if obj.get("kind") != "PodDisruptionBudget" or (obj.get("spec") or {}).get("maxUnavailable") is None:
        return
    value, _ = _int_or_percent(obj["spec"]["maxUnavailable"])
    if value == 0 and _pdb_targets(obj, objects):
        yield None, "maxUnavailable is 0: no pod may ever be disrupted"


@check("pdb-min-available")
def _pdb_min_available(obj: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    if obj.get("kind") != "PodDisruptionBudget" or (obj.get("spec") or {}).get("minAvailable") is None:
        return
    value, percent = _int_or_percent(obj["spec"]["minAvailable"])
    if percent and value == 100:
        yield None, "minAvailable is 100% of the replicas"
        return
    for target in _pdb_targets(obj, objects):
        count = replicas(target) or 0  # kube-linter reads 0 replicas from kinds without the field
        minimum = -(-count * value // 100) if percent else value
        if count <= minimum:
            yield (
                None,
                f"{target['kind']} {meta(target)['name']} has {count} replicas, not more than minAvailable {minimum}",
            )


@check("pdb-unhealthy-pod-eviction-policy")
def _pdb_eviction_policy(obj: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    if obj.get("kind") == "PodDisruptionBudget" and not (obj.get("spec") or {}).get("unhealthyPodEvictionPolicy"):
        yield None, "unhealthyPodEvictionPolicy is not explicitly set"


@check("privilege-escalation-container")
@per_pod
def _privilege_escalation(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    for c in containers(pod):
        sc = _sc(c)
        if sc.get("allowPrivilegeEscalation") is True:
            yield c["name"], "has allowPrivilegeEscalation set to true"
        elif sc.get("privileged") is True:
            yield c["name"], "is privileged, hence allows privilege escalation"
        elif "SYS_ADMIN" in ((sc.get("capabilities") or {}).get("add") or []):
            yield c["name"], "has the SYS_ADMIN capability, hence allows privilege escalation"


@check("privileged-container")
@per_pod
def _privileged(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    for c in containers(pod):
        if _sc(c).get("privileged") is True:
            yield c["name"], "is privileged"


@check("run-as-non-root")
@per_pod
def _run_as_non_root(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    pod_sc = dict(pod["spec"].get("securityContext") or {})
    for c in containers(pod):
        sc = _sc(c)
        user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        group = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
        if user and user > 0 and group and group > 0:
            continue
        if group is None:
            yield c["name"], "does not have runAsGroup set"
        elif group == 0:
            yield c["name"], "has runAsGroup set to 0"
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot", False))
        if not non_root:
            yield c["name"], "is not set to runAsNonRoot"
        elif user == 0:
            yield c["name"], "is set to runAsNonRoot, but runAsUser is 0"


@check("sensitive-host-mounts")
@per_pod
def _sensitive_mounts(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    yield from _host_mounts(pod, SENSITIVE_HOST_DIRS)


@check("ssh-port")
@per_pod
def _ssh_port(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    for c in containers(pod):
        for port in c.get("ports") or []:
            if port.get("containerPort") == 22 and port.get("protocol", "TCP") == "TCP":
                yield c["name"], "exposes port 22 (TCP), commonly reserved for SSH"


@check("unsafe-sysctls")
@per_pod
def _sysctls(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    for sysctl in (pod["spec"].get("securityContext") or {}).get("sysctls") or []:
        if str(sysctl["name"]).startswith(UNSAFE_SYSCTLS):
            yield None, f"unsafe sysctl {sysctl['name']}"


@check("unset-cpu-requirements")
@per_pod
def _cpu(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    for c in containers(pod):
        if cpu_millis(((c.get("resources") or {}).get("requests") or {}).get("cpu")) == 0:
            yield c["name"], "has no CPU request"


@check("unset-memory-requirements")
@per_pod
def _memory(obj: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]]) -> Found:
    for c in containers(pod):
        if memory_bytes(((c.get("resources") or {}).get("limits") or {}).get("memory")) == 0:
            yield c["name"], "has no memory limit"


assert sorted(CHECKS) == sorted(DEFAULT_CHECKS), sorted(set(DEFAULT_CHECKS) - set(CHECKS))


# -- running them ----------------------------------------------------------------------------------------


def lint(objects: list[dict[str, Any]]) -> list[Finding]:
    """Every finding of every default check on ``objects`` (linted together, as kube-linter lints the
    output of one kustomize build), ignore annotations not applied."""
    out = []
    for obj in objects:
        m = meta(obj)
        for name, run in CHECKS.items():
            for container, message in run(obj, objects):
                out.append(
                    Finding(
                        name,
                        str(obj.get("kind")),
                        str(m.get("name")),
                        str(m.get("namespace") or ""),
                        container,
                        message,
                    )
                )
    return out


def ignores(obj: dict[str, Any]) -> dict[str, str]:
    """check -> reason, from the object's ``ignore-check.kube-linter.io/<check>`` annotations."""
    annotations = meta(obj).get("annotations") or {}
    return {k.removeprefix(IGNORE): str(v).strip() for k, v in annotations.items() if k.startswith(IGNORE)}


def unjustified(objects: list[dict[str, Any]]) -> list[Finding]:
    """The findings kube-linter would report (no ignore annotation of their check on their object),
    and those ignored without a reason."""
    by_key = {(o.get("kind"), meta(o).get("namespace") or "", meta(o).get("name")): o for o in objects}
    out = []
    for finding in lint(objects):
        obj = by_key[(finding.kind, finding.namespace, finding.name)]
        if not ignores(obj).get(finding.check):
            out.append(finding)
    return out
