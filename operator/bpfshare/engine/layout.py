"""Where things live under the agent's pin root. The layout is the node's only state store.

<root>/maps/<pinName>                 BpfMap pins
<root>/programs/<BpfProgram>/program  the loaded program
<root>/programs/<BpfProgram>/meta     what was loaded and attached (a one-entry array map)
<root>/programs/<BpfProgram>/links/*  pinned links (tcx, cgroup), one per target
<root>/programs/<BpfProgram>/<map>    the program's private maps (global data, unbound maps)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bpfshare.load.attach import LINKS_DIR
from bpfshare.load.loader import PROGRAM_PIN

if TYPE_CHECKING:
    from bpfshare.engine.kernel import NodeKernel

TMP_PIN = re.compile(r"_tmp\d+$")


@dataclass(frozen=True)
class Layout:
    root: Path
    # Names directly under the root that bpfshare uses itself (a map pinned by name may not take them).
    reserved_names: frozenset[str] = frozenset({"maps", "programs", "loads", "ledger", "tc"})

    @property
    def maps_dir(self) -> Path:
        return self.root / "maps"

    @property
    def programs_dir(self) -> Path:
        return self.root / "programs"

    def map_pin(self, pin_name: str) -> Path:
        return self.maps_dir / pin_name

    def program_dir(self, name: str) -> Path:
        # bpffs refuses names containing '.', which resource names may have; '_' never occurs in a
        # resource name, so the mapping stays one to one.
        return self.programs_dir / name.replace(".", "_")

    def program_pin(self, name: str) -> Path:
        return self.program_dir(name) / PROGRAM_PIN

    def meta_pin(self, name: str) -> Path:
        return self.program_dir(name) / "meta"

    @property
    def map_records_dir(self) -> Path:
        return self.root / "ledger" / "maps"

    def map_record(self, name: str) -> Path:
        """The ledger record of a BpfMap (bpffs refuses '.', which '_' replaces one to one)."""
        return self.map_records_dir / name.replace(".", "_")

    def map_record_names(self, kernel: NodeKernel) -> list[str]:
        return sorted(n.replace("_", ".") for n in kernel.list_dir(self.map_records_dir))

    def inside(self, path: Path) -> bool:
        """Confinement: is ``path`` (resolved) under the pin root?"""
        try:
            path.resolve().relative_to(self.root.resolve())
        except ValueError:
            return False
        return True

    def program_names(self, kernel: NodeKernel) -> list[str]:
        """Resource names of the program directories (the inverse of ``program_dir``)."""
        names = kernel.list_dir(self.programs_dir)
        return sorted(n.replace("_", ".") for n in names if kernel.is_dir(self.programs_dir / n))

    def map_pin_names(self, kernel: NodeKernel) -> list[str]:
        return [n for n in kernel.list_dir(self.maps_dir) if not n.startswith(".")]

    def temporary_pins(self, kernel: NodeKernel) -> list[Path]:
        """Pins that ``replace_pin`` left half-done when its process was killed (``<name>_tmp<pid>``).

        The engine owns ``programs/`` alone (one agent per pin root) and asks before its first pass,
        when none of its own is in flight, so every such pin is stale. (The pid in the name cannot
        tell: in a container, a restarted agent gets the same small pid again.)
        """
        top = self.programs_dir
        directories = [top]
        for name in kernel.list_dir(top):
            if kernel.is_dir(top / name):
                directories += [top / name, top / name / LINKS_DIR]
        return [d / n for d in directories for n in kernel.list_dir(d) if TMP_PIN.search(n)]
