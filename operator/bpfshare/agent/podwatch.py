"""The agent's watch on the pods of its own node, and on no others: a list and a watch (listwatch.py)
with the server-side field selector ``spec.nodeName=<node>``, which the API server indexes for the
kubelets; an agent never receives the events of another node's pods."""

from __future__ import annotations

from typing import Any

from bpfshare.agent.listwatch import Deliver, ListWatch


class PodWatch(ListWatch):
    list_method = "list_pod_for_all_namespaces"

    def __init__(self, core: Any, node: str, deliver: Deliver, **options: Any) -> None:
        super().__init__(core, f"spec.nodeName={node}", deliver, what=f"the pods of node {node}", **options)
        self.node = node

    def keep(self, body: dict[str, Any]) -> bool:
        return bool((body.get("spec") or {}).get("nodeName") == self.node)
