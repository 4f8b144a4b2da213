"""The agent's watch on its own Node, and on no other: a list and a watch with a server-side field
selector ``metadata.name=<node>``, so that the API server sends this agent the events of one Node
instead of every Node's (kubelets update theirs every few seconds; kopf can filter only on the
client, after receiving them all).

A thread of its own with the kubernetes client: list (for the labels and a resourceVersion), then
watch from that resourceVersion, and again from the last one seen (bookmarks included) when the
server ends the watch. An expired resourceVersion (410 Gone) or any error (the API server away, a
connection dropped) means a new list, after a backoff while the errors go on. Each body goes to
``deliver(event_type, body)``; a list that no longer has the Node delivers it as DELETED.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("bpfshare.agent")

Deliver = Callable[[str | None, dict[str, Any]], None]


def backoff() -> Iterator[float]:
    """Seconds between attempts while the API server fails: 0.5, 1, 2, 3, then 5 forever."""
    return itertools.chain([0.5, 1.0, 2.0, 3.0], itertools.repeat(5.0))


class NodeWatch:
    def __init__(
        self,
        core: Any,
        node: str,
        deliver: Deliver,
        *,
        server_timeout: int = 300,
        connect_timeout: float = 10.0,
    ) -> None:
        self.core = core  # kubernetes.client.CoreV1Api
        self.node = node
        self.deliver = deliver
        self.server_timeout = server_timeout
        self.connect_timeout = connect_timeout
        self.field_selector = f"metadata.name={node}"
        self.resource_version: str | None = None
        self.present = False  # whether the last list or event had the Node
        self.lists = 0
        self.watches = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def list(self) -> dict[str, Any] | None:
        """List the Node (one at most) and remember the list's resourceVersion; the body or None."""
        self.lists += 1
        response = self.core.list_node(field_selector=self.field_selector, _preload_content=False)
        listing = json.loads(response.data)
        self.resource_version = str(listing["metadata"]["resourceVersion"])
        items = [i for i in listing.get("items") or [] if (i.get("metadata") or {}).get("name") == self.node]
        body = items[0] if items else None
        self.present = body is not None
        return body

    def relist(self) -> None:
        """List again and deliver what the list says (the Node, or its deletion if it is gone)."""
        was_present = self.present
        body = self.list()
        if body is not None:
            self.deliver("MODIFIED" if was_present else "ADDED", body)
        elif was_present:
            self.deliver("DELETED", {"metadata": {"name": self.node}})

    def watch_once(self) -> None:
        """One watch request from the current resourceVersion, until the server ends it."""
        from kubernetes.client.exceptions import ApiException
        from kubernetes.watch.watch import iter_resp_lines

        self.watches += 1
        response = self.core.list_node(
            field_selector=self.field_selector,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            watch=True,
            timeout_seconds=self.server_timeout,
            _preload_content=False,
            _request_timeout=(self.connect_timeout, self.server_timeout + 30),
        )
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, body = event.get("type"), event.get("object") or {}
                if kind == "ERROR":  # a Status: 410 Gone when the resourceVersion is too old
                    raise ApiException(status=body.get("code"), reason=body.get("message"))
                version = (body.get("metadata") or {}).get("resourceVersion")
                if version:
                    self.resource_version = str(version)
                if kind == "BOOKMARK":
                    continue
                if self._stop.is_set():
                    return
                self.present = kind != "DELETED"
                self.deliver(kind, body)
        finally:
            response.close()
            response.release_conn()

    def run(self) -> None:
        """Watch until ``stop``: from the list's resourceVersion (``list`` first, else it lists itself)."""
        delays = backoff()
        need_list = self.resource_version is None
        while not self._stop.is_set():
            try:
                if need_list:
                    self.relist()
                    need_list = False
                self.watch_once()
                delays = backoff()  # a watch that ended normally: the server is back
            except Exception as exc:
                if self._stop.is_set():
                    return
                need_list = True
                status = getattr(exc, "status", None)
                if status == 410:
                    log.debug("node watch: resourceVersion %s expired; listing again", self.resource_version)
                    continue
                delay = next(delays)
                log.warning("watch of Node %s failed (%s); again in %.1f s", self.node, _describe(exc), delay)
                self._stop.wait(delay)

    def start(self) -> threading.Thread:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name=f"node-watch-{self.node}", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        """Ask the thread to end (it does at its next event or when the server ends the watch)."""
        self._stop.set()


def _describe(exc: BaseException) -> str:
    status, reason = getattr(exc, "status", None), getattr(exc, "reason", None)
    if status is not None:
        return f"{status} {reason}"
    return f"{type(exc).__name__}: {exc}"
