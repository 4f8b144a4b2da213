"""A node plan: what one engine pass will do, as a value (desired resources vs observed node).

The planner (``maps.plan_map``, ``programs.plan_program``, ``node.Engine.plan``) only reads the
node through the ``NodeKernel``; applying the plan is the only step that changes it. Tests assert
on plans, and ``bpfshare apply --dry-run`` prints one, as ``kubectl diff`` would.

A resource whose outcome is already known without acting (a field that differs from the pinned
map, a BpfMap not Ready yet, bytecode that cannot be read) carries that outcome instead of actions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpfshare.api.resources import MAP_KIND, PROGRAM_KIND, MapResource, ProgramResource
from bpfshare.api.status import StatusEntry
from bpfshare.api.targets import AttachTarget
from bpfshare.engine.kernel import AttachResult, MapView, ProgramView
from bpfshare.engine.meta import MapRecord, ProgramMeta
from bpfshare.load.loader import MapBinding
from bpfshare.spec import CollectionSpec, MapSpec, ProgramSpec

# -- map actions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateMap:
    spec: MapSpec
    pin: Path
    lost_id: int | None = None  # the map this node had before is gone (reboot, bpffs emptied)

    def describe(self) -> str:
        shape = f"{self.spec.type.name}, key {self.spec.key_size}, value {self.spec.value_size}"
        text = f"create map ({shape}, max entries {self.spec.max_entries}) pinned at {self.pin}"
        if self.lost_id is not None:
            text += f" (map {self.lost_id} is gone: its contents are lost)"
        return text


@dataclass(frozen=True)
class AdoptMap:
    source: Path
    pin: Path
    map_id: int

    def describe(self) -> str:
        return f"adopt map {self.map_id} pinned at {self.source}: pin it again at {self.pin}"


@dataclass(frozen=True)
class RepinMap:
    map_id: int
    pin: Path

    def describe(self) -> str:
        return f"pin map {self.map_id} again at {self.pin} (its pin was removed; contents kept)"


@dataclass(frozen=True)
class MoveMap:
    source: Path
    pin: Path
    map_id: int

    def describe(self) -> str:
        return f"move map {self.map_id} from {self.source} to {self.pin} (spec.pinName changed; contents kept)"


@dataclass(frozen=True)
class UnpinMap:
    pin: Path

    def describe(self) -> str:
        return f"unpin {self.pin} (reclaimPolicy Delete: the map and its contents go with its last user)"


@dataclass(frozen=True)
class RetainMap:
    pin: Path

    def describe(self) -> str:
        return f"keep {self.pin} and its contents (reclaimPolicy Retain)"


MapAction = CreateMap | AdoptMap | RepinMap | MoveMap


# -- program actions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadProgram:
    program: str  # the object's program name
    source: str  # where the bytecode came from
    reason: str  # "first load", "upgrade: ..."

    def describe(self) -> str:
        return f"load {self.program} from {self.source} ({self.reason})"


@dataclass(frozen=True)
class Attach:
    target: AttachTarget
    repair: bool = False  # the program did not change, yet the target lacks it (drift)

    def describe(self) -> str:
        return f"{'re-attach' if self.repair else 'attach'} to {self.target.key}"


@dataclass(frozen=True)
class Detach:
    target: AttachTarget | None  # None: a link pin whose hashed name only the record could have told
    link_pin: Path | None = None  # tcx and cgroup: the pinned link to remove
    label: str = ""  # what to call it when the target is not known

    @property
    def key(self) -> str:
        return self.target.key if self.target is not None else self.label

    def describe(self) -> str:
        return f"detach from {self.key} (no longer in spec.attach)"


@dataclass(frozen=True)
class RemoveProgram:
    directory: Path
    reason: str

    def describe(self) -> str:
        return f"detach everywhere and remove {self.directory} ({self.reason})"


# -- per-resource plans ------------------------------------------------------------------------


@dataclass
class MapPlan:
    res: MapResource
    spec: MapSpec
    pin: Path
    action: MapAction | None = None
    observed: MapView | None = None  # the compatible map already pinned (no action needed)
    outcome: StatusEntry | None = None  # decided without acting: Pending or Error
    record: MapRecord | None = None  # the ledger's record of this BpfMap, as planned on

    @property
    def predicted_id(self) -> int | None:
        """The map's ID after the plan is applied, if known before acting."""
        if self.outcome is not None:
            return None
        if self.observed is not None:
            return self.observed.id
        if isinstance(self.action, (RepinMap, AdoptMap, MoveMap)):
            return self.action.map_id
        return None  # a new map: its ID is the kernel's to give


@dataclass
class ProgramPlan:
    res: ProgramResource
    outcome: StatusEntry | None = None  # decided without acting: Pending or Error
    collection: CollectionSpec | None = None
    spec: ProgramSpec | None = None
    digest: str = ""
    bindings: dict[str, MapBinding] = field(default_factory=dict)
    bound_maps: dict[str, str] = field(default_factory=dict)  # object map -> BpfMap name (through a resource)
    predicted_ids: dict[str, int | None] = field(default_factory=dict)  # object map -> map ID
    convention_pins: list[Path] = field(default_factory=list)  # maps it pins by name, outside its directory
    previous: ProgramView | None = None  # the program pinned now
    record: ProgramMeta = field(default_factory=ProgramMeta)
    load: LoadProgram | None = None
    attach: list[Attach] = field(default_factory=list)
    current: dict[str, AttachResult] = field(default_factory=dict)  # target key -> attachment kept as is
    detach: list[Detach] = field(default_factory=list)


@dataclass
class MapRelease:
    res: MapResource
    pin: Path
    action: UnpinMap | RetainMap | None = None  # None: nothing of ours pinned, or still in use
    users: tuple[str, ...] = ()  # BpfPrograms on this node still bound to it: the deletion waits
    record: Path | None = None  # the ledger record to remove once released


@dataclass
class ProgramRemoval:
    name: str
    action: RemoveProgram | None  # None: nothing of it on this node


@dataclass
class Plan:
    removals: list[ProgramRemoval] = field(default_factory=list)  # first: frees maps for release
    maps: list[MapPlan] = field(default_factory=list)
    programs: list[ProgramPlan] = field(default_factory=list)
    releases: list[MapRelease] = field(default_factory=list)
    # The BpfPrograms that select this node: applying re-reads who uses a map before releasing it.
    active_programs: dict[str, ProgramResource] = field(default_factory=dict)
    records: dict[str, ProgramMeta] = field(default_factory=dict)  # the program records planned on

    def steps(self) -> list[tuple[str, str, str]]:
        """(kind, name, what) for every change, in the order they are applied; outcomes known
        without acting (Pending, Error) and resources left as they are are listed too."""
        out: list[tuple[str, str, str]] = []
        for removal in self.removals:
            if removal.action is not None:
                out.append((PROGRAM_KIND, removal.name, removal.action.describe()))
        for mp in self.maps:
            if mp.outcome is not None:
                out.append((MAP_KIND, mp.res.name, f"{mp.outcome.phase}: {mp.outcome.message}"))
            elif mp.action is not None:
                out.append((MAP_KIND, mp.res.name, mp.action.describe()))
            else:
                out.append((MAP_KIND, mp.res.name, f"unchanged (map {mp.predicted_id} at {mp.pin})"))
        for pp in self.programs:
            name = pp.res.name
            if pp.outcome is not None:
                out.append((PROGRAM_KIND, name, f"{pp.outcome.phase}: {pp.outcome.message}"))
                continue
            changes = [a.describe() for a in (pp.load, *pp.attach, *pp.detach) if a is not None]
            if not changes:
                changes = [f"unchanged (program {pp.previous.id if pp.previous else '?'})"]
            out += [(PROGRAM_KIND, name, c) for c in changes]
        for rel in self.releases:
            if rel.action is not None:
                out.append((MAP_KIND, rel.res.name, rel.action.describe()))
            elif rel.users:
                out.append((MAP_KIND, rel.res.name, f"deletion waits: still used by {', '.join(rel.users)}"))
        return out

    def changes_node(self) -> bool:
        """Would applying the plan change anything on the node?"""
        return (
            any(r.action is not None for r in self.removals)
            or any(m.action is not None for m in self.maps)
            or any(p.load is not None or p.attach or p.detach for p in self.programs)
            or any(isinstance(r.action, UnpinMap) for r in self.releases)
        )

    def to_list(self) -> list[dict[str, Any]]:
        return [{"kind": kind, "name": name, "change": what} for kind, name, what in self.steps()]
