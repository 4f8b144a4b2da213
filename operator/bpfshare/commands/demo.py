"""``bpfshare demo``: the README's main command."""

from __future__ import annotations

from pathlib import Path

import click

from bpfshare.cli import pin_root_option


@click.command("demo")
@click.option("--keep", is_flag=True, help="leave everything running until Ctrl-C")
@click.option(
    "--node",
    is_flag=True,
    help="on a real node: kubelet and containerd (`cluster up --node`), the agent image built from the "
    "Dockerfile (`cluster image`), `kubectl apply -k deploy/`; the agent and controller run as pods",
)
@pin_root_option
def demo(keep: bool, node: bool, pin_root: str) -> None:
    """Cluster, CRDs, an agent and a controller, the examples, traffic, `kubectl get`, counters; then clean up."""
    say = click.echo
    if node:
        from bpfshare.controlplane.node_demo import run_node_demo

        run_node_demo(keep, say)  # the DaemonSet's pin root (deploy/), not --pin-root
        return
    from bpfshare.controlplane.demo import run_demo

    run_demo(Path(pin_root), keep, say)
