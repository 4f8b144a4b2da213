"""The controller's API calls: the writer's writes (``writer.Api``) and the informers' list calls."""

from __future__ import annotations

import functools
from typing import Any, cast

from bpfshare.api.resources import GROUP, MAP_KIND, MAP_PLURAL, PROGRAM_PLURAL, VERSION
from bpfshare.api.states import AGENT_FINALIZER, CONTROLLER_FIELD_MANAGER
from bpfshare.controller.informer import ListCall
from bpfshare.controller.release import finalizer_patch
from bpfshare.controller.view import Key, StateEntry
from bpfshare.controller.writer import Conflict

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
TIMEOUT = (10, 30)  # seconds to connect, to read: a write never hangs a step (and a pause) for long


def plural(key: Key) -> str:
    return MAP_PLURAL if key[0] == MAP_KIND else PROGRAM_PLURAL


class KubeApi:
    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)

    def _gone_is_none(self, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            result = fn(*args, _request_timeout=TIMEOUT, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status in (409, 422) and kwargs.get("_content_type") == JSON_PATCH:
                raise Conflict(str(exc.reason)) from None
            raise
        return result if isinstance(result, dict) else {}

    def patch_status(self, key: Key, patch: dict[str, Any]) -> dict[str, Any] | None:
        return self._patch(self.custom.patch_cluster_custom_object_status, key, patch, MERGE_PATCH)

    def patch_finalizers(self, key: Key, patch: list[dict[str, Any]]) -> dict[str, Any] | None:
        return self._patch(self.custom.patch_cluster_custom_object, key, patch, JSON_PATCH)

    def _patch(self, fn: Any, key: Key, patch: Any, content_type: str) -> dict[str, Any] | None:
        return self._gone_is_none(
            fn, GROUP, VERSION, plural(key), key[1], patch,
            field_manager=CONTROLLER_FIELD_MANAGER, _content_type=content_type,
        )  # fmt: skip

    def get(self, key: Key) -> dict[str, Any] | None:
        return self._gone_is_none(self.custom.get_cluster_custom_object, GROUP, VERSION, plural(key), key[1])

    def delete_state(self, entry: StateEntry) -> None:
        """The agent's finalizer off (the agent of a vanished node never removes it), then the object."""
        for _ in range(5):
            body = self._gone_is_none(
                self.custom.get_cluster_custom_object, GROUP, VERSION, entry.kind.plural, entry.name
            )
            if body is None:
                return
            meta = body.get("metadata") or {}
            current = list(meta.get("finalizers") or [])
            rest = [f for f in current if f != AGENT_FINALIZER]
            patch = finalizer_patch(current, rest, str(meta.get("resourceVersion")))
            try:
                if patch is not None:
                    self._gone_is_none(
                        self.custom.patch_cluster_custom_object,
                        GROUP,
                        VERSION,
                        entry.kind.plural,
                        entry.name,
                        patch,
                        field_manager=CONTROLLER_FIELD_MANAGER,
                        _content_type=JSON_PATCH,
                    )
            except Conflict:
                continue
            self._gone_is_none(self.custom.delete_cluster_custom_object, GROUP, VERSION, entry.kind.plural, entry.name)
            return
        raise Conflict(f"{entry.kind.kind} {entry.name}: its finalizers keep changing")

    def ensure_peering(self, group: str, version: str, plural: str, kind: str, name: str) -> bool:
        """Create the peering object if there is none; False while its CRD is not served yet.

        The controller makes it rather than the install: one ``kubectl apply -k deploy/`` cannot create
        an object whose CRD it creates in the same run (the kind is unknown until it is established)."""
        from kubernetes.client.exceptions import ApiException

        if self._gone_is_none(self.custom.get_cluster_custom_object, group, version, plural, name) is not None:
            return True
        body = {"apiVersion": f"{group}/{version}", "kind": kind, "metadata": {"name": name}}
        try:
            self.custom.create_cluster_custom_object(group, version, plural, body, _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status == 409:  # another replica made it meanwhile
                return True
            if exc.status == 404:  # the CRD is not served (yet)
                return False
            raise
        return True

    # -- the informers' calls ---------------------------------------------------------------------

    def list_custom(self, plural: str) -> ListCall:
        return cast(ListCall, functools.partial(self.custom.list_cluster_custom_object, GROUP, VERSION, plural))

    def list_nodes(self) -> ListCall:
        return cast(ListCall, self.core.list_node)
