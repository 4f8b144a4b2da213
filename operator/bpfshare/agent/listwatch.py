"""A list and watch of the objects a server-side field selector picks, in a thread of its own with the
kubernetes client: the agent's own Node (``metadata.name=<node>``, nodewatch.py) and the pods of its
node (``spec.nodeName=<node>``, podwatch.py). The API server then sends an agent the events of its own
node's objects instead of the cluster's (kopf can filter only on the client, after receiving them all).

List (for the objects and a resourceVersion), then watch from that resourceVersion, and again from the
last one seen (bookmarks included) when the server ends the watch. An expired resourceVersion (410
Gone) or any error (the API server away, a connection dropped) means a new list, after a backoff while
the errors go on. Each body goes to ``deliver(event_type, body)``; a list that no longer has an object
delivers it as DELETED (its name, namespace and uid), so a deletion missed while away is not lost.
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


def identity(body: dict[str, Any]) -> dict[str, Any]:
    """What names an object: its name, and its namespace and uid when it has them."""
    meta = body.get("metadata") or {}
    return {k: meta[k] for k in ("name", "namespace", "uid") if meta.get(k)}


def object_key(body: dict[str, Any]) -> tuple[str, str]:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class ListWatch:
    """``core.<list_method>`` with ``field_selector``, listed then watched until ``stop``; ``what``
    names it in logs."""

    list_method = ""  # the CoreV1Api method: list_node, list_pod_for_all_namespaces

    def __init__(
        self,
        core: Any,
        field_selector: str,
        deliver: Deliver,
        *,
        what: str,
        server_timeout: int = 300,
        connect_timeout: float = 10.0,
    ) -> None:
        self.core = core  # kubernetes.client.CoreV1Api
        self.field_selector = field_selector
        self.deliver = deliver
        self.what = what
        self.server_timeout = server_timeout
        self.connect_timeout = connect_timeout
        self.resource_version: str | None = None
        self.known: dict[tuple[str, str], dict[str, Any]] = {}  # the identity of what the list and events had
        self.lists = 0
        self.watches = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def list_call(self, **kwargs: Any) -> Any:
        return getattr(self.core, self.list_method)(**kwargs)  # looked up at each call: the client may change

    def keep(self, body: dict[str, Any]) -> bool:
        """Whether a listed object is one of ours (the field selector's, checked again on the client)."""
        return True

    def list_items(self) -> list[dict[str, Any]]:
        """List, remember the list's resourceVersion and what it had; the objects."""
        self.lists += 1
        response = self.list_call(field_selector=self.field_selector, _preload_content=False)
        listing = json.loads(response.data)
        self.resource_version = str(listing["metadata"]["resourceVersion"])
        items = [i for i in listing.get("items") or [] if self.keep(i)]
        self.known = {object_key(i): identity(i) for i in items}
        return items

    def relist(self) -> None:
        """List again and deliver what the list says: each object, and the deletion of those now gone."""
        before = self.known
        items = self.list_items()
        for key, names in before.items():
            if key not in self.known:
                self.deliver("DELETED", {"metadata": names})
        for body in items:
            self.deliver("MODIFIED" if object_key(body) in before else "ADDED", body)

    def watch_once(self) -> None:
        """One watch request from the current resourceVersion, until the server ends it."""
        from kubernetes.client.exceptions import ApiException
        from kubernetes.watch.watch import iter_resp_lines

        self.watches += 1
        response = self.list_call(
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
                if kind == "DELETED":
                    self.known.pop(object_key(body), None)
                else:
                    self.known[object_key(body)] = identity(body)
                self.deliver(kind, body)
        finally:
            response.close()
            response.release_conn()

    def run(self) -> None:
        """Watch until ``stop``: from the list's resourceVersion (``list_items`` first, else it lists itself)."""
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
                    log.debug("%s: resourceVersion %s expired; listing again", self.what, self.resource_version)
                    continue
                delay = next(delays)
                log.warning("watch of %s failed (%s); again in %.1f s", self.what, _describe(exc), delay)
                self._stop.wait(delay)

    def start(self) -> threading.Thread:
        self._stop.clear()
        name = f"watch-{self.what}".replace(" ", "-")
        self._thread = threading.Thread(target=self.run, name=name, daemon=True)
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
