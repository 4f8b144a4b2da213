"""``bpfshare controller``: the cluster controller (one active replica of several)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from bpfshare.agent.readiness import ReadyCheck

log = logging.getLogger("bpfshare.controller")


@click.command("controller")
@click.option(
    "--peering",
    default="bpfshare-controller",
    show_default=True,
    metavar="NAME",
    help="the ClusterKopfPeering object that replicas share (deploy/base/peering.yaml)",
)
@click.option(
    "--priority",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="this replica's peering priority; the highest live one is active (default: random, distinct per replica)",
)
@click.option(
    "--liveness", default=None, metavar="URL", help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
)
@click.option(
    "--readiness",
    default=None,
    metavar="HOST:PORT",
    help="serve readiness at http://HOST:PORT/readyz: 200 once every watch has listed, 503 before "
    "(e.g. 0.0.0.0:9478; default: off)",
)
@click.option("-v", "--verbose", is_flag=True)
def controller(peering: str, priority: int | None, liveness: str | None, readiness: str | None, verbose: bool) -> None:
    """Run the cluster controller: conditions and node counts from the node states, the finalizer,
    cleanup of vanished nodes. Run several; one is active."""
    from bpfshare.controller.operator import run_controller

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not verbose:  # a line per probe and per liveness request otherwise
        for name in ("kopf.activities.probe", "aiohttp.access"):
            logging.getLogger(name).setLevel(logging.WARNING)
    run_controller(peering=peering, priority=priority, liveness=liveness, serve_readiness=readiness_server(readiness))


def readiness_server(address: str | None) -> Callable[[ReadyCheck], object] | None:
    """What starts ``/readyz`` on ``--readiness HOST:PORT`` (the agent's server: it serves the agent's
    metrics and readiness), or None without the option. A malformed address is refused here, at once."""
    if not address:
        return None
    from bpfshare.agent.readiness import parse_address, readyz_app, serve

    try:
        parse_address(address)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--readiness") from None

    def start(check: ReadyCheck) -> object:
        server = serve(address, readyz_app(check))
        log.info("readiness at http://%s:%d/readyz", server.host, server.port)
        return server

    return start
