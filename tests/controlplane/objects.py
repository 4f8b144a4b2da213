"""Builders of BpfMap / BpfProgram manifests for the tests."""

from __future__ import annotations

from typing import Any

GROUP, VERSION = "bpfshare.io", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


def bpfmap(name: str, **spec: Any) -> dict[str, Any]:
    """A valid BpfMap (a Hash of 1024 u32 -> u64), with ``spec`` fields overridden."""
    return {
        "apiVersion": API_VERSION,
        "kind": "BpfMap",
        "metadata": {"name": name},
        "spec": {"type": "Hash", "keySize": 4, "valueSize": 8, "maxEntries": 1024, **spec},
    }


def bpfprogram(name: str, **spec: Any) -> dict[str, Any]:
    """A valid BpfProgram (tc ingress on eth0 from a file), with ``spec`` fields overridden."""
    body = {
        "bytecode": {"path": "/opt/bpfshare/bpf/flow_counter.o"},
        "program": "count_ingress",
        "attach": {"tc": {"interfaces": ["eth0"], "direction": "ingress"}},
        **spec,
    }
    return {"apiVersion": API_VERSION, "kind": "BpfProgram", "metadata": {"name": name}, "spec": body}
