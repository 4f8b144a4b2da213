"""``bpfshare demo --node``: the whole product on a real node, as a user runs it.

The local control plane with a real node (``cluster up --node``), the agent image built from the
Dockerfile and imported into the node's containerd (``cluster image``), ``kubectl apply -k deploy/``
(the DaemonSet and the controller Deployment as pods), then the same scenario as ``bpfshare demo``:
the examples, Ready, traffic, ``kubectl get`` and the shared map's counters, read from the pin the
pod-run agent made on the host. Everything it started is removed after (``--keep`` waits first).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from bpfshare.controlplane.demo import (
    INSTALLED_BPF_DIR,
    MAP_NAME,
    Kube,
    Say,
    _drop_finalizers,
    example_resources,
    network,
    only_demo,
    show_scenario,
)
from bpfshare.controlplane.wait import key_of
from bpfshare.errors import BpfshareError

HOST_PIN_ROOT = Path("/sys/fs/bpf/bpfshare")  # the DaemonSet's --pin-root, on the host


@contextlib.contextmanager
def node_cluster(say: Say) -> Iterator[tuple[Kube, str, Path]]:
    """(kubectl, node name, containerd socket) of the local control plane with a real node: the running
    one, or one started here and stopped after."""
    from bpfshare.controlplane.build import ensure_built
    from bpfshare.controlplane.node import default_node_name
    from bpfshare.controlplane.paths import default_state_dir
    from bpfshare.controlplane.run import is_healthy, load, start, stop

    bin_dir = ensure_built()
    state = default_state_dir()
    existing = load(state)
    if existing is not None and is_healthy(existing) and existing.node and existing.containerd_address:
        say(f"cluster: using the running local control plane and node {existing.node} at {existing.server}")
        yield Kube(existing.kubeconfig, str(bin_dir / "kubectl")), existing.node, existing.containerd_address
        return
    say("cluster: starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd and a kubelet")
    started = time.monotonic()
    cp = start(state, bin_dir, timeout=180.0, node=default_node_name())
    say(f"cluster: node {cp.node} Ready in {time.monotonic() - started:.1f}s")
    try:
        assert cp.containerd_address is not None
        yield Kube(cp.kubeconfig, str(bin_dir / "kubectl")), cp.node, cp.containerd_address
    finally:
        stop(state)
        say("cluster: control plane and node stopped")


def run_node_demo(keep: bool, say: Say) -> None:
    if os.geteuid() != 0:
        raise BpfshareError("the node demo runs a kubelet and containerd and loads eBPF programs: run it as root")
    from bpfshare.controlplane.node_deploy import deploy, install_image, repo_root, undeploy

    root = repo_root()
    docs = example_resources(INSTALLED_BPF_DIR)  # paths inside the agent image
    keys = [key_of(doc) for doc in docs]
    names = [f"{plural}/{name}" for plural, name in keys]
    with only_demo(), node_cluster(say) as (kube, node, containerd), network(say):
        say("$ bpfshare cluster image   # the Dockerfile, built with buildah, imported into the node's containerd")
        started = time.monotonic()
        install_image(containerd)
        say(f"image: built and imported in {time.monotonic() - started:.1f}s")
        try:
            say(f"$ kubectl apply --server-side -k deploy/   # the runtime-socket volume patched to {containerd}")
            deploy(kube, root, runtime_socket=Path(containerd))
            say(kube("-n", "bpfshare-system", "get", "daemonset,deployment,pods", "-o", "wide").stdout.rstrip())
            show_scenario(kube, docs, node, HOST_PIN_ROOT / "maps" / MAP_NAME, keep, say)
        finally:
            kube("delete", *reversed(names), "--ignore-not-found", "--timeout=60s", check=False)
            _drop_finalizers(kube, names)
            undeploy(kube, root)
