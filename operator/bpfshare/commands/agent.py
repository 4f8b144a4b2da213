"""``bpfshare agent``: the per-node kopf agent."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from bpfshare.cli import pin_root_option
from bpfshare.commands.limits import limits_from, limits_options


@click.command("agent")
@click.option("--node", envvar="NODE_NAME", default=None, help="this node's name (default: $NODE_NAME, else hostname)")
@click.option(
    "--resync",
    "resync_seconds",
    type=float,
    default=60.0,
    show_default=True,
    help="seconds between full passes that repair drift",
)
@click.option(
    "--liveness", default=None, metavar="URL", help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
)
@click.option(
    "--metrics",
    default=None,
    metavar="HOST:PORT",
    envvar="BPFSHARE_METRICS",
    help="serve Prometheus metrics at http://HOST:PORT/metrics, e.g. 0.0.0.0:9090, and readiness at /readyz "
    "(200 once the first full reconcile pass is done, 503 before; default: off)",
)
@click.option("-v", "--verbose", is_flag=True)
@click.option(
    "--btf",
    "btf",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="the kernel's BTF for CO-RE relocations, for kernels without /sys/kernel/btf/vmlinux",
)
@click.option(
    "--runtime-endpoint",
    default=None,
    envvar="BPFSHARE_RUNTIME_ENDPOINT",
    metavar="SOCKET",
    help="the container runtime's CRI socket, where pods' network namespaces and cgroups are asked for "
    "attach.*.pods (default: the first of /run/containerd/containerd.sock, /run/crio/crio.sock that exists)",
)
@limits_options
@pin_root_option
def agent(
    node: str | None,
    resync_seconds: float,
    liveness: str | None,
    metrics: str | None,
    verbose: bool,
    max_bytecode_bytes: int,
    map_memory_budget: int,
    pin_root: str,
    btf: str | None,
    runtime_endpoint: str | None,
) -> None:
    """Run the agent for this node: reconcile BpfMaps and BpfPrograms that select it."""
    from bpfshare.agent.operator import run_agent

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not verbose:
        # kopf logs "Handler 'on_map' succeeded." at INFO for every watch event of every resource:
        # noise that costs CPU on every event. Its warnings and errors still show.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    run_agent(
        node or os.uname().nodename,
        Path(pin_root),
        resync_seconds=resync_seconds,
        liveness=liveness,
        metrics=metrics,
        limits=limits_from(max_bytecode_bytes, map_memory_budget),
        btf=Path(btf) if btf else None,
        runtime_endpoint=runtime_endpoint,
    )
