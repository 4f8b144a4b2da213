"""Where a pod is on this node, from what its sandbox's runtime says: the network namespace to enter
for tc and tcx, the cgroup to attach cgroup programs to (pure: no runtime, no kernel).

The runtime spec of the sandbox (PodSandboxStatus with ``verbose``: ``info["info"]``, a JSON object
whose ``runtimeSpec`` containerd and CRI-O both fill) names the network namespace's bind mount
(``linux.namespaces[type=network].path``, e.g. /var/run/netns/cni-…) and the sandbox's cgroup
(``linux.cgroupsPath``). The pod's cgroup is that cgroup's parent: the kubelet makes
``kubepods/<qos>/pod<uid>`` and the runtime puts each container, the sandbox's pause first, below it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bpfshare.cri.messages import Sandbox
from bpfshare.errors import BpfshareError


@dataclass(frozen=True)
class PodPlace:
    """One running pod's sandbox on this node."""

    uid: str
    namespace: str
    name: str
    sandbox_id: str
    netns: str  # the bind mount of its network namespace, as the runtime made it; "" with hostNetwork
    cgroup: str  # the pod's cgroup, relative to the cgroup v2 root (no leading /)
    pid: int = 0  # the sandbox's first process (pause), when the runtime says


def expand_slice(name: str) -> str:
    """A systemd slice as a path below the cgroup root, as runc's systemd driver (ExpandSlice) does:
    ``kubepods-besteffort-pod1.slice`` ->
    ``kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice``."""
    if not name.endswith(".slice") or "/" in name:
        raise BpfshareError(f"cgroup slice {name!r}: not a systemd slice name")
    base = name[: -len(".slice")]
    if base == "-":
        return ""
    if not base or base.startswith("-") or base.endswith("-") or "--" in base:
        raise BpfshareError(f"cgroup slice {name!r}: not a systemd slice name")
    parts = base.split("-")
    return "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def pod_cgroup(cgroups_path: str) -> str:
    """The pod's cgroup (relative to the v2 root) from its sandbox's ``linux.cgroupsPath``.

    cgroupfs driver: a path, ``/kubepods/besteffort/pod<uid>/<sandbox id>``: its parent.
    systemd driver: ``slice:prefix:name``, ``kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>``:
    the slice is the pod's cgroup."""
    if not cgroups_path:
        raise BpfshareError("the runtime gave the sandbox no cgroupsPath")
    if ":" in cgroups_path and not cgroups_path.startswith("/"):
        slice_, _, _ = cgroups_path.partition(":")
        return expand_slice(slice_)
    parent = cgroups_path.rstrip("/").rpartition("/")[0]
    return parent.strip("/")


def _network_namespace(spec: dict[str, Any]) -> str:
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if isinstance(ns, dict) and ns.get("type") == "network":
            return str(ns.get("path") or "")
    return ""


def place_of(sandbox: Sandbox, info: dict[str, str]) -> PodPlace:
    """The pod's place from its sandbox status and verbose info; a clear error naming the pod if the
    runtime did not say. A hostNetwork pod has no network namespace of its own (``netns`` "")."""
    who = f"pod {sandbox.metadata.namespace}/{sandbox.metadata.name} (sandbox {sandbox.id[:13]})"
    try:
        verbose = json.loads(info.get("info") or "{}")
    except json.JSONDecodeError as exc:
        raise BpfshareError(f"{who}: the runtime's sandbox info is not JSON: {exc}") from exc
    spec = verbose.get("runtimeSpec") if isinstance(verbose, dict) else None
    if not isinstance(spec, dict):
        raise BpfshareError(f"{who}: the runtime's sandbox info has no runtimeSpec (is the sandbox still starting?)")
    netns = _network_namespace(spec)
    cgroup = pod_cgroup(str((spec.get("linux") or {}).get("cgroupsPath") or ""))
    pid = verbose.get("pid") if isinstance(verbose.get("pid"), int) else 0
    return PodPlace(
        uid=sandbox.metadata.uid,
        namespace=sandbox.metadata.namespace,
        name=sandbox.metadata.name,
        sandbox_id=sandbox.id,
        netns=netns,
        cgroup=cgroup,
        pid=pid,
    )
