"""``bpfshare controller``: the cluster controller (one active replica of several)."""

from __future__ import annotations

import logging

import click


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
@click.option("-v", "--verbose", is_flag=True)
def controller(peering: str, priority: int | None, liveness: str | None, verbose: bool) -> None:
    """Run the cluster controller: conditions and node counts from the node states, the finalizer,
    cleanup of vanished nodes. Run several; one is active."""
    from bpfshare.controller.operator import run_controller

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not verbose:  # a line per probe and per liveness request otherwise
        for name in ("kopf.activities.probe", "aiohttp.access"):
            logging.getLogger(name).setLevel(logging.WARNING)
    run_controller(peering=peering, priority=priority, liveness=liveness)
