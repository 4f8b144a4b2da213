"""bpfshare: share pinned eBPF maps between tc, tcx and cgroup programs, on a node and on Kubernetes."""

__version__ = "0.1.0"
