"""Everything the agent writes to the API server, each write owned by this node alone.

Finalizers and status entries go through server-side apply with a field manager per node: the
server merges ``metadata.finalizers`` (a set) and ``status.nodes`` (a list keyed by ``node``) per
manager, so N agents never overwrite each other's entries, with no read-modify-write races and no
per-node data in annotations.
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import UTC, datetime
from typing import Any

from bpfshare.api.resources import API_VERSION, GROUP, MAP_KIND, MAP_PLURAL, PROGRAM_PLURAL, VERSION
from bpfshare.errors import BpfshareError

log = logging.getLogger("bpfshare.agent")
APPLY = "application/apply-patch+yaml"
PLURALS = {MAP_KIND: MAP_PLURAL, "BpfProgram": PROGRAM_PLURAL}
EVENT_NAMESPACE = "default"  # events of cluster-scoped objects live in the default namespace


def _short(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{text[: limit - 11].rstrip('.-')}-{digest}"


def _api_message(exc: Any) -> str:
    """The Status message of an API error (it names the invalid field), else the HTTP reason."""
    import json

    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def finalizer_name(node: str) -> str:
    """``bpfshare.io/node-<node>``: a valid qualified name (name part at most 63 characters)."""
    part = re.sub(r"[^a-z0-9.-]", "-", node.lower()).strip(".-") or "node"
    return f"{GROUP}/{_short('node-' + part, 63)}"


def field_manager(node: str) -> str:
    return _short(f"bpfshare-agent-{node}", 128)


class Writer:
    def __init__(self, api_client: Any, node: str) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.node = node
        self.manager = field_manager(node)
        self.finalizer = finalizer_name(node)
        self.requests = 0  # for the idle-cost measurement

    def _patch(self, kind: str, name: str, body: dict[str, Any], status: bool) -> None:
        from kubernetes.client.exceptions import ApiException

        call = self.custom.patch_cluster_custom_object_status if status else self.custom.patch_cluster_custom_object
        self.requests += 1
        try:
            call(GROUP, VERSION, PLURALS[kind], name, body, field_manager=self.manager, force=True, _content_type=APPLY)
        except ApiException as exc:
            if exc.status == 404:
                return  # deleted meanwhile: nothing to record
            raise BpfshareError(
                f"{kind} {name}: API server refused the write ({exc.status}): {_api_message(exc)}"
            ) from None

    def set_finalizer(self, kind: str, name: str, present: bool) -> None:
        meta: dict[str, Any] = {"name": name}
        if present:
            meta["finalizers"] = [self.finalizer]
        self._patch(kind, name, {"apiVersion": API_VERSION, "kind": kind, "metadata": meta}, status=False)

    def set_status(
        self, kind: str, name: str, entry: dict[str, Any] | None, shared: dict[str, Any] | None = None
    ) -> None:
        """Apply this node's entry (``None``: drop it; the other nodes' entries stay).

        Besides ``nodes[]``, the node's keys in the summary maps that ``kubectl get`` prints
        (``phases`` and ``mapIds``/``programIds``, node -> value) are owned by this node too.
        ``shared`` fields (the same value from every node, such as ``attach``) are co-owned.
        """
        status: dict[str, Any] = {"nodes": [], "phases": {}}
        if entry is not None and shared:
            status.update(shared)
        id_field = "mapId" if kind == MAP_KIND else "programId"
        summary = "mapIds" if kind == MAP_KIND else "programIds"
        status[summary] = {}
        if entry is not None:
            status["nodes"].append(entry)
            status["phases"][self.node] = entry["phase"]
            if entry.get(id_field) is not None:
                status[summary][self.node] = entry[id_field]
        body = {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "status": status}
        self._patch(kind, name, body, status=True)

    def post_event(self, body: dict[str, Any], kind: str, type_: str, reason: str, message: str) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        meta = body.get("metadata") or {}
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta.get('name', 'bpfshare')}."),
            involved_object=client.V1ObjectReference(
                api_version=API_VERSION, kind=kind, name=meta.get("name"), uid=meta.get("uid")
            ),
            reason=reason,
            message=message[:1024],
            type=type_,
            source=client.V1EventSource(component="bpfshare-agent", host=self.node),
            reporting_component="bpfshare.io/agent",
            reporting_instance=self.node,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        self.requests += 1
        try:
            self.core.create_namespaced_event(EVENT_NAMESPACE, event)
        except ApiException as exc:
            log.warning("cannot post event %s on %s %s: %s", reason, kind, meta.get("name"), exc.reason)

    def read_config_map(self, namespace: str, name: str, key: str) -> bytes:
        import base64

        from kubernetes.client.exceptions import ApiException

        self.requests += 1
        where = f"spec.bytecode.configMap {namespace}/{name}"
        try:
            cm = self.core.read_namespaced_config_map(name, namespace)
        except ApiException as exc:
            raise BpfshareError(f"{where}: {exc.status} {exc.reason}") from None
        binary = cm.binary_data or {}
        if key in binary:
            return base64.b64decode(binary[key])
        if key in (cm.data or {}):
            raise BpfshareError(f"{where}: key {key} is in data, not binaryData (an ELF object is binary)")
        raise BpfshareError(f"{where}: no key {key} in binaryData")
