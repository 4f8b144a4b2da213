"""``bpfshare demo``: the README's main command."""

from __future__ import annotations

from pathlib import Path

import click

from bpfshare.cli import pin_root_option


@click.command("demo")
@click.option("--keep", is_flag=True, help="leave everything running until Ctrl-C")
@pin_root_option
def demo(keep: bool, pin_root: str) -> None:
    """Cluster, CRDs, an agent and a controller, the examples, traffic, `kubectl get`, counters; then clean up."""
    from bpfshare.controlplane.demo import run_demo

    run_demo(Path(pin_root), keep, lambda line: click.echo(line))
