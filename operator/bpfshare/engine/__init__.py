"""The node reconcile engine: desired resources vs what bpffs and the kernel hold on this node.

One engine, two drivers: ``bpfshare apply/delete -f`` (no cluster) and ``bpfshare agent`` (kopf).
"""

from bpfshare.api.status import Phase, StatusEntry
from bpfshare.engine.kernel import NodeKernel
from bpfshare.engine.node import Engine, Limits, Report
from bpfshare.engine.plan import Plan

__all__ = ["Engine", "Limits", "NodeKernel", "Phase", "Plan", "Report", "StatusEntry"]
