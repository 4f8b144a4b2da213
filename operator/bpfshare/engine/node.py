"""The node engine: one pass that converges this node to the resources that select it.

Maps first (programs bind to them), then programs; removals of programs before removals of maps,
so that a map in use is only released once its last user on the node is gone. Every resource is
handled on its own: an error in one is reported in its status and never stops the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bpfshare.api.resources import MAP_KIND, PROGRAM_KIND, MapResource, ProgramResource
from bpfshare.api.status import Event, Phase, StatusEntry
from bpfshare.engine.bytecode import CollectionCache, ConfigMapReader, fetch, no_config_maps
from bpfshare.engine.layout import Layout
from bpfshare.engine.maps import ensure_map, remove_map
from bpfshare.engine.meta import ProgramMeta, read_meta
from bpfshare.engine.programs import WaitingError, ensure_program, remove_program
from bpfshare.errors import BpfshareError
from bpfshare.load.loader import MapBinding

log = logging.getLogger("bpfshare.engine")


@dataclass
class Report:
    maps: dict[str, StatusEntry] = field(default_factory=dict)
    programs: dict[str, StatusEntry] = field(default_factory=dict)
    # (kind, name): this node holds nothing more of the resource (its finalizer may go).
    released: set[tuple[str, str]] = field(default_factory=set)
    events: list[Event] = field(default_factory=list)
    seconds: float = 0.0
    kernel_load_seconds: list[float] = field(default_factory=list)  # one per program loaded

    def event(self, kind: str, name: str, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event(kind, name, "Warning" if warning else "Normal", reason, message))


class Engine:
    def __init__(self, pin_root: Path, node: str = "", read_config_map: ConfigMapReader = no_config_maps) -> None:
        self.layout = Layout(Path(pin_root))
        self.node = node
        self.read_config_map = read_config_map
        self.collections = CollectionCache()
        self._lock = threading.Lock()
        self._known_map_ids: dict[str, int] = {}  # BpfMap name -> the map ID this node last had
        self._swept = False
        self._pass_records: dict[str, ProgramMeta] | None = None
        self._pass_binders: tuple[dict[str, set[str]], dict[str, set[str]]] | None = None

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
        """Converge the node. ``only_programs`` limits which programs are re-checked (maps always
        are: it is cheap); ``complete`` says the resources given are all there are, so program
        directories without a resource are orphans to remove; ``map_ids`` are the map IDs this node
        reported before, by BpfMap name (from status), to re-pin a map whose pin was removed."""
        with self._lock:
            start = time.perf_counter()
            report = Report()
            if not self._swept:
                self._sweep()
            self._pass_records = None
            self._pass_binders = None
            self._known_map_ids.update(map_ids or {})
            self._reconcile(list(maps), list(programs), labels or {}, only_programs, complete, report)
            report.seconds = time.perf_counter() - start
            return report

    def _sweep(self) -> None:
        """Once per engine: remove temporary pins of an earlier process killed mid-replace."""
        for pin in self.layout.stale_temporary_pins():
            log.info("removing %s, left by a process that was killed while pinning", pin)
            pin.unlink(missing_ok=True)
        self._swept = True

    def _reconcile(
        self,
        maps: list[MapResource],
        programs: list[ProgramResource],
        labels: Mapping[str, str],
        only: set[str] | None,
        complete: bool,
        report: Report,
    ) -> None:
        active_maps = {m.name: m for m in maps if not m.meta.deleting and m.node_selector.matches(labels)}
        leaving_maps = [m for m in maps if m.name not in active_maps]
        active_progs = {p.name: p for p in programs if not p.meta.deleting and p.node_selector.matches(labels)}
        leaving_progs = [p for p in programs if p.name not in active_progs]

        for prog in leaving_progs:
            self._remove_program(prog.name, report)
        if complete:
            known = {p.name for p in programs}
            for orphan in self.layout.program_names():
                if orphan not in known:
                    log.info("removing program directory %s: no BpfProgram names it", orphan)
                    self._remove_program(orphan, report)

        for res in active_maps.values():
            report.maps[res.name] = self._ensure_map(res, report)

        for res in active_progs.values():
            if only is None or res.name in only:
                report.programs[res.name] = self._ensure_program(res, active_maps, report.maps, report)

        self._pass_records = None  # programs were (re)loaded: read their records afresh
        self._pass_binders = None
        for res in active_maps.values():
            entry = report.maps[res.name]
            if entry.phase is Phase.Ready:
                entry.fields["usedBy"] = sorted(self._users(res, active_progs))
        for res in leaving_maps:
            self._release_map(res, active_progs, report)

    # -- maps ---------------------------------------------------------------------------------------

    def _ensure_map(self, res: MapResource, report: Report) -> StatusEntry:
        try:
            known = self._known_map_ids.get(res.name)
            if known is None and not self.layout.map_pin(res.pin_name).exists():
                known = self._recorded_map_id(res)  # only when the pin is gone: it reads every record
            outcome = ensure_map(self.layout, res, known)
        except (BpfshareError, OSError) as exc:  # OSError: bpffs or /proc refused (permissions, ...)
            report.event(MAP_KIND, res.name, "Failed", str(exc), warning=True)
            return StatusEntry(Phase.Error, str(exc))
        map_id = outcome.status.fields["mapId"]
        self._known_map_ids[res.name] = map_id
        if outcome.repinned:
            report.event(
                MAP_KIND,
                res.name,
                "Repinned",
                f"pin {outcome.status.fields['pinPath']} was removed; map {map_id} pinned again, contents kept",
            )
        if outcome.lost is not None:
            report.event(MAP_KIND, res.name, "Recreated", outcome.status.message, warning=True)
            return outcome.status
        if outcome.created and not outcome.repinned:
            report.event(
                MAP_KIND,
                res.name,
                "Created",
                f"map {outcome.status.fields['mapId']} pinned at {outcome.status.fields['pinPath']}",
            )
        if outcome.adopted:
            report.event(
                MAP_KIND, res.name, "Adopted", f"map {outcome.status.fields['mapId']} adopted from {res.adopt}"
            )
        return outcome.status

    def _records(self) -> dict[str, ProgramMeta]:
        """Every program's record on this node, read once per pass (maps ask about them all)."""
        if self._pass_records is None:
            self._pass_records = {}
            for name in self.layout.program_names():
                try:
                    meta = read_meta(self.layout.meta_pin(name))
                except BpfshareError:
                    continue
                if meta is not None:
                    self._pass_records[name] = meta
        return self._pass_records

    def _recorded_map_id(self, res: MapResource) -> int | None:
        """The map ID that programs on this node were bound to through the resource's pin (their
        records survive a removed map pin, and a restart of the agent)."""
        pin = str(self.layout.map_pin(res.pin_name))
        for meta in self._records().values():
            for obj_map, path in meta.bindings.items():
                if path == pin and meta.map_ids.get(obj_map):
                    return meta.map_ids[obj_map]
        return None

    def _users(self, res: MapResource, active_progs: Mapping[str, ProgramResource]) -> set[str]:
        """BpfPrograms on this node that bind the map: by resource, and by what bpffs records."""
        by_map, by_pin = self._binders(active_progs)
        return by_map.get(res.name, set()) | by_pin.get(str(self.layout.map_pin(res.pin_name)), set())

    def _binders(self, active_progs: Mapping[str, ProgramResource]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        """Who binds what, worked out once per pass (every map asks, so not once per map: that was
        maps x programs steps, a fifth of an idle resync with 500 of each): BpfMap name -> pinned
        programs whose resource binds it, and pin path -> programs whose record binds it."""
        if self._pass_binders is None:
            by_map: dict[str, set[str]] = {}
            for prog in active_progs.values():
                bound = set(dict(prog.maps).values())
                if bound and self.layout.program_pin(prog.name).exists():
                    for map_name in bound:
                        by_map.setdefault(map_name, set()).add(prog.name)
            by_pin: dict[str, set[str]] = {}
            for name, meta in self._records().items():
                for path in set(meta.bindings.values()):
                    by_pin.setdefault(path, set()).add(name)
            self._pass_binders = (by_map, by_pin)
        return self._pass_binders

    def _release_map(self, res: MapResource, active_progs: Mapping[str, ProgramResource], report: Report) -> None:
        pin = self.layout.map_pin(res.pin_name)
        if not pin.exists():
            report.released.add((MAP_KIND, res.name))
            return
        users = self._users(res, active_progs)
        if users:
            message = f"deletion waits: still used by {', '.join(sorted(users))} on this node"
            report.maps[res.name] = StatusEntry(Phase.Ready, message, {"pinPath": str(pin), "usedBy": sorted(users)})
            return
        if res.reclaim_policy == "Retain":
            report.event(MAP_KIND, res.name, "Retained", f"pin {pin} and its contents kept (reclaimPolicy Retain)")
        else:
            try:
                remove_map(self.layout, res)
            except (BpfshareError, OSError) as exc:
                report.maps[res.name] = StatusEntry(Phase.Error, f"cannot unpin {pin}: {exc}")
                return
            report.event(MAP_KIND, res.name, "Deleted", f"unpinned {pin}")
        report.released.add((MAP_KIND, res.name))

    # -- programs -----------------------------------------------------------------------------------

    def _bindings(
        self, res: ProgramResource, maps: Mapping[str, MapResource], statuses: Mapping[str, StatusEntry]
    ) -> tuple[dict[str, MapBinding], dict[str, int]]:
        bindings: dict[str, MapBinding] = {}
        ids: dict[str, int] = {}
        for obj_map, map_name in res.maps:
            bpfmap = maps.get(map_name)
            status = statuses.get(map_name)
            if bpfmap is None:
                pin = self.layout.map_pin(map_name)  # `apply -f` of a program alone: the default pin name
                if not pin.exists():
                    raise WaitingError(f"waiting for BpfMap {map_name} (spec.maps.{obj_map}): not on this node")
            elif status is None or status.phase is not Phase.Ready:
                why = f": {status.message}" if status is not None and status.message else ""
                raise WaitingError(f"waiting for BpfMap {map_name} (spec.maps.{obj_map}) to be Ready{why}")
            else:
                pin = self.layout.map_pin(bpfmap.pin_name)
                ids[obj_map] = int(status.fields["mapId"])
            bindings[obj_map] = MapBinding(pin_path=pin)
            if obj_map not in ids:
                from bpfshare.kernel.maps import Map

                with Map.from_pin(pin) as live:
                    ids[obj_map] = live.info().id
        return bindings, ids

    def _ensure_program(
        self, res: ProgramResource, maps: Mapping[str, MapResource], statuses: Mapping[str, StatusEntry], report: Report
    ) -> StatusEntry:
        try:
            bindings, ids = self._bindings(res, maps, statuses)
            data = fetch(res.bytecode, self.read_config_map)
            digest, collection = self.collections.parse(data)
            outcome = ensure_program(self.layout, res, collection, digest, bindings, ids)
        except WaitingError as exc:
            return StatusEntry(Phase.Pending, str(exc))
        except (BpfshareError, OSError) as exc:
            report.event(PROGRAM_KIND, res.name, "Failed", str(exc), warning=True)
            return StatusEntry(Phase.Error, str(exc))
        if outcome.kernel_seconds is not None:
            report.kernel_load_seconds.append(outcome.kernel_seconds)
        prog_id = outcome.status.fields["programId"]
        if outcome.upgraded:
            report.event(
                PROGRAM_KIND, res.name, "Upgraded", f"program {prog_id} replaced the previous version in place"
            )
        elif outcome.loaded:
            report.event(PROGRAM_KIND, res.name, "Loaded", f"program {prog_id} ({res.program}) loaded")
        if outcome.attached and not outcome.loaded:
            # The program did not change, yet a target was missing it: drift, repaired.
            report.event(
                PROGRAM_KIND,
                res.name,
                "Repaired",
                f"program {prog_id} re-attached to "
                f"{', '.join(outcome.attached)} (it had been detached or its target re-created)",
            )
        elif outcome.attached:
            report.event(
                PROGRAM_KIND, res.name, "Attached", f"program {prog_id} attached to {', '.join(outcome.attached)}"
            )
        if outcome.detached:
            report.event(PROGRAM_KIND, res.name, "Detached", f"detached from {', '.join(outcome.detached)}")
        return outcome.status

    def _remove_program(self, name: str, report: Report) -> None:
        try:
            removed = remove_program(self.layout, name)
        except (BpfshareError, OSError) as exc:
            report.programs[name] = StatusEntry(Phase.Error, f"cannot remove from this node: {exc}")
            report.event(PROGRAM_KIND, name, "Failed", f"cannot remove from this node: {exc}", warning=True)
            return
        if removed:
            report.event(PROGRAM_KIND, name, "Detached", f"detached from {', '.join(removed)}")
        report.released.add((PROGRAM_KIND, name))
