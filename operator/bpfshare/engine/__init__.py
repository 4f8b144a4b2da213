"""The node reconcile engine: desired resources vs what bpffs and the kernel hold on this node.

One engine, two drivers: ``bpfshare apply/delete -f`` (no cluster) and ``bpfshare agent`` (kopf).
"""

from bpfshare.api.status import Phase, StatusEntry
from bpfshare.engine.node import Engine, Report

__all__ = ["Engine", "Phase", "Report", "StatusEntry"]
