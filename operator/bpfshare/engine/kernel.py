"""The kernel seam: everything the node engine asks of bpffs and the kernel, as one protocol.

The engine decides (``engine/planner.py``) and acts (``engine/apply.py``) only through a
``NodeKernel``. Two implementations:

- ``engine/host_kernel.py``: ``HostKernel``, the real one (bpf(), bpffs, netlink, cgroups);
- ``engine/memory_kernel.py``: ``MemoryKernel``, in memory, for logic tests that need no
  privilege and for hollow nodes (many simulated nodes in one process).

The protocol is in the engine's terms, not the syscalls': "the map pinned at P", "the filter at
this tc slot", "the link pinned for this target". Paths are bpffs paths under the pin root.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bpfshare.api.targets import AttachTarget, TcTarget
from bpfshare.kernel.maps import MapInfo
from bpfshare.load.loader import MapBinding
from bpfshare.spec import CollectionSpec, MapSpec, ProgramSpec

# What the engine knows of a live map: bpf_map_info as kernel/maps.py reads it (pure data).
MapView = MapInfo


@dataclass(frozen=True)
class ProgramView:
    id: int
    tag: str
    map_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class TcFilterView:
    """The filter at a tc slot (interface, direction, priority, handle)."""

    prog_id: int
    name: str  # the filter's name (bpfshare names it after the program)


@dataclass(frozen=True)
class LinkView:
    id: int
    prog_id: int


@dataclass(frozen=True)
class AttachResult:
    link_id: int | None = None
    pin_path: Path | None = None
    handle: str | None = None  # tc: "priority:handle"


class ProgramHandle(Protocol):
    """A loaded program held open by the engine until it is pinned and attached."""

    def close(self) -> None: ...


@dataclass
class Loaded:
    handle: ProgramHandle
    view: ProgramView
    kernel_seconds: float = 0.0  # the verifier's time
    # Maps pinned by name (libbpf's and iproute2's pinning), outside the program's directory:
    # pin path -> whether this load created it.
    pinned: dict[Path, bool] = field(default_factory=dict)


class NodeKernel(Protocol):
    def possible_cpus(self) -> int:
        """How many CPUs a per-CPU map holds a value for."""
        ...

    # -- bpffs ---------------------------------------------------------------------------------
    def exists(self, path: Path) -> bool:
        """A pin or a directory at ``path``."""
        ...

    def list_dir(self, path: Path) -> list[str]:
        """Names in a bpffs directory, sorted; [] when it does not exist."""
        ...

    def is_dir(self, path: Path) -> bool: ...

    def on_bpffs(self, path: Path) -> bool:
        """Is ``path`` (or, if it does not exist, its directory) inside a bpffs mount?"""
        ...

    def unpin(self, path: Path) -> None:
        """Remove one pin (the object lives on while something else holds it); missing is fine."""
        ...

    def remove_tree(self, path: Path) -> None:
        """Remove a directory of pins and the directory."""
        ...

    # -- maps ----------------------------------------------------------------------------------
    def map_at(self, pin: Path) -> MapView:
        """The map pinned at ``pin``; KernelError if there is none (or it is not a map)."""
        ...

    def map_by_id(self, map_id: int) -> MapView | None:
        """The live map with this ID, or None if it is gone."""
        ...

    def get_or_create_map(self, spec: MapSpec, pin: Path, subject: str) -> tuple[MapView, bool]:
        """The map pinned at ``pin`` if compatible with ``spec`` (IncompatibleMapError naming every
        difference if not), else a new one pinned there; concurrent callers converge on one map.
        Returns (map, created)."""
        ...

    def pin_existing_map(self, source: Path | int, pin: Path) -> MapView:
        """Pin a live map (by its pin or its ID) a second time, at ``pin``."""
        ...

    # -- program records -----------------------------------------------------------------------
    def read_record(self, pin: Path) -> bytes | None:
        """The value of a ledger record (``engine/meta.py``), or None if there is no such pin."""
        ...

    def write_record(self, pin: Path, data: bytes) -> None:
        """Create (if needed) and write a ledger record."""
        ...

    # -- programs ------------------------------------------------------------------------------
    def program_at(self, pin: Path) -> ProgramView | None:
        """The program pinned at ``pin``, or None if there is no pin."""
        ...

    def open_program(self, pin: Path) -> Loaded: ...

    def load(
        self,
        collection: CollectionSpec,
        program: str,
        bindings: dict[str, MapBinding],
        pin_root: Path,
        pin_dir: Path,
    ) -> Loaded:
        """Resolve the program's maps (bound ones reused after a compatibility check), verify and
        load it; not pinned yet (``pin_program``). VerifierError carries the verifier's words."""
        ...

    def pin_program(self, program: Loaded, pin: Path) -> None:
        """Pin atomically: readers of ``pin`` see the old program or the new one, never none."""
        ...

    # -- attachments ---------------------------------------------------------------------------
    def missing_target(self, target: AttachTarget) -> str | None:
        """Why ``target`` cannot be attached to now (its interface, namespace or cgroup is not
        there, or its name is impossible), or None."""
        ...

    def place_gone(self, target: AttachTarget) -> bool:
        """Whether the place a target lies in is gone: its network namespace (tc, tcx; never the
        host's), or its cgroup. A pod's place goes with its sandbox, before the pod watch may say so."""
        ...

    def tc_filter(self, target: TcTarget) -> TcFilterView | None:
        """The filter at the target's slot, or None. TargetNotFoundError if the interface or the
        namespace does not exist."""
        ...

    def detach_tc(self, target: TcTarget) -> None: ...

    def current_link(self, pin: Path, target: AttachTarget) -> LinkView | None:
        """The link pinned at ``pin`` if it is still attached to ``target`` itself (not defunct)."""
        ...

    def attach(self, program: Loaded, spec: ProgramSpec, target: AttachTarget, pin_dir: Path) -> AttachResult:
        """Attach, or switch in place: tc replace at the slot, a pinned link updated
        (BPF_LINK_UPDATE) or created and pinned; a defunct pinned link is replaced."""
        ...
