"""Readiness (``GET /readyz``): synced, as opposed to kopf's liveness endpoint (``/healthz``): alive.

Kubernetes restarts a container whose liveness probe fails and holds back a rollout (and takes a pod
out of Services) while its readiness probe fails. A pod that is alive but has not caught up yet must
not be restarted for it, so the two questions get two endpoints:

- the agent is ready once it has completed its first full pass: every BpfMap and BpfProgram listed,
  reconciled on this node and its state object written (``agent_not_ready``); it serves ``/readyz``
  on its metrics server (``--metrics HOST:PORT``);
- the controller is ready once every one of its list-and-watch streams has delivered its first
  listing (``bpfshare.controller.operator.not_ready``); it serves ``/readyz`` on its own address
  (``--readiness HOST:PORT``), the paused standby too, whose view is kept as current as the active
  one's.

``/readyz`` answers 200 ``ok`` or 503 with the reason in one line of plain text, which is what
``kubectl describe pod`` shows under the probe's failure. The server is a small WSGI server in daemon
threads, shared by both: the command line (``commands/controller.py``) hands it to the controller,
which imports nothing of the agent (tests/logic/test_layers.py).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("bpfshare.readiness")

READYZ = "/readyz"

# Why the process is not ready, or None when it is. Called on every probe, from a server thread: it
# must only read (a few attributes), never wait.
ReadyCheck = Callable[[], str | None]


class AgentProgress(Protocol):
    """What readiness reads of ``bpfshare.agent.loop.Agent``."""

    synced: bool
    full_pass_done: bool
    last_pass_failed: bool


def agent_not_ready(agent: AgentProgress) -> str | None:
    if not agent.synced:
        return "not synced: listing BpfMaps, BpfPrograms, this node's state objects and its Node"
    if not agent.full_pass_done:
        if agent.last_pass_failed:
            return "not synced: the first full reconcile pass failed and is retried (see the agent's log)"
        return "not synced: the first full reconcile pass has not finished"
    return None


def probe(check: ReadyCheck) -> tuple[int, str]:
    """(HTTP status, body) of one ``/readyz`` request."""
    try:
        reason = check()
    except Exception as exc:  # a bug in a check says "not ready", never crashes the server thread
        log.exception("readiness check failed")
        reason = f"readiness check failed: {type(exc).__name__}: {exc}"
    return (200, "ok") if reason is None else (503, reason)


def _respond(start_response: StartResponse, status: str, body: str) -> Iterable[bytes]:
    data = (body + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
    return [data]


def readyz_app(check: ReadyCheck, fallback: WSGIApplication | None = None) -> WSGIApplication:
    """``/readyz`` answered from ``check``; every other path goes to ``fallback`` (404 without one)."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == READYZ:
            code, body = probe(check)
            return _respond(start_response, "200 OK" if code == 200 else "503 Service Unavailable", body)
        if fallback is not None:
            return fallback(environ, start_response)
        return _respond(start_response, "404 Not Found", f"not found; try {READYZ}")

    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung client never keeps the process from exiting


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """A line per probe every few seconds is noise: nothing is logged per request."""


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (every address) or ``[V6]:PORT`` -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r}: expected HOST:PORT, e.g. 0.0.0.0:9478")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass
class Server:
    """A running server: the address it bound (port 0 picks a free one) and how to stop it."""

    host: str
    port: int
    _server: WSGIServer

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve(address: str, app: WSGIApplication, what: str = "readiness") -> Server:
    """Serve ``app`` on ``HOST:PORT`` in a daemon thread (named after ``what``)."""
    host, port = parse_address(address)
    # IPv4 or IPv6 as the address says (WSGIServer alone is IPv4 only).
    family, *_, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]

    class Bound(_ThreadingServer):
        address_family = family

    server = make_server(str(sockaddr[0]), port, app, Bound, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name=f"{what} server", daemon=True).start()
    bound = server.server_address
    return Server(str(bound[0]), int(bound[1]), server)
