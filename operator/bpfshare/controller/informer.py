"""List-and-watch streams that feed the controller's view, one thread per kind.

Each stream lists (in pages of ``PAGE``), hands the whole listing over, then watches from the
listing's resourceVersion; when the watch ends (server timeout) it watches again from the last
version seen; when that version is too old (410 Gone) or anything fails, it lists again, after a
backoff on errors. So the view sees every change, and an object deleted while the stream was away is
gone from the next listing.

These streams are independent of kopf and of peering: a paused (standby) replica keeps a warm view
and writes nothing; when it becomes active its view is already current. Events are handed to the
event loop with ``call_soon_threadsafe``: the view is only ever changed there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("bpfshare.controller")

PAGE = 500
WATCH_SECONDS = 300  # the server ends each watch after this; the client waits a little longer
# Nodes as metadata only (name, labels): a Node's status is most of its size, and kubelets update it
# every few seconds; the controller reads only which Nodes exist and their labels.
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA_WATCH = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


class Response(Protocol):
    """What the kubernetes client returns with ``_preload_content=False`` (a urllib3 response)."""

    def read(self) -> bytes: ...

    def stream(self, amt: int | None = ..., decode_content: bool | None = ...) -> Iterator[bytes]: ...

    def close(self) -> None: ...

    def release_conn(self) -> None: ...


ListCall = Callable[..., Response]  # a kubernetes client list function with its path arguments bound


@dataclass(frozen=True)
class Sink:
    """Where one stream's listings and events go (its part of the view)."""

    replace: Callable[[list[dict[str, Any]]], None]
    event: Callable[[str, dict[str, Any]], None]


class Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


def lines(response: Response) -> Iterator[bytes]:
    buffer = b""
    for chunk in response.stream(None, False):
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line, buffer = buffer[:end], buffer[end + 1 :]
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


class Informer:
    """One kind's list-and-watch loop in a daemon thread, delivering to ``sink`` on ``loop``."""

    def __init__(
        self,
        name: str,
        call: ListCall,
        sink: Sink,
        loop: asyncio.AbstractEventLoop,
        backoff: Iterable[float],
        *,
        metadata_only: bool = False,
    ) -> None:
        self.name = name
        self.call = call
        self.sink = sink
        self.loop = loop
        self.backoff = backoff
        self.metadata_only = metadata_only
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"watch {name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """The thread ends at its next event or when the server ends the watch; it is a daemon thread,
        so the process does not wait for it. (Closing the response from here would block until the
        thread's read returns.)"""
        self.stopping.set()

    def _deliver(self, fn: Callable[..., None], *args: Any) -> None:
        if not self.stopping.is_set():
            with contextlib.suppress(RuntimeError):  # the loop closed: the operator is stopping
                self.loop.call_soon_threadsafe(fn, *args)

    def _headers(self, watch: bool) -> dict[str, str]:
        if not self.metadata_only:
            return {}
        return {"Accept": METADATA_WATCH if watch else METADATA_LIST}

    def list_all(self) -> tuple[list[dict[str, Any]], str]:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            response = self.call(
                limit=PAGE,
                _continue=token,
                _preload_content=False,
                _request_timeout=(10, 60),
                _headers=self._headers(False),
            )
            try:
                page = json.loads(response.read())
            finally:
                response.release_conn()
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    def watch(self, version: str) -> str:
        """Watch from ``version`` until the server ends the watch; the last version seen."""
        response = self.call(
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=(10, WATCH_SECONDS + 30),
            _headers=self._headers(True),
        )
        try:
            for line in lines(response):
                event = json.loads(line)
                type_, obj = event.get("type"), event.get("object") or {}
                if type_ == "ERROR":
                    if obj.get("code") == 410:
                        raise Expired(obj.get("message"))
                    raise RuntimeError(f"watch error: {obj.get('message') or obj}")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if type_ in ("ADDED", "MODIFIED", "DELETED"):
                    self._deliver(self.sink.event, type_, obj)
        finally:
            response.release_conn()
        return version

    def run(self) -> None:
        delays = iter(self.backoff)
        while not self.stopping.is_set():
            try:
                items, version = self.list_all()
                self._deliver(self.sink.replace, items)
                log.debug("listed %d %s", len(items), self.name)
                delays = iter(self.backoff)
                while not self.stopping.is_set():
                    version = self.watch(version)
            except Expired:
                log.debug("the watch of %s expired; listing again", self.name)
            except Exception as exc:  # the stream must outlive any API outage
                if self.stopping.is_set():
                    return
                delay = next(delays)
                log.warning("the watch of %s failed (%s); listing again in %.1f s", self.name, _reason(exc), delay)
                self.stopping.wait(delay)


def _reason(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    return f"HTTP {status}: {getattr(exc, 'reason', '')}" if status else f"{type(exc).__name__}: {exc}"
