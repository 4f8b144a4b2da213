"""The container runtime, as the kubelet reaches it: the CRI API (k8s.io/cri-api, runtime.v1) over the
runtime's unix socket. bpfshare asks it one thing: where a pod's network namespace and cgroup are."""
