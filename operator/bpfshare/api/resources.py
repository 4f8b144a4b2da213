"""BpfMap and BpfProgram resources as typed, validated data (no kernel, no cluster).

Every object is first checked against its CRD exactly as the API server checks a create
(api/schema.py: the structural schema, unknown fields, defaults, the CEL rules), so that
``bpfshare apply -f``, the agent and the API server accept and refuse the same objects. What the
schema cannot say is checked here, naming the field the same way: ``BpfMap flow-counts: spec.keySize: ...``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bpfshare.api import schema
from bpfshare.api.schema import FieldError
from bpfshare.api.targets import AttachTarget, CgroupTarget, TcTarget, TcxTarget
from bpfshare.errors import BpfshareError
from bpfshare.types import Direction, MapFlag, MapType

GROUP = "bpfshare.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
MAP_KIND = "BpfMap"
PROGRAM_KIND = "BpfProgram"
MAP_PLURAL = "bpfmaps"
PROGRAM_PLURAL = "bpfprograms"

# One path component; bpffs refuses names containing '.'.
PIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}$")


class ResourceError(BpfshareError):
    """A resource is malformed; the message names the resource and every field at fault.

    ``errors`` holds the fields one by one (``path`` as the API server names it), for a caller that
    shows them with their place in a file."""

    def __init__(self, resource: str, errors: Iterable[FieldError]) -> None:
        self.resource = resource  # "BpfMap flow-counts", or "BpfMap" while the name is unusable
        # Not the API server's note that the CEL rules were skipped: only what to correct.
        self.errors = tuple(e for e in errors if e.kind != schema.INCOMPLETE)
        super().__init__(f"{resource}: " + "; ".join(str(e) for e in self.errors))


def describe(obj: Any, kind: str) -> str:
    """``BpfMap flow-counts``; just ``BpfMap`` if the object has no usable name."""
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if isinstance(name, str) and name and schema.subdomain_problem(name) is None:
        return f"{kind} {name}"
    return kind


def _fail(resource: str, path: str, detail: str) -> ResourceError:
    return ResourceError(resource, [FieldError(path, detail)])


def checked(obj: Any, kind: str) -> dict[str, Any]:
    """``obj`` as the API server would store it, or ResourceError listing what it refuses."""
    result = schema.validate(obj, kind)
    if result.obj is None:
        raise ResourceError(describe(obj, kind), result.errors)
    return result.obj


@dataclass(frozen=True)
class NodeSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None, where: str, resource: str = "") -> NodeSelector:
        """A selector the CRD has accepted; ``where`` is its field (``spec.nodeSelector``)."""
        if not raw:
            return cls()
        labels = raw.get("matchLabels") or {}
        if not isinstance(labels, Mapping):
            raise _fail(resource or where, f"{where}.matchLabels", "must be an object")
        exprs = []
        for i, expr in enumerate(raw.get("matchExpressions") or []):
            op = expr.get("operator")
            if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
                raise _fail(resource or where, f"{where}.matchExpressions[{i}].operator", f"unknown operator {op!r}")
            exprs.append((str(expr.get("key", "")), op, tuple(str(v) for v in expr.get("values") or ())))
        return cls(tuple(sorted((str(k), str(v)) for k, v in labels.items())), tuple(exprs))

    def describe(self) -> str:
        """The selector in kubectl's words: ``app=web,tier in (a,b),!canary``; "" selects everything."""
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for key, op, values in self.match_expressions:
            listed = ",".join(values)
            parts.append(
                {"In": f"{key} in ({listed})", "NotIn": f"{key} notin ({listed})", "Exists": key}.get(op, f"!{key}")
            )
        return ",".join(parts)

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels):
            return False
        for key, op, values in self.match_expressions:
            present = key in labels
            if op == "In" and (not present or labels[key] not in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True)
class Meta:
    name: str
    generation: int = 0
    uid: str = ""
    deleting: bool = False
    finalizers: tuple[str, ...] = ()

    @classmethod
    def parse(cls, obj: Mapping[str, Any], kind: str) -> Meta:
        """The metadata of an object that passed ``checked``."""
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            # The API server would make one from generateName; off the cluster there is no name to use.
            raise _fail(kind, "metadata.name", "required (bpfshare needs the name; generateName is the API server's)")
        return cls(
            name=name,
            generation=int(meta.get("generation") or 0),
            uid=str(meta.get("uid") or ""),
            deleting=bool(meta.get("deletionTimestamp")),
            finalizers=tuple(meta.get("finalizers") or ()),
        )


@dataclass(frozen=True)
class MapResource:
    meta: Meta
    type: MapType
    key_size: int
    value_size: int
    max_entries: int
    flags: MapFlag = MapFlag(0)  # noqa: RUF009  (an immutable IntFlag value)
    pin_name: str = ""
    adopt: str | None = None
    node_selector: NodeSelector = field(default_factory=NodeSelector)
    reclaim_policy: str = "Delete"

    @property
    def name(self) -> str:
        return self.meta.name


@dataclass(frozen=True)
class Bytecode:
    path: str | None = None
    config_map: tuple[str, str, str] | None = None  # namespace, name, key
    inline: str | None = None
    sha256: str = ""

    def describe(self) -> str:
        if self.path is not None:
            return f"path {self.path}"
        if self.config_map is not None:
            return "configMap {}/{} key {}".format(*self.config_map)
        return "inline bytecode"


@dataclass(frozen=True)
class PodTargets:
    """``attach.<kind>.pods``: which pods, and the targets each one gets (interfaces in its network
    namespace for tc and tcx, its cgroup for cgroup programs)."""

    kind: Literal["tc", "tcx", "cgroup"]
    namespace: str
    selector: NodeSelector = field(default_factory=NodeSelector)
    interfaces: tuple[str, ...] = ("eth0",)
    direction: Direction = "ingress"
    priority: int = 1
    cgroup_type: str = ""

    @property
    def needs_netns(self) -> bool:
        return self.kind != "cgroup"

    def describe(self) -> str:
        chosen = f"matching {self.selector.describe()}" if self.selector.describe() else "(every pod)"
        return f"pods of namespace {self.namespace} {chosen}"

    def for_pod(self, pod: str, netns: str, cgroup: str) -> tuple[AttachTarget, ...]:
        """The targets of one pod (``namespace/name``), in its network namespace or cgroup."""
        if self.kind == "cgroup":
            return (CgroupTarget(cgroup, self.cgroup_type, pod=pod),)
        if self.kind == "tc":
            return tuple(TcTarget(i, self.direction, netns, self.priority, pod=pod) for i in self.interfaces)
        return tuple(TcxTarget(i, self.direction, netns, pod=pod) for i in self.interfaces)


@dataclass(frozen=True)
class ProgramResource:
    meta: Meta
    bytecode: Bytecode
    program: str
    targets: tuple[AttachTarget, ...]
    maps: tuple[tuple[str, str], ...] = ()  # object map name -> BpfMap name
    node_selector: NodeSelector = field(default_factory=NodeSelector)
    # attach.*.pods: the targets are this node's selected pods', which the agent puts in ``targets``
    # (``bound``); unbound (``bpfshare apply``, which knows no pods) the engine refuses it.
    pods: PodTargets | None = None
    bound: bool = False

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def attach_kind(self) -> str:
        if self.targets:
            return self.targets[0].kind
        return self.pods.kind if self.pods is not None else ""


def parse_map(obj: Mapping[str, Any]) -> MapResource:
    obj = checked(obj, MAP_KIND)
    meta = Meta.parse(obj, MAP_KIND)
    where = f"{MAP_KIND} {meta.name}"
    spec = obj["spec"]
    try:
        map_type = MapType.parse(spec["type"])  # the CRD's enum: each a kernel map type (test_crd_consistency)
    except ValueError:
        raise _fail(where, "spec.type", f"unknown map type {spec['type']!r}") from None
    try:
        flags = MapFlag.parse_names(spec.get("flags", []))
    except ValueError as exc:
        raise _fail(where, "spec.flags", str(exc)) from None
    pin_name = spec.get("pinName", meta.name)
    if not PIN_NAME.match(pin_name) or pin_name in (".", ".."):  # the CRD's pattern and rules say the same
        field_name = "spec.pinName" if "pinName" in spec else "metadata.name"
        detail = f"{pin_name!r} is not a pin name (one path component: letters, digits, '-', '_')"
        raise _fail(where, field_name, detail)
    adopt = spec.get("adopt")
    if adopt is not None and (not adopt.startswith("/") or "\0" in adopt or ".." in adopt.split("/")):
        raise _fail(where, "spec.adopt", f"{adopt!r} must be an absolute path in bpffs without '..'")
    return MapResource(
        meta=meta,
        type=map_type,
        key_size=spec["keySize"],
        value_size=spec["valueSize"],
        max_entries=spec["maxEntries"],
        flags=flags,
        pin_name=pin_name,
        adopt=adopt,
        node_selector=NodeSelector.parse(spec.get("nodeSelector"), "spec.nodeSelector", where),
        reclaim_policy=spec["reclaimPolicy"],
    )


def _parse_bytecode(raw: Mapping[str, Any]) -> Bytecode:
    digest = str(raw.get("sha256", ""))
    if "configMap" in raw:
        cm = raw["configMap"]
        return Bytecode(config_map=(cm["namespace"], cm["name"], cm["key"]), sha256=digest)
    if "path" in raw:
        return Bytecode(path=raw["path"], sha256=digest)
    return Bytecode(inline=raw["inline"], sha256=digest)


def _parse_pods(kind: str, body: Mapping[str, Any], where: str) -> PodTargets:
    pods = body["pods"]
    selector = NodeSelector.parse(pods.get("selector"), f"spec.attach.{kind}.pods.selector", where)
    if kind == "cgroup":
        return PodTargets("cgroup", pods["namespace"], selector, cgroup_type=body["type"])
    direction: Direction = "ingress" if body["direction"] == "ingress" else "egress"
    interfaces = tuple(body.get("interfaces") or ("eth0",))
    if kind == "tc":
        return PodTargets("tc", pods["namespace"], selector, interfaces, direction, body["priority"])
    return PodTargets("tcx", pods["namespace"], selector, interfaces, direction)


def _parse_attach(raw: Mapping[str, Any], where: str) -> tuple[tuple[AttachTarget, ...], PodTargets | None]:
    kind = next(k for k in ("tc", "tcx", "cgroup") if k in raw)  # exactly one: the CRD's rule
    body = raw[kind]
    if "pods" in body:  # the CRD's rules: exclusive with path and networkNamespace
        return (), _parse_pods(kind, body, where)
    return _parse_fixed(kind, body, where), None


def _parse_fixed(kind: str, body: Mapping[str, Any], where: str) -> tuple[AttachTarget, ...]:
    if kind == "cgroup":
        path = body["path"]
        if "\0" in path or ".." in path.split("/"):  # the CRD's pattern and rule say the same
            raise _fail(where, "spec.attach.cgroup.path", f"{path!r} must stay inside the cgroup v2 root (no '..')")
        return (CgroupTarget(path, body["type"]),)
    direction: Direction = "ingress" if body["direction"] == "ingress" else "egress"
    netns = body.get("networkNamespace")
    if kind == "tc":
        return tuple(TcTarget(i, direction, netns, body["priority"]) for i in body["interfaces"])
    return tuple(TcxTarget(i, direction, netns) for i in body["interfaces"])


def attach_summary(obj: Mapping[str, Any]) -> str:
    """A short human form of ``spec.attach`` for ``kubectl get``: ``tc/ingress eth0,eth1``."""
    spec = obj.get("spec")
    attach = spec.get("attach") if isinstance(spec, Mapping) else None
    if not isinstance(attach, Mapping):
        return ""
    for kind in ("tc", "tcx"):
        body = attach.get(kind)
        if isinstance(body, Mapping) and body:
            where = ",".join(str(i) for i in body.get("interfaces") or (["eth0"] if "pods" in body else []))
            netns = f"@{body['networkNamespace']}" if body.get("networkNamespace") else ""
            return f"{kind}/{body.get('direction', '')} {where}{netns}{_pods_summary(body)}"
    body = attach.get("cgroup")
    if isinstance(body, Mapping) and body:
        where = _pods_summary(body).strip() if "pods" in body else body.get("path", "/")
        return f"cgroup/{body.get('type', '')} {where}"
    return ""


def _pods_summary(body: Mapping[str, Any]) -> str:
    """`` pods shop/app=web`` for attach.*.pods (the namespace, then the selector's labels)."""
    pods = body.get("pods")
    if not isinstance(pods, Mapping):
        return ""
    raw = pods.get("selector")
    selector: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    labels = ",".join(f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items()))
    extra = "+" if selector.get("matchExpressions") else ""
    return f" pods {pods.get('namespace', '')}/{labels or '*'}{extra}"


def parse_program(obj: Mapping[str, Any]) -> ProgramResource:
    obj = checked(obj, PROGRAM_KIND)
    meta = Meta.parse(obj, PROGRAM_KIND)
    where = f"{PROGRAM_KIND} {meta.name}"
    spec = obj["spec"]
    maps = spec.get("maps", {})
    targets, pods = _parse_attach(spec["attach"], where)
    return ProgramResource(
        meta=meta,
        bytecode=_parse_bytecode(spec["bytecode"]),
        program=spec["program"],
        targets=targets,
        maps=tuple(sorted(maps.items())),
        node_selector=NodeSelector.parse(spec.get("nodeSelector"), "spec.nodeSelector", where),
        pods=pods,
    )
