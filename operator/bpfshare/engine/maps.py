"""One BpfMap on this node: plan (create, adopt, check, re-pin, release) and apply.

An existing pin that differs is reported field by field and left as it is: its contents and its
users matter more than the new spec. A map whose pin was removed while programs still hold it is
pinned again from its ID (no data lost); only a map that is gone for good is re-created, and
status says that its contents were lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bpfshare.api.resources import MapResource
from bpfshare.api.status import MapStatus, Phase, StatusEntry
from bpfshare.engine.kernel import MapView, NodeKernel
from bpfshare.engine.layout import Layout
from bpfshare.engine.plan import AdoptMap, CreateMap, MapPlan, MapRelease, RepinMap, RetainMap, UnpinMap
from bpfshare.errors import BpfshareError, IncompatibleMapError
from bpfshare.kernel.compat import map_differences
from bpfshare.spec import MapSpec


def map_spec(res: MapResource) -> MapSpec:
    return MapSpec(
        name=res.pin_name.replace("-", "_")[:15],
        type=res.type,
        key_size=res.key_size,
        value_size=res.value_size,
        max_entries=res.max_entries,
        flags=res.flags,
    )


def differences(spec: MapSpec, view: MapView) -> list[str]:
    """Every field in which a live map differs from the spec (compat's rules, cilium/ebpf's words)."""
    return map_differences(spec, view)


def plan_map(kernel: NodeKernel, layout: Layout, res: MapResource, known_id: int | None) -> MapPlan:
    """Decide what the map needs; ``known_id`` is the map this node had before (status, records)."""
    spec = map_spec(res)
    pin = layout.map_pin(res.pin_name)
    plan = MapPlan(res, spec, pin)
    if kernel.exists(pin):
        view = kernel.map_at(pin)
        diffs = differences(spec, view)
        if diffs:
            plan.outcome = StatusEntry(Phase.Error, str(IncompatibleMapError(f"pinned map {pin}", diffs)))
        else:
            plan.observed = view
        return plan
    if res.adopt:
        source = Path(res.adopt)
        if not kernel.on_bpffs(source):
            plan.outcome = StatusEntry(Phase.Error, f"spec.adopt: {source} is not inside bpffs")
        elif not kernel.exists(source):
            plan.outcome = StatusEntry(Phase.Pending, f"spec.adopt: waiting for {source} to exist")
        else:
            foreign = kernel.map_at(source)
            diffs = differences(spec, foreign)
            if diffs:
                subject = f"spec.adopt: map pinned at {source}"
                plan.outcome = StatusEntry(Phase.Error, str(IncompatibleMapError(subject, diffs)))
            else:
                plan.action = AdoptMap(source, pin, foreign.id)
        return plan
    if known_id:
        live = kernel.map_by_id(known_id)
        # The ID may have been reused by an unrelated map: only ours (same name, same shape) is re-pinned.
        if live is not None and live.name == spec.name and not differences(spec, live):
            plan.action = RepinMap(known_id, pin)
            return plan
        plan.action = CreateMap(spec, pin, lost_id=known_id)
        return plan
    plan.action = CreateMap(spec, pin)
    return plan


@dataclass
class MapResult:
    status: StatusEntry
    events: list[tuple[str, str, bool]] = field(default_factory=list)  # (reason, message, warning)


def apply_map(kernel: NodeKernel, plan: MapPlan) -> MapResult:
    """Carry out the map's plan; never alters an existing map."""
    res, pin, action = plan.res, plan.pin, plan.action
    if plan.outcome is not None:
        if plan.outcome.phase is Phase.Error:
            return MapResult(plan.outcome, [("Failed", plan.outcome.message, True)])
        return MapResult(plan.outcome)
    events: list[tuple[str, str, bool]] = []
    message = ""
    if plan.observed is not None:
        view = plan.observed
    elif isinstance(action, AdoptMap):
        kernel.pin_existing_map(action.source, pin)  # a second pin; the adopted pin is never removed
        view = _checked(kernel, plan)
        events.append(("Adopted", f"map {view.id} adopted from {res.adopt}", False))
    elif isinstance(action, RepinMap):
        try:
            kernel.pin_existing_map(action.map_id, pin)
            view = _checked(kernel, plan)
            events.append(("Repinned", f"pin {pin} was removed; map {view.id} pinned again, contents kept", False))
        except BpfshareError:  # gone since the plan was made
            view, message = _create(kernel, plan, CreateMap(plan.spec, pin, lost_id=action.map_id), events)
    else:
        assert isinstance(action, CreateMap)
        view, message = _create(kernel, plan, action, events)
    status = MapStatus(pin_path=str(pin), map_id=view.id, adopted_from=res.adopt or None)
    return MapResult(StatusEntry(Phase.Ready, message, map=status), events)


def _checked(kernel: NodeKernel, plan: MapPlan) -> MapView:
    view = kernel.map_at(plan.pin)
    diffs = differences(plan.spec, view)
    if diffs:
        raise IncompatibleMapError(f"pinned map {plan.pin}", diffs)
    return view


def _create(
    kernel: NodeKernel, plan: MapPlan, action: CreateMap, events: list[tuple[str, str, bool]]
) -> tuple[MapView, str]:
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


def plan_release(kernel: NodeKernel, layout: Layout, res: MapResource, users: set[str]) -> MapRelease:
    """A BpfMap deleted or no longer selecting this node: wait for its users, then unpin or keep."""
    pin = layout.map_pin(res.pin_name)
    release = MapRelease(res, pin)
    if not kernel.exists(pin):
        return release
    if users:
        release.users = tuple(sorted(users))
        return release
    release.action = RetainMap(pin) if res.reclaim_policy == "Retain" else UnpinMap(pin)
    return release


def apply_release(kernel: NodeKernel, layout: Layout, release: MapRelease) -> None:
    """Unpin the resource's pin under the pin root (never the adopted source pin)."""
    if isinstance(release.action, UnpinMap):
        if not layout.inside(release.pin):
            raise BpfshareError(f"refusing to remove {release.pin}: outside the pin root {layout.root}")
        kernel.unpin(release.pin)
