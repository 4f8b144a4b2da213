"""One BpfMap on this node: plan (create, adopt, check, re-pin, move, release) and apply.

Ownership is the ledger's (``MapRecord``): the pin a BpfMap holds and the map ID behind it are
recorded before the kernel is changed. So:

- a pin another BpfMap holds is refused, naming the holder; a pin nothing records (made by an
  earlier version, or kept by reclaimPolicy Retain) is claimed after the compatibility check;
- an existing pin that differs is reported field by field and left as it is;
- a removed pin is pinned again from the recorded ID (the same map, whatever its kernel name);
  only a map that is gone for good is re-created, and status says its contents were lost;
- a changed ``pinName`` moves the same map (same ID, contents kept);
- a changed ``spec.adopt`` is applied only if it names the map already held, else reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bpfshare.api.resources import MapResource
from bpfshare.api.status import MapStatus, Phase, StatusEntry
from bpfshare.engine.kernel import MapView, NodeKernel
from bpfshare.engine.layout import Layout
from bpfshare.engine.meta import MapRecord
from bpfshare.engine.plan import AdoptMap, CreateMap, MapPlan, MapRelease, MoveMap, RepinMap, RetainMap, UnpinMap
from bpfshare.errors import BpfshareError, IncompatibleMapError
from bpfshare.kernel.compat import map_differences
from bpfshare.kernel.maps import PERCPU_TYPES
from bpfshare.spec import MapSpec, kernel_object_name


def map_spec(res: MapResource) -> MapSpec:
    return MapSpec(
        name=kernel_object_name(res.pin_name.replace("-", "_")),
        type=res.type,
        key_size=res.key_size,
        value_size=res.value_size,
        max_entries=res.max_entries,
        flags=res.flags,
    )


def map_memory(spec: MapSpec, possible_cpus: int) -> int:
    """What the map's entries take at most: (key + value) x max entries; a per-CPU map holds one
    value, rounded up to 8 bytes, per possible CPU (the kernel's own accounting is close to this)."""
    value = spec.value_size
    if spec.type in PERCPU_TYPES:
        value = ((value + 7) & ~7) * possible_cpus
    return (spec.key_size + value) * spec.max_entries


def over_budget(spec: MapSpec, budget: int, possible_cpus: int) -> str:
    """Why creating the map is refused ("" if it fits), naming the sizes and the limit."""
    need = map_memory(spec, possible_cpus)
    if need <= budget:
        return ""
    per_cpu = f" x {possible_cpus} CPUs" if spec.type in PERCPU_TYPES else ""
    return (
        f"spec: {spec.max_entries} entries x (key {spec.key_size} + value {spec.value_size}{per_cpu}) bytes = "
        f"{_size(need)}, more than the map memory budget of {_size(budget)} (agent flag --map-memory-budget)"
    )


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def read_map_record(kernel: NodeKernel, layout: Layout, name: str) -> MapRecord | None:
    raw = kernel.read_record(layout.map_record(name))
    return MapRecord.decode(raw) if raw else None


def _error(message: str) -> StatusEntry:
    return StatusEntry(Phase.Error, message)


def plan_map(
    kernel: NodeKernel,
    layout: Layout,
    res: MapResource,
    record: MapRecord | None,
    holder: str | None = None,
    known_id: int | None = None,
) -> MapPlan:
    """Decide what the map needs. ``record``: this BpfMap's ledger record; ``holder``: another
    BpfMap that holds the same pin; ``known_id``: a map ID this node reported before (status, or a
    program's record), trusted less than the ledger: re-pinned only if name and shape match."""
    spec = map_spec(res)
    pin = layout.map_pin(res.pin_name)
    plan = MapPlan(res, spec, pin, record=record)
    if holder is not None:
        plan.outcome = _error(
            f"pin {pin} is held by BpfMap {holder}: two BpfMaps may not share a pin "
            f"(bind the programs to BpfMap {holder} instead)"
        )
        return plan
    if res.adopt:
        source = Path(res.adopt)
        if source == pin or layout.maps_dir in source.parents or layout.map_records_dir in source.parents:
            plan.outcome = _error(f"spec.adopt: {source} is a pin bpfshare manages itself; adopt another tool's pin")
            return plan
    if record is not None and record.pin and record.pin != str(pin):
        return _plan_move(kernel, plan, Path(record.pin), record)
    if record is not None and res.adopt and res.adopt != record.adopted_from:
        changed = _adopt_change(kernel, res, record)
        if changed is not None:
            plan.outcome = changed
            return plan
    if kernel.exists(pin):
        view = kernel.map_at(pin)
        if record is not None and record.map_id and view.id != record.map_id:
            plan.outcome = _error(
                f"{pin} holds map {view.id}, not map {record.map_id} that this BpfMap recorded: it was replaced "
                "outside bpfshare and is left alone"
            )
            return plan
        diffs = map_differences(spec, view)
        if diffs:
            plan.outcome = _error(str(IncompatibleMapError(f"pinned map {pin}", diffs)))
        else:
            plan.observed = view
        return plan
    if record is not None and record.map_id:
        live = kernel.map_by_id(record.map_id)  # the recorded map: its ID is the proof, not its name
        if live is not None and not map_differences(spec, live):
            plan.action = RepinMap(record.map_id, pin)
        else:
            plan.action = CreateMap(spec, pin, lost_id=record.map_id)
        return plan
    if res.adopt:
        _plan_adopt(kernel, layout, plan, Path(res.adopt))
        return plan
    if known_id:
        live = kernel.map_by_id(known_id)
        # Not from the ledger: the ID may have been reused by an unrelated map, so name and shape must match.
        if live is not None and live.name == spec.name and not map_differences(spec, live):
            plan.action = RepinMap(known_id, pin)
        else:
            plan.action = CreateMap(spec, pin, lost_id=known_id)
        return plan
    plan.action = CreateMap(spec, pin)
    return plan


def _plan_adopt(kernel: NodeKernel, layout: Layout, plan: MapPlan, source: Path) -> None:
    if not kernel.on_bpffs(source):
        plan.outcome = _error(f"spec.adopt: {source} is not inside bpffs")
    elif kernel.is_dir(source):
        plan.outcome = _error(f"spec.adopt: {source} is a directory, not a pinned map")
    elif not kernel.exists(source):
        plan.outcome = StatusEntry(Phase.Pending, f"spec.adopt: waiting for {source} to exist")
    else:
        foreign = kernel.map_at(source)
        diffs = map_differences(plan.spec, foreign)
        if diffs:
            plan.outcome = _error(str(IncompatibleMapError(f"spec.adopt: map pinned at {source}", diffs)))
        else:
            plan.action = AdoptMap(source, plan.pin, foreign.id)


def _plan_move(kernel: NodeKernel, plan: MapPlan, source: Path, record: MapRecord) -> MapPlan:
    """spec.pinName changed: the same map goes to the new pin; never a new, empty one."""
    if kernel.exists(plan.pin):
        plan.outcome = _error(
            f"spec.pinName: {plan.pin} is already pinned; the map stays at {source} (remove that pin or choose "
            "another name)"
        )
        return plan
    live = kernel.map_at(source) if kernel.exists(source) else kernel.map_by_id(record.map_id)
    if live is None or (record.map_id and live.id != record.map_id):
        plan.action = CreateMap(plan.spec, plan.pin, lost_id=record.map_id or None)
        return plan
    diffs = map_differences(plan.spec, live)
    if diffs:
        plan.outcome = _error(str(IncompatibleMapError(f"pinned map {source} (moving to {plan.pin})", diffs)))
    else:
        plan.action = MoveMap(source, plan.pin, live.id)
    return plan


def _adopt_change(kernel: NodeKernel, res: MapResource, record: MapRecord) -> StatusEntry | None:
    """A new spec.adopt is accepted only if it names the map this BpfMap already holds."""
    source = Path(res.adopt or "")
    try:
        if kernel.exists(source) and kernel.map_at(source).id == record.map_id:
            return None
    except BpfshareError:
        pass
    held = f"map {record.map_id}" + (f" adopted from {record.adopted_from}" if record.adopted_from else "")
    return _error(
        f"spec.adopt changed to {source}, but this BpfMap holds {held}; bpfshare does not swap the map under its "
        "programs: delete the BpfMap (reclaimPolicy Retain keeps its pin) and create it again to adopt another map"
    )


@dataclass
class MapResult:
    status: StatusEntry
    events: list[tuple[str, str, bool]] = field(default_factory=list)  # (reason, message, warning)


def apply_map(kernel: NodeKernel, layout: Layout, plan: MapPlan) -> MapResult:
    """Carry out the map's plan: record the claim, change the kernel, confirm the record."""
    res, pin, action = plan.res, plan.pin, plan.action
    if plan.outcome is not None:
        if plan.outcome.phase is Phase.Error:
            return MapResult(plan.outcome, [("Failed", plan.outcome.message, True)])
        return MapResult(plan.outcome)
    events: list[tuple[str, str, bool]] = []
    message = ""
    previous = plan.record
    adopted = res.adopt or (previous.adopted_from if previous is not None else "") or ""
    if isinstance(action, AdoptMap):
        adopted = str(action.source)
    intended = MapRecord(res.name, str(pin), plan.predicted_id or 0, adopted)
    record_pin = layout.map_record(res.name)
    if previous != intended:
        kernel.write_record(record_pin, intended.encode())  # the claim, before the kernel changes
    if plan.observed is not None:
        view = plan.observed
    elif isinstance(action, AdoptMap):
        kernel.pin_existing_map(action.source, pin)  # a second pin; the adopted pin is never removed
        view = _checked(kernel, plan)
        events.append(("Adopted", f"map {view.id} adopted from {action.source}", False))
    elif isinstance(action, MoveMap):
        kernel.pin_existing_map(action.source if kernel.exists(action.source) else action.map_id, pin)
        view = _checked(kernel, plan)
        kernel.unpin(action.source)
        events.append(("Moved", f"map {view.id} moved from {action.source} to {pin}, contents kept", False))
    elif isinstance(action, RepinMap):
        try:
            kernel.pin_existing_map(action.map_id, pin)
            view = _checked(kernel, plan)
            events.append(("Repinned", f"pin {pin} was removed; map {view.id} pinned again, contents kept", False))
        except BpfshareError:  # gone since the plan was made
            view, message = _create(kernel, CreateMap(plan.spec, pin, lost_id=action.map_id), events)
    else:
        assert isinstance(action, CreateMap)
        view, message = _create(kernel, action, events)
    confirmed = MapRecord(res.name, str(pin), view.id, adopted)
    if confirmed != intended:
        kernel.write_record(record_pin, confirmed.encode())
    status = MapStatus(pin_path=str(pin), map_id=view.id, adopted_from=adopted or None)
    return MapResult(StatusEntry(Phase.Ready, message, map=status), events)


def _checked(kernel: NodeKernel, plan: MapPlan) -> MapView:
    view = kernel.map_at(plan.pin)
    diffs = map_differences(plan.spec, view)
    if diffs:
        raise IncompatibleMapError(f"pinned map {plan.pin}", diffs)
    return view


def _create(kernel: NodeKernel, action: CreateMap, events: list[tuple[str, str, bool]]) -> tuple[MapView, str]:
    view, created = kernel.get_or_create_map(action.spec, action.pin, f"pinned map {action.pin}")
    if not created:  # another loader pinned a compatible map meanwhile: share it
        return view, ""
    if action.lost_id is not None:
        message = (
            f"map {action.lost_id} was gone (node restarted or bpffs emptied): created map {view.id}, contents lost"
        )
        events.append(("Recreated", message, True))
        return view, message
    events.append(("Created", f"map {view.id} pinned at {action.pin}", False))
    return view, ""


# -- release -------------------------------------------------------------------------------------


def plan_release(
    kernel: NodeKernel, layout: Layout, res: MapResource, record: MapRecord | None, users: set[str]
) -> MapRelease:
    """A BpfMap deleted or no longer selecting this node: wait for its users, then unpin or keep
    exactly the pin its record holds (nothing else: not another BpfMap's, not a foreign one)."""
    if record is None or not record.pin:
        return MapRelease(res, layout.map_pin(res.pin_name))
    pin = Path(record.pin)
    release = MapRelease(res, pin, record=layout.map_record(res.name))
    if not kernel.exists(pin):
        return release
    if users:
        release.users = tuple(sorted(users))
        return release
    release.action = RetainMap(pin) if res.reclaim_policy == "Retain" else UnpinMap(pin)
    return release


def apply_release(kernel: NodeKernel, layout: Layout, release: MapRelease) -> None:
    """Unpin the recorded pin under the pin root (never an adopted source pin), then forget it."""
    if isinstance(release.action, UnpinMap):
        if not layout.inside(release.pin):
            raise BpfshareError(f"refusing to remove {release.pin}: outside the pin root {layout.root}")
        kernel.unpin(release.pin)
    if release.record is not None:
        kernel.unpin(release.record)
