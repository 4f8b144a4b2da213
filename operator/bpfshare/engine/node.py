"""The node engine: one pass that converges this node to the resources that select it.

A pass is a plan (``Engine.plan``: desired resources vs what bpffs and the kernel hold, read
through the ``NodeKernel``) and its application (``Engine.apply``). Removals of programs come
first, then maps (programs bind to them), then programs, then releases of maps, so that a map in
use is only released once its last user on the node is gone. Every resource is handled on its
own: an error in one is reported in its status and never stops the others.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bpfshare.api.resources import MAP_KIND, PROGRAM_KIND, MapResource, ProgramResource
from bpfshare.api.status import Event, MapStatus, Phase, StatusEntry
from bpfshare.engine.bytecode import MAX_BYTECODE, CollectionCache, ConfigMapReader, no_config_maps
from bpfshare.engine.kernel import NodeKernel
from bpfshare.engine.layout import Layout
from bpfshare.engine.maps import (
    apply_map,
    apply_release,
    map_spec,
    over_budget,
    plan_map,
    plan_release,
    read_map_record,
)
from bpfshare.engine.meta import MapRecord, ProgramMeta
from bpfshare.engine.plan import CreateMap, MapPlan, MapRelease, Plan, ProgramPlan, ProgramRemoval, RetainMap, UnpinMap
from bpfshare.engine.programs import (
    SlotClaims,
    WaitingError,
    apply_program,
    apply_removal,
    plan_program,
    plan_removal,
)
from bpfshare.errors import BpfshareError
from bpfshare.spec import map_rule_violations

log = logging.getLogger("bpfshare.engine")


def failure(exc: Exception) -> str:
    """What a resource's status says about an exception. Expected failures (the kernel's refusals,
    bad input, bpffs) say their cause; anything else is a bug, logged with its traceback, and
    still only that resource's Error: one resource never stalls the node."""
    if isinstance(exc, (BpfshareError, OSError)):
        return str(exc)
    log.error("internal error: %s", exc, exc_info=exc)
    return f"internal error ({type(exc).__name__}: {exc}); this is a bug in bpfshare: the agent's log has the traceback"


@dataclass(frozen=True)
class Binders:
    """Who binds each map on this node: by pin path (the programs' records) and by BpfMap name
    (active BpfPrograms that are pinned or being loaded)."""

    by_pin: dict[str, set[str]]
    by_map: dict[str, set[str]]

    def users(self, pin: str, map_name: str) -> set[str]:
        return self.by_pin.get(pin, set()) | self.by_map.get(map_name, set())


def claimed_pins(records: Mapping[str, ProgramMeta]) -> dict[str, set[str]]:
    """Maps pinned by name: pin path -> the programs whose records claim it."""
    claimed: dict[str, set[str]] = {}
    for name, record in records.items():
        for pin in record.pins:
            claimed.setdefault(pin, set()).add(name)
    return claimed


@dataclass
class Report:
    maps: dict[str, StatusEntry] = field(default_factory=dict)
    programs: dict[str, StatusEntry] = field(default_factory=dict)
    # (kind, name): this node holds nothing more of the resource (its finalizer may go).
    released: set[tuple[str, str]] = field(default_factory=set)
    events: list[Event] = field(default_factory=list)
    seconds: float = 0.0
    kernel_load_seconds: list[float] = field(default_factory=list)  # one per program loaded
    programs_changed: bool = False  # a program was loaded or detached from something in this pass
    plan: Plan | None = None

    def event(self, kind: str, name: str, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event(kind, name, "Warning" if warning else "Normal", reason, message))


@dataclass
class _Desired:
    """The resources of one pass, split by what this node must do with them."""

    active_maps: dict[str, MapResource]
    leaving_maps: list[MapResource]
    active_programs: dict[str, ProgramResource]
    leaving_programs: list[ProgramResource]
    checked: list[ProgramResource]  # the active programs re-checked in this pass

    @classmethod
    def split(
        cls,
        maps: Iterable[MapResource],
        programs: Iterable[ProgramResource],
        labels: Mapping[str, str],
        only: set[str] | None,
    ) -> _Desired:
        maps, programs = list(maps), list(programs)
        active_maps = {m.name: m for m in maps if not m.meta.deleting and m.node_selector.matches(labels)}
        active = {p.name: p for p in programs if not p.meta.deleting and p.node_selector.matches(labels)}
        return cls(
            active_maps,
            [m for m in maps if m.name not in active_maps],
            active,
            [p for p in programs if p.name not in active],
            [p for p in active.values() if only is None or p.name in only],
        )


@dataclass(frozen=True)
class Limits:
    """What one resource may ask of the node, checked before the kernel is asked."""

    max_bytecode_bytes: int = MAX_BYTECODE  # a bytecode file or ConfigMap larger than this is refused
    map_memory_budget: int = 1 << 30  # bytes one BpfMap may take: (key + value) x entries, per CPU if per-CPU


class Engine:
    def __init__(
        self,
        pin_root: Path,
        node: str = "",
        read_config_map: ConfigMapReader = no_config_maps,
        kernel: NodeKernel | None = None,
        limits: Limits | None = None,
    ) -> None:
        if kernel is None:
            from bpfshare.engine.host_kernel import HostKernel

            kernel = HostKernel()
        self.kernel: NodeKernel = kernel
        self.limits = limits or Limits()
        self.layout = Layout(Path(pin_root))
        self.node = node
        self.read_config_map = read_config_map
        self.collections = CollectionCache()
        self._lock = threading.Lock()
        self._known_map_ids: dict[str, int] = {}  # BpfMap name -> the map ID this node last had
        self._swept = False

    # -- the pass ----------------------------------------------------------------------------------

    def reconcile(
        self,
        maps: Iterable[MapResource],
        programs: Iterable[ProgramResource],
        labels: Mapping[str, str] | None = None,
        *,
        only_programs: set[str] | None = None,
        complete: bool = False,
        map_ids: Mapping[str, int] | None = None,
    ) -> Report:
        """Converge the node: plan, then apply. ``only_programs`` limits which programs are
        re-checked (maps always are: it is cheap); ``complete`` says the resources given are all
        there are, so program directories without a resource are orphans to remove; ``map_ids``
        are the map IDs this node reported before, by BpfMap name (from status), to re-pin a map
        whose pin was removed."""
        with self._lock:
            start = time.perf_counter()
            if not self._swept:
                self._sweep()
            plan = self.plan(maps, programs, labels, only_programs=only_programs, complete=complete, map_ids=map_ids)
            report = self.apply(plan)
            report.seconds = time.perf_counter() - start
            return report

    def plan(
        self,
        maps: Iterable[MapResource],
        programs: Iterable[ProgramResource],
        labels: Mapping[str, str] | None = None,
        *,
        only_programs: set[str] | None = None,
        complete: bool = False,
        map_ids: Mapping[str, int] | None = None,
    ) -> Plan:
        """What a pass would do, read from the node without changing it."""
        desired = _Desired.split(maps, programs, labels or {}, only_programs)
        names = set(desired.active_maps) | {m.name for m in desired.leaving_maps}
        # Remembered IDs of BpfMaps that are gone would hand a re-created BpfMap an old map.
        self._known_map_ids = {k: v for k, v in self._known_map_ids.items() if k in names}
        self._known_map_ids.update({k: v for k, v in (map_ids or {}).items() if k in names})
        records = self._records()
        map_records = self._map_records()
        plan = Plan(active_programs=dict(desired.active_programs))
        for prog in desired.leaving_programs:
            plan.removals.append(self._plan_removal(prog.name, "deleted or no longer selecting this node"))
        if complete:
            known = {p.name for p in desired.active_programs.values()} | {p.name for p in desired.leaving_programs}
            for orphan in self.layout.program_names(self.kernel):
                if orphan not in known:
                    plan.removals.append(self._plan_removal(orphan, "no BpfProgram names it"))
        removed = {r.name for r in plan.removals}
        # Who holds each pin: the ledger first (records of BpfMaps that still exist), then the
        # first claimant in this pass (by name, so that every pass decides the same way).
        holders = {r.pin: r.owner for r in map_records.values() if r.owner in names}
        for res in sorted(desired.active_maps.values(), key=lambda m: m.name):
            record = map_records.get(res.name)
            pin = str(self.layout.map_pin(res.pin_name))
            holder = holders.setdefault(pin, res.name)
            if record is not None and record.pin != pin:
                holders.setdefault(record.pin, res.name)  # a move: the old pin stays ours until it is done
            plan.maps.append(self._plan_map(res, record, holder, records))
        by_name = {mp.res.name: mp for mp in plan.maps}
        slots = SlotClaims({n: r for n, r in records.items() if n not in removed})
        for prog in desired.checked:
            plan.programs.append(self._plan_program(prog, by_name, slots, records.get(prog.name)))
        plan.records = records
        loading = {p.res.name for p in plan.programs if p.load is not None}
        binders = self._binders(desired.active_programs, records, removed, loading)
        for res in desired.leaving_maps:
            record = map_records.get(res.name)
            pin = record.pin if record is not None else str(self.layout.map_pin(res.pin_name))
            users = binders.users(pin, res.name)
            try:
                plan.releases.append(plan_release(self.kernel, self.layout, res, record, users))
            except Exception as exc:
                log.warning("cannot plan the release of BpfMap %s: %s", res.name, failure(exc))
        return plan

    def apply(self, plan: Plan) -> Report:
        """Carry out a plan made by ``plan``; every resource's outcome goes into the report."""
        report = Report(plan=plan)
        for removal in plan.removals:
            self._apply_removal(removal, report)
        for mp in plan.maps:
            report.maps[mp.res.name] = self._apply_map(mp, report)
        ids = {name: entry.map_id for name, entry in report.maps.items() if entry.phase is Phase.Ready}
        claimed = claimed_pins(plan.records)
        for pp in plan.programs:
            report.programs[pp.res.name] = self._apply_program(pp, ids, claimed, report)

        # Who uses each map: read afresh if programs were loaded or removed in this pass (an idle
        # pass changed nothing, and reuses what it planned on).
        changed = bool(plan.removals) or report.programs_changed
        records = self._records() if changed or plan.releases else plan.records
        binders = self._binders(plan.active_programs, records, set(), set())
        for mp in plan.maps:
            entry = report.maps[mp.res.name]
            if entry.phase is Phase.Ready and entry.map is not None:
                users = binders.users(entry.map.pin_path, mp.res.name)
                entry.map = dataclasses.replace(entry.map, used_by=tuple(sorted(users)))
        map_records = self._map_records() if plan.releases else {}
        for planned in plan.releases:
            # Re-decided on what the node holds now: never unpin a map a program still uses.
            res, record = planned.res, map_records.get(planned.res.name)
            users = binders.users(str(planned.pin), res.name)
            self._apply_release(plan_release(self.kernel, self.layout, res, record, users), report)
        return report

    # -- maps --------------------------------------------------------------------------------------

    def _plan_map(
        self, res: MapResource, record: MapRecord | None, holder: str, records: Mapping[str, ProgramMeta]
    ) -> MapPlan:
        try:
            known = self._known_map_ids.get(res.name)
            if known is None and record is None:
                known = self._recorded_map_id(res, records)
            other = holder if holder != res.name else None
            plan = plan_map(self.kernel, self.layout, res, record, other, known)
            if isinstance(plan.action, CreateMap):
                # The kernel's rules for the type, then the budget: refused before the kernel is asked.
                broken = map_rule_violations(plan.spec)
                over = over_budget(plan.spec, self.limits.map_memory_budget, self.kernel.possible_cpus())
                if broken or over:
                    message = f"spec: {'; '.join(broken)}" if broken else over
                    plan.action, plan.outcome = None, StatusEntry(Phase.Error, message)
            return plan
        except Exception as exc:  # one resource never stalls the node: its Error, and the pass goes on
            plan = MapPlan(res, map_spec(res), self.layout.map_pin(res.pin_name))
            plan.outcome = StatusEntry(Phase.Error, failure(exc))
            return plan

    def _apply_map(self, mp: MapPlan, report: Report) -> StatusEntry:
        try:
            result = apply_map(self.kernel, self.layout, mp)
        except Exception as exc:
            message = failure(exc)
            report.event(MAP_KIND, mp.res.name, "Failed", message, warning=True)
            return StatusEntry(Phase.Error, message)
        for reason, message, warning in result.events:
            report.event(MAP_KIND, mp.res.name, reason, message, warning=warning)
        if result.status.map_id is not None:
            self._known_map_ids[mp.res.name] = result.status.map_id
        return result.status

    def _recorded_map_id(self, res: MapResource, records: Mapping[str, ProgramMeta]) -> int | None:
        """The map ID that programs on this node were bound to through the resource's pin (their
        records survive a removed map pin, and a restart of the agent)."""
        pin = str(self.layout.map_pin(res.pin_name))
        for meta in records.values():
            for obj_map, path in meta.bindings.items():
                if path == pin and meta.map_ids.get(obj_map):
                    return meta.map_ids[obj_map]
        return None

    def _binders(
        self,
        active_programs: Mapping[str, ProgramResource],
        records: Mapping[str, ProgramMeta],
        removed: set[str],
        loading: set[str],
    ) -> Binders:
        """Who binds what, worked out once per pass (every map asks: per map it was maps x programs)."""
        by_pin: dict[str, set[str]] = {}
        for name, meta in records.items():
            if name not in removed:
                for path in set(meta.bindings.values()):
                    by_pin.setdefault(path, set()).add(name)
        by_map: dict[str, set[str]] = {}
        for prog in active_programs.values():
            bound = set(dict(prog.maps).values())
            if bound and (prog.name in loading or prog.name in records or self._pinned(prog.name)):
                for map_name in bound:
                    by_map.setdefault(map_name, set()).add(prog.name)
        return Binders(by_pin, by_map)

    def _pinned(self, program: str) -> bool:
        return self.kernel.exists(self.layout.program_pin(program))

    def _apply_release(self, release: MapRelease, report: Report) -> None:
        res, pin = release.res, release.pin
        if release.users:
            message = f"deletion waits: still used by {', '.join(release.users)} on this node"
            report.maps[res.name] = StatusEntry(Phase.Ready, message, map=MapStatus(str(pin), used_by=release.users))
            return
        if isinstance(release.action, RetainMap):
            report.event(MAP_KIND, res.name, "Retained", f"pin {pin} and its contents kept (reclaimPolicy Retain)")
        try:
            apply_release(self.kernel, self.layout, release)
        except Exception as exc:
            report.maps[res.name] = StatusEntry(Phase.Error, f"cannot unpin {pin}: {failure(exc)}")
            return
        if isinstance(release.action, UnpinMap):
            report.event(MAP_KIND, res.name, "Deleted", f"unpinned {pin}")
        self._known_map_ids.pop(res.name, None)
        report.released.add((MAP_KIND, res.name))

    # -- programs ----------------------------------------------------------------------------------

    def _plan_program(
        self, res: ProgramResource, maps: Mapping[str, MapPlan], slots: SlotClaims, record: ProgramMeta | None
    ) -> ProgramPlan:
        try:
            if res.pods is not None and not res.bound:
                raise BpfshareError(
                    f"spec.attach.{res.pods.kind}.pods: the {res.pods.describe()} are found by the agent on a "
                    "Kubernetes node (its watch of the node's pods and the container runtime); without them "
                    "there is nothing to attach to"
                )
            limit = self.limits.max_bytecode_bytes
            digest, collection = self.collections.load(res.bytecode, self.read_config_map, limit)
            source = res.bytecode.describe()
            return plan_program(self.kernel, self.layout, res, maps, collection, digest, source, slots, record)
        except Exception as exc:
            return ProgramPlan(res, outcome=StatusEntry(Phase.Error, failure(exc)))

    def _apply_program(
        self, pp: ProgramPlan, map_ids: Mapping[str, int | None], claimed: dict[str, set[str]], report: Report
    ) -> StatusEntry:
        name = pp.res.name
        if pp.outcome is not None:
            if pp.outcome.phase is Phase.Error:
                report.event(PROGRAM_KIND, name, "Failed", pp.outcome.message, warning=True)
            return pp.outcome
        try:
            result = apply_program(self.kernel, self.layout, pp, map_ids, claimed)
        except WaitingError as exc:
            return StatusEntry(Phase.Pending, str(exc))
        except Exception as exc:
            message = failure(exc)
            report.event(PROGRAM_KIND, name, "Failed", message, warning=True)
            return StatusEntry(Phase.Error, message)
        if result.kernel_seconds is not None:
            report.kernel_load_seconds.append(result.kernel_seconds)
        report.programs_changed |= result.loaded or bool(result.detached)
        prog_id = result.status.program_id
        if result.upgraded:
            report.event(PROGRAM_KIND, name, "Upgraded", f"program {prog_id} replaced the previous version in place")
        elif result.loaded:
            report.event(PROGRAM_KIND, name, "Loaded", f"program {prog_id} ({pp.res.program}) loaded")
        if result.attached and not result.loaded:
            # The program did not change, yet a target was missing it: drift, repaired.
            targets = ", ".join(result.attached)
            message = f"program {prog_id} re-attached to {targets} (it had been detached or its target re-created)"
            report.event(PROGRAM_KIND, name, "Repaired", message)
        elif result.attached:
            report.event(PROGRAM_KIND, name, "Attached", f"program {prog_id} attached to {', '.join(result.attached)}")
        if result.detached:
            report.event(PROGRAM_KIND, name, "Detached", f"detached from {', '.join(result.detached)}")
        return result.status

    def _plan_removal(self, name: str, reason: str) -> ProgramRemoval:
        try:
            return ProgramRemoval(name, plan_removal(self.kernel, self.layout, name, reason))
        except Exception:
            return ProgramRemoval(name, None)

    def _apply_removal(self, removal: ProgramRemoval, report: Report) -> None:
        name = removal.name
        try:
            removed = apply_removal(self.kernel, self.layout, name, claimed_pins(self._records()))
        except Exception as exc:
            message = f"cannot remove from this node: {failure(exc)}"
            report.programs[name] = StatusEntry(Phase.Error, message)
            report.event(PROGRAM_KIND, name, "Failed", message, warning=True)
            return
        if removed:
            report.event(PROGRAM_KIND, name, "Detached", f"detached from {', '.join(removed)}")
        report.released.add((PROGRAM_KIND, name))

    # -- the node's ledger -------------------------------------------------------------------------

    def _records(self) -> dict[str, ProgramMeta]:
        """Every program's record on this node, read once per plan (maps ask about them all)."""
        records: dict[str, ProgramMeta] = {}
        for name in self.layout.program_names(self.kernel):
            try:
                raw = self.kernel.read_record(self.layout.meta_pin(name))
            except Exception:
                continue
            if raw:
                records[name] = ProgramMeta.decode(raw)
        return records

    def _map_records(self) -> dict[str, MapRecord]:
        """The ledger's BpfMap records: who holds which pin, and the map ID behind it."""
        records: dict[str, MapRecord] = {}
        for name in self.layout.map_record_names(self.kernel):
            try:
                record = read_map_record(self.kernel, self.layout, name)
            except Exception:
                continue
            if record is not None and record.owner:
                records[record.owner] = record
        return records

    def _sweep(self) -> None:
        """Once per engine: remove temporary pins of an earlier process killed mid-replace."""
        for pin in self.layout.temporary_pins(self.kernel):
            log.info("removing %s, left by a process that was killed while pinning", pin)
            self.kernel.unpin(pin)
        self._swept = True
