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

from bpfshare.load.loader import PROGRAM_PIN

TMP_PIN = re.compile(r"_tmp\d+$")


@dataclass(frozen=True)
class Layout:
    root: Path

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

    def inside(self, path: Path) -> bool:
        """Confinement: is ``path`` (resolved) under the pin root?"""
        try:
            path.resolve().relative_to(self.root.resolve())
        except ValueError:
            return False
        return True

    def program_names(self) -> list[str]:
        """Resource names of the program directories (the inverse of ``program_dir``)."""
        if not self.programs_dir.is_dir():
            return []
        return sorted(p.name.replace("_", ".") for p in self.programs_dir.iterdir() if p.is_dir())

    def stale_temporary_pins(self) -> list[Path]:
        """Pins that ``replace_pin`` left half-done when its process was killed (``<name>_tmp<pid>``).

        The engine owns ``programs/`` alone (one agent per pin root) and asks before its first pass,
        when none of its own is in flight, so every such pin is stale. (The pid in the name cannot
        tell: in a container, a restarted agent gets the same small pid again.)
        """
        if not self.programs_dir.is_dir():
            return []
        found = []
        for directory in (self.programs_dir, *self.programs_dir.glob("*"), *self.programs_dir.glob("*/links")):
            if directory.is_dir():
                found += [p for p in directory.iterdir() if TMP_PIN.search(p.name)]
        return found

    def map_pin_names(self) -> list[str]:
        if not self.maps_dir.is_dir():
            return []
        return sorted(p.name for p in self.maps_dir.iterdir() if not p.name.startswith("."))
