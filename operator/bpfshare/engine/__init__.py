"""The node reconcile engine: desired resources vs what bpffs and the kernel hold on this node.

One engine, two drivers: ``bpfshare apply/delete -f`` (no cluster) and ``bpfshare agent`` (kopf).
"""

from bpfshare.engine.node import Engine, Report
from bpfshare.engine.status import Phase, StatusEntry

__all__ = ["Engine", "Phase", "Report", "StatusEntry"]
