"""The agent's watch on the pods of its own node, and on no others: a list and a watch (listwatch.py)
with the server-side field selector ``spec.nodeName=<node>``, which the API server indexes for the
kubelets; an agent never receives the events of another node's pods."""

from __future__ import annotations

from typing import Any

from bpfshare.agent.listwatch import Deliver, ListWatch


class PodWatch(ListWatch):
    def __init__(
        self,
        core: Any,
        node: str,
        deliver: Deliver,
        *,
        server_timeout: int = 300,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__(
            self._list,
            f"spec.nodeName={node}",
            deliver,
            what=f"the pods of node {node}",
            server_timeout=server_timeout,
            connect_timeout=connect_timeout,
        )
        self.core = core  # kubernetes.client.CoreV1Api
        self.node = node

    def _list(self, **kwargs: Any) -> Any:
        return self.core.list_pod_for_all_namespaces(**kwargs)  # looked up at each call: tests swap the client

    def keep(self, body: dict[str, Any]) -> bool:
        return bool((body.get("spec") or {}).get("nodeName") == self.node)
