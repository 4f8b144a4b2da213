"""BpfMap and BpfProgram resources as typed, validated data (no kernel, no cluster).

The API server validates objects against the CRD schema; ``bpfshare apply -f`` has no API server,
so the same rules are checked here, naming the field, before anything touches the node.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bpfshare.api.targets import AttachTarget, CgroupTarget, TcTarget, TcxTarget
from bpfshare.errors import BpfshareError
from bpfshare.types import CGROUP_ATTACH_TYPES, Direction, MapFlag, MapType

GROUP = "bpfshare.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
MAP_KIND = "BpfMap"
PROGRAM_KIND = "BpfProgram"
MAP_PLURAL = "bpfmaps"
PROGRAM_PLURAL = "bpfprograms"

# One path component; bpffs refuses names containing '.'.
PIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}$")
DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ResourceError(BpfshareError):
    """A resource is malformed; the message names the resource and the field."""


@dataclass(frozen=True)
class NodeSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None, where: str) -> NodeSelector:
        if not raw:
            return cls()
        labels = raw.get("matchLabels") or {}
        if not isinstance(labels, Mapping):
            raise ResourceError(f"{where}.matchLabels: must be a map")
        exprs = []
        for i, expr in enumerate(raw.get("matchExpressions") or []):
            op = expr.get("operator")
            if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
                raise ResourceError(f"{where}.matchExpressions[{i}].operator: unknown operator {op!r}")
            exprs.append((str(expr.get("key", "")), op, tuple(str(v) for v in expr.get("values") or ())))
        return cls(tuple(sorted((str(k), str(v)) for k, v in labels.items())), tuple(exprs))

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
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str) or not DNS_NAME.match(name):
            raise ResourceError(f"{kind}: metadata.name {name!r} is not a valid resource name")
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
class ProgramResource:
    meta: Meta
    bytecode: Bytecode
    program: str
    targets: tuple[AttachTarget, ...]
    maps: tuple[tuple[str, str], ...] = ()  # object map name -> BpfMap name
    node_selector: NodeSelector = field(default_factory=NodeSelector)

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def attach_kind(self) -> str:
        return self.targets[0].kind if self.targets else ""


def _int(spec: Mapping[str, Any], key: str, where: str, low: int, high: int, default: int | None = None) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ResourceError(f"{where}.{key}: must be an integer, not {value!r}")
    if not low <= value <= high:
        raise ResourceError(f"{where}.{key}: {value} is out of range [{low}, {high}]")
    return value


def parse_map(obj: Mapping[str, Any]) -> MapResource:
    meta = Meta.parse(obj, MAP_KIND)
    where = f"BpfMap {meta.name}: spec"
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise ResourceError(f"{where}: missing")
    try:
        map_type = MapType.parse(str(spec.get("type", "")))
    except ValueError:
        raise ResourceError(f"{where}.type: unknown map type {spec.get('type')!r}") from None
    try:
        flags = MapFlag.parse_names([str(f) for f in spec.get("flags") or []])
    except ValueError as exc:
        raise ResourceError(f"{where}.flags: {exc}") from None
    pin_name = spec.get("pinName") or meta.name
    if not isinstance(pin_name, str) or not PIN_NAME.match(pin_name) or pin_name in (".", ".."):
        raise ResourceError(
            f"{where}.pinName: {pin_name!r} must be a single path component (letters, digits, '-', '_'; no '/' or '.')"
        )
    adopt = spec.get("adopt")
    if adopt is not None and (
        not isinstance(adopt, str) or not adopt.startswith("/") or "\0" in adopt or ".." in adopt.split("/")
    ):
        raise ResourceError(f"{where}.adopt: {adopt!r} must be an absolute path in bpffs without '..'")
    policy = spec.get("reclaimPolicy", "Delete")
    if policy not in ("Delete", "Retain"):
        raise ResourceError(f"{where}.reclaimPolicy: must be Delete or Retain, not {policy!r}")
    return MapResource(
        meta=meta,
        type=map_type,
        key_size=_int(spec, "keySize", where, 0, 1 << 16),
        value_size=_int(spec, "valueSize", where, 0, 1 << 24),
        max_entries=_int(spec, "maxEntries", where, 0, (1 << 32) - 1),
        flags=flags,
        pin_name=pin_name,
        adopt=adopt,
        node_selector=NodeSelector.parse(spec.get("nodeSelector"), f"{where}.nodeSelector"),
        reclaim_policy=policy,
    )


def _parse_bytecode(raw: Any, where: str) -> Bytecode:
    if not isinstance(raw, Mapping):
        raise ResourceError(f"{where}: missing")
    sources = [k for k in ("path", "configMap", "inline") if raw.get(k)]
    if len(sources) != 1:
        raise ResourceError(f"{where}: exactly one of path, configMap, inline is required (got {sources or 'none'})")
    digest = str(raw.get("sha256") or "")
    if digest and not SHA256.match(digest):
        raise ResourceError(f"{where}.sha256: {digest!r} is not 64 lowercase hex digits")
    if raw.get("configMap"):
        cm = raw["configMap"]
        parts = tuple(str(cm.get(k) or "") for k in ("namespace", "name", "key"))
        if not all(parts):
            raise ResourceError(f"{where}.configMap: namespace, name and key are required")
        return Bytecode(config_map=parts, sha256=digest)  # type: ignore[arg-type]
    if raw.get("path"):
        return Bytecode(path=str(raw["path"]), sha256=digest)
    return Bytecode(inline=str(raw["inline"]), sha256=digest)


def _interfaces(raw: Mapping[str, Any], where: str) -> list[str]:
    names = raw.get("interfaces")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ResourceError(f"{where}.interfaces: a non-empty list of interface names is required")
    return names


def _direction(raw: Mapping[str, Any], where: str) -> Direction:
    direction = raw.get("direction")
    if direction == "ingress":
        return "ingress"
    if direction == "egress":
        return "egress"
    raise ResourceError(f"{where}.direction: must be ingress or egress, not {direction!r}")


def _parse_attach(raw: Any, where: str) -> tuple[AttachTarget, ...]:
    if not isinstance(raw, Mapping):
        raise ResourceError(f"{where}: missing")
    kinds = [k for k in ("tc", "tcx", "cgroup") if raw.get(k)]
    if len(kinds) != 1:
        raise ResourceError(f"{where}: exactly one of tc, tcx, cgroup is required (got {kinds or 'none'})")
    kind = kinds[0]
    body = raw[kind]
    here = f"{where}.{kind}"
    if kind == "cgroup":
        type_ = body.get("type")
        if type_ not in CGROUP_ATTACH_TYPES:
            raise ResourceError(f"{here}.type: unknown cgroup attach type {type_!r}")
        path = str(body.get("path") or "/")
        if "\0" in path or ".." in path.split("/"):
            raise ResourceError(f"{here}.path: {path!r} must stay inside the cgroup v2 root (no '..')")
        return (CgroupTarget(path, type_),)
    direction = _direction(body, here)
    netns = body.get("networkNamespace") or None
    if kind == "tc":
        priority = _int(body, "priority", here, 1, 65535, default=1)
        return tuple(TcTarget(i, direction, netns, priority) for i in _interfaces(body, here))
    return tuple(TcxTarget(i, direction, netns) for i in _interfaces(body, here))


def attach_summary(obj: Mapping[str, Any]) -> str:
    """A short human form of ``spec.attach`` for ``kubectl get``: ``tc/ingress eth0,eth1``."""
    attach = (obj.get("spec") or {}).get("attach") or {}
    for kind in ("tc", "tcx"):
        if attach.get(kind):
            body = attach[kind]
            where = ",".join(body.get("interfaces") or [])
            netns = f"@{body['networkNamespace']}" if body.get("networkNamespace") else ""
            return f"{kind}/{body.get('direction', '')} {where}{netns}"
    if attach.get("cgroup"):
        return f"cgroup/{attach['cgroup'].get('type', '')} {attach['cgroup'].get('path', '/')}"
    return ""


def parse_program(obj: Mapping[str, Any]) -> ProgramResource:
    meta = Meta.parse(obj, PROGRAM_KIND)
    where = f"BpfProgram {meta.name}: spec"
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise ResourceError(f"{where}: missing")
    program = spec.get("program")
    if not isinstance(program, str) or not program:
        raise ResourceError(f"{where}.program: the function or section name is required")
    maps = spec.get("maps") or {}
    if not isinstance(maps, Mapping):
        raise ResourceError(f"{where}.maps: must map object map names to BpfMap names")
    for obj_map, bpfmap in maps.items():
        if not isinstance(bpfmap, str) or not DNS_NAME.match(bpfmap):
            raise ResourceError(f"{where}.maps.{obj_map}: {bpfmap!r} is not a BpfMap name")
    return ProgramResource(
        meta=meta,
        bytecode=_parse_bytecode(spec.get("bytecode"), f"{where}.bytecode"),
        program=program,
        targets=_parse_attach(spec.get("attach"), f"{where}.attach"),
        maps=tuple(sorted((str(k), str(v)) for k, v in maps.items())),
        node_selector=NodeSelector.parse(spec.get("nodeSelector"), f"{where}.nodeSelector"),
    )
