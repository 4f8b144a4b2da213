"""Everything the agent writes to the API server: its own node's state objects, and events.

The agent writes nothing to BpfMaps and BpfPrograms (neither a finalizer nor status: the controller
owns both). Each resource's report on this node is a BpfMapState or BpfProgramState that only this
node's agent writes (``api/states.py``): one server-side apply of the whole object (spec and status:
status is no subresource), as field manager ``bpfshare-agent``, forced (the node's previous agent
process was the same writer). A state goes when the node released its resource: first the agent's
finalizer (``bpfshare.io/agent``, which keeps a foreground deletion of the resource from removing
the state before the node let go), then the object.
"""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime
from typing import Any, cast

from bpfshare.api.resources import API_VERSION, GROUP, VERSION
from bpfshare.api.states import AGENT_FIELD_MANAGER, AGENT_FINALIZER, StateKind
from bpfshare.errors import BpfshareError

log = logging.getLogger("bpfshare.agent")
APPLY = "application/apply-patch+yaml"
JSON_PATCH = "application/json-patch+json"
EVENT_NAMESPACE = "default"  # events of cluster-scoped objects live in the default namespace


def _api_message(exc: Any) -> str:
    """The Status message of an API error (it names the invalid field), else the HTTP reason."""
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


class Writer:
    def __init__(self, api_client: Any, node: str) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.node = node
        self.manager = AGENT_FIELD_MANAGER
        self.requests = 0  # API requests beyond the watches: the idle-cost measurement, the probe

    def _refused(self, kind: StateKind, name: str, exc: Any) -> BpfshareError:
        return BpfshareError(f"{kind.kind} {name}: API server refused the write ({exc.status}): {_api_message(exc)}")

    def list_states(self, kind: StateKind) -> list[dict[str, Any]]:
        """This node's states of ``kind``, selected by the API server (``spec.node`` is a selectable
        field): the agent never receives another node's."""
        self.requests += 1
        listing = cast(
            "dict[str, Any]",
            self.custom.list_cluster_custom_object(
                GROUP, VERSION, kind.plural, field_selector=f"spec.node={self.node}"
            ),
        )
        return list(listing.get("items") or [])

    def apply_state(self, kind: StateKind, body: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply of a whole state object (``api.states.state_body``); the object as the
        API server now holds it."""
        from kubernetes.client.exceptions import ApiException

        name = body["metadata"]["name"]
        self.requests += 1
        try:
            result = self.custom.patch_cluster_custom_object(
                GROUP, VERSION, kind.plural, name, body, field_manager=self.manager, force=True, _content_type=APPLY
            )
        except ApiException as exc:
            raise self._refused(kind, name, exc) from None
        return result if isinstance(result, dict) else {}

    def delete_state(self, kind: StateKind, name: str) -> None:
        """Drop the agent's finalizer, then delete the state; one already gone is no error."""
        from kubernetes.client.exceptions import ApiException

        try:
            if self._drop_finalizer(kind, name):
                self.requests += 1
                self.custom.delete_cluster_custom_object(GROUP, VERSION, kind.plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise self._refused(kind, name, exc) from None

    def _drop_finalizer(self, kind: StateKind, name: str) -> bool:
        """Remove exactly ``bpfshare.io/agent``; False if the object is gone. The agent's finalizer is
        normally the only one: a JSON patch that tests for that removes it in one request; if the list
        is another (someone added one), it is read and patched with that list minus ours."""
        from kubernetes.client.exceptions import ApiException

        only_ours: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/finalizers", "value": [AGENT_FINALIZER]},
            {"op": "remove", "path": "/metadata/finalizers"},
        ]
        self.requests += 1
        try:
            self.custom.patch_cluster_custom_object(
                GROUP, VERSION, kind.plural, name, only_ours, _content_type=JSON_PATCH
            )
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            if exc.status != 422:  # 422: the test failed, the list is another
                raise
        self.requests += 1
        current = cast("dict[str, Any]", self.custom.get_cluster_custom_object(GROUP, VERSION, kind.plural, name))
        finalizers = list((current.get("metadata") or {}).get("finalizers") or [])
        if AGENT_FINALIZER in finalizers:
            rest = [f for f in finalizers if f != AGENT_FINALIZER]
            exact: list[dict[str, Any]] = [
                {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                {"op": "replace", "path": "/metadata/finalizers", "value": rest},
            ]
            self.requests += 1
            self.custom.patch_cluster_custom_object(GROUP, VERSION, kind.plural, name, exact, _content_type=JSON_PATCH)
        return True

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
        """A GET of the ConfigMap a BpfProgram names (there is no ConfigMap watch): each time the
        program's bytecode is needed, so at every resync too, which picks up a changed ConfigMap."""
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
