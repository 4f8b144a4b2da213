"""A local Kubernetes control plane (etcd + kube-apiserver), envtest-style, for the demo and the tests.

``build`` compiles kube-apiserver, kubectl and etcd from Go modules into a per-version cache;
``run`` starts and stops them. Nothing here imports the Kubernetes client at module level.
"""

from __future__ import annotations

from bpfshare.errors import BpfshareError


class ControlPlaneError(BpfshareError):
    """The local control plane could not be built, started, reached or stopped."""
