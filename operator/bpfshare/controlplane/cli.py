"""``bpfshare cluster build|up|down|env``: the local control plane from the command line."""

from __future__ import annotations

import shlex
import time

import click

from bpfshare.controlplane import ControlPlaneError
from bpfshare.controlplane.build import ensure_built
from bpfshare.controlplane.paths import default_state_dir
from bpfshare.controlplane.run import DEFAULT_TIMEOUT, is_healthy, load, start, stop


@click.group()
def cluster() -> None:
    """A local control plane (etcd + kube-apiserver) for the demo and the tests.

    State (pids, logs, kubeconfig) lives in $BPFSHARE_CLUSTER_DIR, default ~/.cache/bpfshare/cluster;
    binaries are built once per version into ~/.cache/bpfshare/controlplane (see $BPFSHARE_CACHE_DIR).
    """


@cluster.command()
@click.option("--force", is_flag=True, help="Rebuild even if the cache already holds these versions.")
def build(force: bool) -> None:
    """Build (or find cached) kube-apiserver, kubectl and etcd; print their directory."""
    click.echo(str(ensure_built(force=force)))


@cluster.command()
@click.option(
    "--timeout",
    type=float,
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for kube-apiserver to become ready.",
)
@click.option(
    "--node",
    "with_node",
    is_flag=True,
    help="Also a real node: containerd, CNI, kube-controller-manager, kube-scheduler and a kubelet "
    "that registers this machine as a Node (needs root).",
)
@click.option("--node-name", default=None, help="The Node's name (default: this machine's host name).")
def up(timeout: float, with_node: bool, node_name: str | None) -> None:
    """Start the control plane (nothing to do if it is already running and healthy)."""
    from bpfshare.controlplane.node import default_node_name

    state_dir = default_state_dir()
    node = (node_name or default_node_name()) if with_node else ""
    existing = load(state_dir)
    if existing is not None and is_healthy(existing) and existing.node == node:
        click.echo(f"bpfshare: control plane already running at {existing.server}", err=True)
        return
    bin_dir = ensure_built()
    started = time.monotonic()
    cp = start(state_dir, bin_dir, timeout=timeout if not node else max(timeout, 180.0), node=node or None)
    what = f"control plane and node {cp.node}" if cp.node else "control plane"
    click.echo(
        f"bpfshare: {what} ready at {cp.server} in {time.monotonic() - started:.1f}s "
        f'(logs in {state_dir}); use it with: eval "$(bpfshare cluster env)"',
        err=True,
    )


@cluster.command()
def down() -> None:
    """Stop the control plane (and the node: its pods, cgroups, mounts, links) and delete its state directory."""
    state_dir = default_state_dir()
    if stop(state_dir):
        click.echo(f"bpfshare: control plane stopped, {state_dir} removed", err=True)
    else:
        click.echo("bpfshare: no control plane was running", err=True)


@cluster.command()
def env() -> None:
    """Print shell exports (KUBECONFIG, PATH) for the running control plane."""
    state_dir = default_state_dir()
    cp = load(state_dir)
    if cp is None or not cp.kubeconfig.exists():
        raise ControlPlaneError(f"no control plane in {state_dir}; start one with `bpfshare cluster up`")
    click.echo(f"export KUBECONFIG={shlex.quote(str(cp.kubeconfig))}")
    click.echo(f'export PATH={shlex.quote(str(cp.bin_dir))}:"$PATH"')


@cluster.command()
@click.option(
    "--address",
    envvar="BPFSHARE_CONTAINERD_ADDRESS",
    help="containerd socket to import into (default: the node of `cluster up --node`).",
)
def image(address: str | None) -> None:
    """Build the agent image from the Dockerfile and import it into the node's containerd (k8s.io)."""
    from bpfshare.controlplane.image import image_reference
    from bpfshare.controlplane.node_deploy import install_image, repo_root

    if not address:
        cp = load(default_state_dir())
        if cp is None or cp.containerd_address is None:
            raise ControlPlaneError(
                "no node containerd to import into: start one with `bpfshare cluster up --node`, or give --address"
            )
        address = str(cp.containerd_address)
    started = time.monotonic()
    install_image(address)
    click.echo(
        f"bpfshare: {image_reference(repo_root())} built and imported into {address} (namespace k8s.io) "
        f"in {time.monotonic() - started:.1f}s",
        err=True,
    )
