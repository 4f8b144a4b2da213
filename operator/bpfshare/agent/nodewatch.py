"""The agent's watch on its own Node, and on no other: a list and a watch (listwatch.py) with the
server-side field selector ``metadata.name=<node>``, so that the API server sends this agent the
events of one Node instead of every Node's (kubelets update theirs every few seconds)."""

from __future__ import annotations

from typing import Any

from bpfshare.agent.listwatch import Deliver, ListWatch, backoff

__all__ = ["NodeWatch", "backoff"]


class NodeWatch(ListWatch):
    list_method = "list_node"

    def __init__(self, core: Any, node: str, deliver: Deliver, **options: Any) -> None:
        super().__init__(core, f"metadata.name={node}", deliver, what=f"Node {node}", **options)
        self.node = node

    @property
    def present(self) -> bool:
        """Whether the last list or event had the Node."""
        return bool(self.known)

    def keep(self, body: dict[str, Any]) -> bool:
        return bool((body.get("metadata") or {}).get("name") == self.node)

    def list(self) -> dict[str, Any] | None:
        """List the Node (one at most) and remember the list's resourceVersion; the body or None."""
        items = self.list_items()
        return items[0] if items else None
