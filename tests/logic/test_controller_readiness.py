"""The controller's readiness, ``GET /readyz`` on ``--readiness HOST:PORT`` (what the Deployment's
readinessProbe asks): 503 with the reason until each of its list-and-watch streams has delivered its
first listing, 200 ``ok`` afterwards. The real server on 127.0.0.1 (a free port), asked over HTTP; the
real Controller and its streams (threads), with the kubernetes client's list calls answered by
``FakeLists``, which holds back the listings it is told to."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from kubernetes import client

from bpfshare.agent.readiness import Server, readyz_app, serve
from bpfshare.controller.operator import Controller, not_ready


def get(server: Server, path: str = "/readyz") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{server.host}:{server.port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Response:
    """A urllib3 response as the client returns it with ``_preload_content=False``."""

    def __init__(self, body: bytes, closed: threading.Event | None = None) -> None:
        self.body = body
        self.closed = closed

    def read(self) -> bytes:
        return self.body

    def stream(self, amt: int | None = None, decode_content: bool | None = None) -> Iterator[bytes]:
        if self.closed is not None:  # a watch with no events, which the "server" ends soon
            self.closed.wait(0.05)
        yield from ()

    def close(self) -> None: ...

    def release_conn(self) -> None: ...


class FakeLists:
    """CustomObjectsApi.list_cluster_custom_object and CoreV1Api.list_node: empty listings, each one
    given only once its kind is released; watches that see nothing."""

    def __init__(self, held: set[str]) -> None:
        self.released = {kind: threading.Event() for kind in held}
        self.stopped = threading.Event()

    def release(self, kind: str) -> None:
        self.released[kind].set()

    def _answer(self, kind: str, **kw: Any) -> Response:
        if kw.get("watch"):
            return Response(b"", self.stopped)
        if kind in self.released:
            self.released[kind].wait(30)
        return Response(json.dumps({"items": [], "metadata": {"resourceVersion": "1"}}).encode())

    def list_cluster_custom_object(self, group: str, version: str, plural: str, **kw: Any) -> Response:
        return self._answer(plural, **kw)

    def list_node(self, **kw: Any) -> Response:
        return self._answer("nodes", **kw)


def test_not_ready_until_every_stream_has_listed_then_ready() -> None:
    controller = Controller(client.ApiClient())
    lists = FakeLists(held={"nodes", "bpfprogramstates"})
    controller.kube.custom = controller.kube.core = lists
    server = serve("127.0.0.1:0", readyz_app(lambda: not_ready(controller)))

    async def main() -> None:
        status, body = await asyncio.to_thread(get, server)
        assert (status, body.strip()) == (503, "not started: waiting for the ClusterKopfPeering CRD and kopf's startup")
        controller.start(asyncio.get_running_loop())  # what kopf's startup handler does
        try:
            async with asyncio.timeout(10):
                while len(controller.view.synced) < 3:
                    await asyncio.sleep(0.01)
            status, body = await asyncio.to_thread(get, server)
            assert status == 503
            assert body.strip() == "not synced: waiting for the first listing of bpfprogramstates, nodes"
            lists.release("bpfprogramstates")
            lists.release("nodes")
            async with asyncio.timeout(10):
                while len(controller.view.synced) < 5:
                    await asyncio.sleep(0.01)
            assert await asyncio.to_thread(get, server) == (200, "ok\n")
        finally:
            controller.stop()
            lists.stopped.set()

    try:
        asyncio.run(main())
    finally:
        server.close()
        for stream in controller.streams:
            stream.thread.join(5)
    assert not any(stream.thread.is_alive() for stream in controller.streams)
