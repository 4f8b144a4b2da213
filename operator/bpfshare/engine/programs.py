"""One BpfProgram on this node: plan (load, attach, repair, detach) and apply; removal.

Order matters for "no moment without a program": a new version is loaded first, then every
attachment is switched to it (tc replace at the same priority/handle, BPF_LINK_UPDATE for links),
and only then is the program pin replaced and stale attachments removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpfshare.api.resources import ProgramResource
from bpfshare.api.status import AttachmentStatus, Phase, ProgramStatus, StatusEntry
from bpfshare.api.targets import AttachTarget, TcTarget
from bpfshare.engine.kernel import AttachResult, Loaded, NodeKernel, ProgramView
from bpfshare.engine.layout import Layout
from bpfshare.engine.meta import ProgramMeta
from bpfshare.engine.plan import Attach, Detach, LoadProgram, MapPlan, ProgramPlan, RemoveProgram
from bpfshare.errors import BpfshareError, ObjectError, TargetNotFoundError
from bpfshare.load.attach import (
    LINKS_DIR,
    check_fits,
    is_hashed_link_pin,
    link_pin_name,
    link_pin_path,
    link_pin_target,
)
from bpfshare.load.loader import MapBinding, convention_pin_path
from bpfshare.spec import CollectionSpec
from bpfshare.types import Direction


class WaitingError(BpfshareError):
    """Something the program needs is not there yet (a BpfMap not Ready): phase Pending, not Error."""


def fingerprint(digest: str, program: str, bindings: Mapping[str, MapBinding], map_ids: Mapping[str, int]) -> str:
    """Equal fingerprints mean the pinned program is exactly what the resource asks for."""
    body = json.dumps(
        {
            "digest": digest,
            "program": program,
            "bindings": {k: str(v.pin_path) for k, v in sorted(bindings.items())},
            "mapIds": dict(sorted(map_ids.items())),
        },
        sort_keys=True,
    )
    return hashlib.sha256(body.encode()).hexdigest()


def tc_record(target: TcTarget) -> dict[str, object]:
    return {
        "interface": target.interface,
        "direction": target.direction,
        "netns": target.netns,
        "priority": target.priority,
        "handle": target.handle,
    }


def tc_target(record: Mapping[str, object]) -> TcTarget:
    direction: Direction = "egress" if record.get("direction") == "egress" else "ingress"
    netns = record.get("netns")
    return TcTarget(
        str(record["interface"]),
        direction,
        str(netns) if netns else None,
        int(str(record["priority"])),
        int(str(record["handle"])),
    )


# -- planning ------------------------------------------------------------------------------------


def read_program_record(kernel: NodeKernel, layout: Layout, name: str) -> ProgramMeta:
    raw = kernel.read_record(layout.meta_pin(name))
    return ProgramMeta.decode(raw) if raw else ProgramMeta()


def resolve_bindings(
    kernel: NodeKernel, layout: Layout, res: ProgramResource, maps: Mapping[str, MapPlan], plan: ProgramPlan
) -> None:
    """Each ``spec.maps`` entry -> the pin to bind and the map ID it will have (None: a new map).
    Raises WaitingError while a BpfMap is not Ready on this node."""
    for obj_map, map_name in res.maps:
        mp = maps.get(map_name)
        if mp is None:
            pin = layout.map_pin(map_name)  # `apply -f` of a program alone: the default pin name
            if not kernel.exists(pin):
                raise WaitingError(f"waiting for BpfMap {map_name} (spec.maps.{obj_map}): not on this node")
            plan.predicted_ids[obj_map] = kernel.map_at(pin).id
        elif mp.outcome is not None:
            why = f": {mp.outcome.message}" if mp.outcome.message else ""
            raise WaitingError(f"waiting for BpfMap {map_name} (spec.maps.{obj_map}) to be Ready{why}")
        else:
            pin = mp.pin
            plan.bound_maps[obj_map] = map_name
            plan.predicted_ids[obj_map] = mp.predicted_id
        plan.bindings[obj_map] = MapBinding(pin_path=pin)


class SlotClaims:
    """Who claims each tc slot on this node (from every program's record), kept up to date within
    a pass, so that two BpfPrograms never take the same slot from each other."""

    def __init__(self, records: Mapping[str, ProgramMeta]) -> None:
        self.owners: dict[tuple[object, ...], str] = {}
        for name, record in sorted(records.items()):
            for entry in record.tc:
                self.owners.setdefault(slot_key(tc_target(entry)), name)

    def holder(self, target: TcTarget, program: str) -> str | None:
        owner = self.owners.get(slot_key(target))
        return owner if owner is not None and owner != program else None

    def claim(self, target: TcTarget, program: str) -> None:
        self.owners.setdefault(slot_key(target), program)


def slot_key(target: TcTarget) -> tuple[object, ...]:
    return (target.netns, target.interface, target.direction, target.priority, target.handle)


def describe_slot(target: TcTarget) -> str:
    where = f"{target.interface}@{target.netns}" if target.netns else target.interface
    return f"tc slot {where} {target.direction} priority {target.priority} handle {target.handle}"


def plan_program(
    kernel: NodeKernel,
    layout: Layout,
    res: ProgramResource,
    maps: Mapping[str, MapPlan],
    collection: CollectionSpec,
    digest: str,
    source: str,
    slots: SlotClaims | None = None,
    known_record: ProgramMeta | None = None,
) -> ProgramPlan:
    """Decide whether the program needs a (re)load, which targets need attaching, what is stale.

    Refused before anything is loaded: a target that is not there (every one named), a tc slot
    that another BpfProgram claims or that a filter of another tool holds (the holder named).
    """
    slots = slots if slots is not None else SlotClaims({})
    plan = ProgramPlan(res, collection=collection, digest=digest)
    try:
        resolve_bindings(kernel, layout, res, maps, plan)
    except WaitingError as exc:
        plan.outcome = StatusEntry(Phase.Pending, str(exc))
        return plan
    try:
        spec = collection.program(res.program)
    except KeyError as exc:
        raise BpfshareError(f"spec.program: {exc.args[0]}") from None
    except ObjectError as exc:  # the object has the program, but it cannot be loaded: why
        raise type(exc)(f"spec.program: {exc}") from None
    for target in res.targets:
        check_fits(spec, target)
    # Every map the load brings up: the program's, its tail calls' and the inner maps in slots.
    for name in collection.load_closure(spec.name)[1]:
        m = collection.maps.get(name)
        pin = convention_pin_path(m, layout.root) if m is not None and name not in plan.bindings else None
        if pin is not None:
            plan.convention_pins.append(pin)
    reserved = sorted(
        p.name for p in plan.convention_pins if p.parent == layout.root and p.name in layout.reserved_names
    )
    if reserved:
        raise BpfshareError(
            f"map {reserved[0]!r} is pinned by name at {layout.root / reserved[0]}, which bpfshare keeps for "
            f"itself ({', '.join(sorted(layout.reserved_names))}): rename the map or bind it in spec.maps"
        )
    plan.spec = spec
    plan.previous = kernel.program_at(layout.program_pin(res.name))
    plan.record = known_record if known_record is not None else read_program_record(kernel, layout, res.name)
    ours = set(plan.record.program_ids) | ({plan.previous.id} if plan.previous else set())

    unknown = sorted(k for k, v in plan.predicted_ids.items() if v is None)
    if plan.previous is None:
        plan.load = LoadProgram(spec.name, source, "first load")
    elif unknown:
        plan.load = LoadProgram(spec.name, source, f"upgrade: bound map {', '.join(unknown)} is new")
    else:
        ids = {k: v for k, v in plan.predicted_ids.items() if v is not None}
        if plan.record.fingerprint != fingerprint(digest, spec.name, plan.bindings, ids):
            plan.load = LoadProgram(spec.name, source, "upgrade: " + _what_changed(plan.record, digest, spec.name, ids))

    # Each target is looked at once: what runs there decides both ownership and whether to attach.
    pin_dir = layout.program_dir(res.name)
    conflicts: list[str] = []
    unseen: list[AttachTarget] = []  # targets whose state could not be read: checked before acting
    prog_id = plan.previous.id if plan.previous is not None else 0
    for target in res.targets:
        current: AttachResult | None = None
        if isinstance(target, TcTarget):
            holder = slots.holder(target, res.name)
            if holder is not None:
                conflicts.append(f"{describe_slot(target)} is held by BpfProgram {holder}")
                continue
            try:
                found = kernel.tc_filter(target)
            except (BpfshareError, OSError):
                unseen.append(target)
                found = None
            if found is not None and found.prog_id not in ours:
                conflicts.append(
                    f"{describe_slot(target)} is held by another tool: filter {found.name or '(unnamed)'} "
                    f"running program {found.prog_id}"
                )
                continue
            if found is not None and found.prog_id == prog_id:
                current = AttachResult(handle=f"{target.priority}:{target.handle}")
        else:
            current = _current_link(kernel, target, pin_dir, prog_id)
            if current is None:
                unseen.append(target)
        if plan.load is None and current is not None:
            plan.current[target.key] = current
        else:
            plan.attach.append(Attach(target, repair=plan.load is None))
    if conflicts:
        raise BpfshareError("; ".join(conflicts) + " (bpfshare never replaces what it does not own)")
    if plan.load is not None or plan.attach:
        # Something will change: every target must be there first, every missing one named. A pod's
        # target whose place is gone is the pod going (its sandbox torn down before the pod watch
        # said so): nothing to attach there, nothing of ours left, and no reason to hold up the others.
        missing: list[str] = []
        gone: set[str] = set()  # keys of pods' targets whose namespace or cgroup went with the pod
        for t in unseen:
            why = kernel.missing_target(t)
            if why is None:
                continue
            if t.pod is not None and kernel.place_gone(t):
                gone.add(t.key)
            else:
                missing.append(why)
        if missing:
            raise BpfshareError("; ".join(missing))
        if gone:  # the rest of the plan, and applying it, go on as if they were not asked for
            plan.attach = [a for a in plan.attach if a.target.key not in gone]
            res = plan.res = dataclasses.replace(res, targets=tuple(t for t in res.targets if t.key not in gone))
    for target in res.targets:
        if isinstance(target, TcTarget):
            slots.claim(target, res.name)

    wanted = {t.key for t in res.targets}
    for record in plan.record.tc:
        target = tc_target(record)
        if target.key not in wanted:
            plan.detach.append(Detach(target))
    for name in kernel.list_dir(pin_dir / LINKS_DIR):
        link_target = link_pin_target(name, res.targets)
        if link_target is not None and link_target.key in wanted:
            continue
        key = link_target.key if link_target is not None else plan.record.links.get(name, "")
        if key or is_hashed_link_pin(name):  # a hashed name is one of ours: for a target no longer wanted
            plan.detach.append(Detach(link_target, link_pin=pin_dir / LINKS_DIR / name, label=key or name))
        # else: not a name bpfshare makes: left alone
    return plan


def _what_changed(record: ProgramMeta, digest: str, program: str, map_ids: Mapping[str, int]) -> str:
    if not record.fingerprint:
        return "no record of what was loaded"
    reasons = []
    if record.digest != digest:
        reasons.append("new bytecode")
    if record.program != program:
        reasons.append(f"program {record.program} -> {program}")
    if record.map_ids != dict(map_ids):
        reasons.append("bound maps changed")
    return ", ".join(reasons) or "bindings changed"


def _current_link(kernel: NodeKernel, target: AttachTarget, pin_dir: Path, prog_id: int) -> AttachResult | None:
    """The target's pinned link if it still runs the pinned program on that very target."""
    pin = link_pin_path(pin_dir, target)
    try:
        link = kernel.current_link(pin, target)
    except (BpfshareError, OSError):
        return None  # the target is missing or unreadable: attaching will name the cause
    if link is not None and link.prog_id == prog_id:
        return AttachResult(link_id=link.id, pin_path=pin)
    return None


# -- applying ------------------------------------------------------------------------------------


@dataclass
class ProgramResult:
    status: StatusEntry
    loaded: bool = False
    upgraded: bool = False
    kernel_seconds: float | None = None
    attached: list[str] = field(default_factory=list)  # targets newly attached or repaired
    detached: list[str] = field(default_factory=list)


def apply_program(
    kernel: NodeKernel,
    layout: Layout,
    plan: ProgramPlan,
    map_ids: Mapping[str, int | None],
    claimed_pins: dict[str, set[str]] | None = None,
) -> ProgramResult:
    """Carry out the program's plan. ``map_ids``: the bound maps' IDs after the maps were applied
    (None: that BpfMap did not become Ready, so the program waits). ``claimed_pins``: pin path ->
    the programs whose records claim it (a map pinned by name is ours only if one does).

    The record claims what is about to change *before* the kernel is changed (the new program's
    ID, every wanted tc slot, maps pinned by name) and is narrowed to what is attached once
    everything is done: a failure in between leaves the claims, and the next pass (or a delete)
    completes or undoes exactly that."""
    res = plan.res
    assert plan.spec is not None and plan.collection is not None
    ids: dict[str, int] = {}
    for obj_map, map_name in plan.bound_maps.items():
        map_id = map_ids.get(map_name)
        if map_id is None:
            raise WaitingError(f"waiting for BpfMap {map_name} (spec.maps.{obj_map}) to be Ready")
        ids[obj_map] = map_id
    for obj_map, predicted in plan.predicted_ids.items():
        if obj_map not in ids and predicted is not None:
            ids[obj_map] = predicted
    spec = plan.spec
    pin_dir = layout.program_dir(res.name)
    prog_pin = layout.program_pin(res.name)
    meta_pin = layout.meta_pin(res.name)
    wanted = fingerprint(plan.digest, spec.name, plan.bindings, ids)
    load = plan.load
    if load is None and plan.record.fingerprint != wanted:
        # A bound map was re-created between planning and now (its ID changed): reload after all.
        load = LoadProgram(spec.name, "", "upgrade: bound maps changed")
    result = ProgramResult(StatusEntry(Phase.Ready))
    previous_id = plan.previous.id if plan.previous is not None else 0
    tc_claims = [tc_record(t) for t in res.targets if isinstance(t, TcTarget)]
    links = {link_pin_name(t): t.key for t in res.targets if not isinstance(t, TcTarget)}
    if load is None and not plan.attach and not plan.detach and plan.previous is not None:
        settled = (plan.record.tc, plan.record.program_ids, plan.record.links) == (tc_claims, [previous_id], links)
        if settled:
            # Nothing to change (an idle resync): the status from what planning saw, no kernel call.
            result.status.program = _program_status(plan, ids, plan.previous, plan.current)
            return result
    record = dataclasses.replace(plan.record)
    shared = claimed_pins if claimed_pins is not None else {}
    program: Loaded
    if load is not None:
        # Intent: the maps this load will pin by name, if nobody has yet (then they are ours).
        new_pins = {str(p) for p in plan.convention_pins if not kernel.exists(p)} - set(record.pins)
        if new_pins:
            record.pins = sorted({*record.pins, *new_pins})
            kernel.write_record(meta_pin, record.encode())
        program = kernel.load(plan.collection, spec.name, plan.bindings, layout.root, pin_dir)
        result.loaded, result.upgraded = True, bool(previous_id)
        result.kernel_seconds = program.kernel_seconds
    else:
        program = kernel.open_program(prog_pin)
    try:
        # Intent: everything this pass may leave behind is claimed before it exists.
        claims = _union(record.tc, tc_claims)
        owned = sorted({*record.program_ids, previous_id, program.view.id} - {0})
        pins = sorted(
            {*record.pins}
            | {str(p) for p, created in program.pinned.items() if created or shared.get(str(p), set()) - {res.name}}
        )
        for pin in pins:  # later programs of this pass see the claim
            shared.setdefault(pin, set()).add(res.name)
        if (claims, owned, pins) != (record.tc, record.program_ids, record.pins):
            record.tc, record.program_ids, record.pins = claims, owned, pins
            kernel.write_record(meta_pin, record.encode())
        attachments: list[AttachmentStatus] = []
        to_attach = {a.target.key for a in plan.attach} if load is None else {t.key for t in res.targets}
        for target in res.targets:
            if target.key in to_attach:
                done = kernel.attach(program, spec, target, pin_dir)
                result.attached.append(target.key)
            else:
                done = plan.current[target.key]
            attachments.append(_attachment_status(target, done))
        if load is not None:
            kernel.pin_program(program, prog_pin)
        kept: list[dict[str, Any]] = []
        for detach in plan.detach:
            outcome = _detach(kernel, detach, set(owned))
            if outcome is True:
                result.detached.append(detach.key)
            elif outcome is None and isinstance(detach.target, TcTarget):
                kept.append(tc_record(detach.target))  # could not tell: keep claiming it, retry later
    finally:
        program.handle.close()
    confirmed = ProgramMeta(
        fingerprint=wanted,
        program=spec.name,
        digest=plan.digest,
        generation=res.meta.generation,
        bindings={k: str(v.pin_path) for k, v in plan.bindings.items()},
        map_ids=dict(ids),
        tc=tc_claims + kept,
        program_ids=[program.view.id],
        pins=record.pins,
        links=links,
    )
    if confirmed != record:
        kernel.write_record(meta_pin, confirmed.encode())
    result.status.program = _program_status(plan, ids, program.view, {a.target: a for a in attachments})
    return result


def _program_status(
    plan: ProgramPlan,
    ids: Mapping[str, int],
    view: ProgramView,
    attached: Mapping[str, AttachResult | AttachmentStatus],
) -> ProgramStatus:
    assert plan.spec is not None and plan.collection is not None
    attachments = []
    for target in plan.res.targets:
        done = attached[target.key]
        status = done if isinstance(done, AttachmentStatus) else _attachment_status(target, done)
        attachments.append(dataclasses.replace(status, pod=target.pod))
    return ProgramStatus(
        program_id=view.id,
        tag=view.tag,
        maps=program_map_ids(plan.collection, plan.spec.name, ids, view.map_ids),
        attachments=tuple(attachments),
    )


def _union(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = list(first)
    out += [entry for entry in second if entry not in out]
    return out


def _attachment_status(target: AttachTarget, done: AttachResult) -> AttachmentStatus:
    pin = str(done.pin_path) if done.pin_path is not None else None
    return AttachmentStatus(target.key, link_id=done.link_id, pin_path=pin, handle=done.handle, pod=target.pod)


def _detach(kernel: NodeKernel, detach: Detach, owned: set[int]) -> bool | None:
    """Remove a stale attachment of ours: True when removed, False when there is nothing of ours
    left there, None when the kernel could not say (the claim must stay). A tc filter is only
    removed if it still runs one of our programs."""
    if detach.link_pin is not None:
        kernel.unpin(detach.link_pin)  # the last reference: the kernel detaches the link
        return True
    assert isinstance(detach.target, TcTarget)
    try:
        current = kernel.tc_filter(detach.target)
    except TargetNotFoundError:
        return False  # interface or namespace gone: its filters went with it
    except (BpfshareError, OSError):
        return None
    if current is not None and current.prog_id in owned:
        kernel.detach_tc(detach.target)
        return True
    return False


def program_map_ids(
    collection: CollectionSpec, program: str, bound: Mapping[str, int], live_ids: tuple[int, ...]
) -> dict[str, int]:
    """objectMapName -> map ID. Bound maps by their pin; the others matched from the program's info."""
    out = dict(bound)
    spec = collection.program(program)
    unbound = [n for n in spec.map_names if n not in bound]
    rest = [i for i in live_ids if i not in bound.values()]
    if len(unbound) == len(rest):
        # The kernel lists a program's maps in the order the verifier first met them (ld_imm64 order),
        # which is the spec's first-use order.
        out.update(zip(unbound, rest, strict=True))
    return out


# -- removal -------------------------------------------------------------------------------------


def plan_removal(kernel: NodeKernel, layout: Layout, name: str, reason: str) -> RemoveProgram | None:
    directory = layout.program_dir(name)
    return RemoveProgram(directory, reason) if kernel.exists(directory) else None


def apply_removal(kernel: NodeKernel, layout: Layout, name: str, claimed_pins: Mapping[str, set[str]]) -> list[str]:
    """Detach everything the program's record claims on this node, unpin the maps it pinned by
    name that no other program claims, and remove its directory."""
    prog_dir = layout.program_dir(name)
    if not layout.inside(prog_dir):
        raise BpfshareError(f"refusing to remove {prog_dir}: outside the pin root {layout.root}")
    if not kernel.exists(prog_dir):
        return []
    record = read_program_record(kernel, layout, name)
    current = kernel.program_at(layout.program_pin(name))
    owned = set(record.program_ids) | ({current.id} if current is not None else set())
    removed = []
    for entry in record.tc:
        target = tc_target(entry)
        outcome = _detach(kernel, Detach(target), owned)
        if outcome is None:
            raise BpfshareError(f"cannot tell what runs at {describe_slot(target)}: kept, retried on the next pass")
        if outcome:
            removed.append(target.key)
    links = prog_dir / LINKS_DIR
    for link in kernel.list_dir(links):
        kernel.unpin(links / link)
        removed.append(link)
    for pin in record.pins:
        if not claimed_pins.get(pin, set()) - {name}:
            kernel.unpin(Path(pin))
    kernel.remove_tree(prog_dir)
    return removed
