"""One BpfProgram on this node: plan (load, attach, repair, detach) and apply; removal.

Order matters for "no moment without a program": a new version is loaded first, then every
attachment is switched to it (tc replace at the same priority/handle, BPF_LINK_UPDATE for links),
and only then is the program pin replaced and stale attachments removed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bpfshare.api.resources import ProgramResource
from bpfshare.api.status import AttachmentStatus, Phase, ProgramStatus, StatusEntry
from bpfshare.api.targets import AttachTarget, TcTarget
from bpfshare.engine.kernel import AttachResult, Loaded, NodeKernel
from bpfshare.engine.layout import Layout
from bpfshare.engine.meta import ProgramMeta
from bpfshare.engine.plan import Attach, Detach, LoadProgram, MapPlan, ProgramPlan, RemoveProgram
from bpfshare.errors import BpfshareError, KernelError
from bpfshare.load.attach import LINKS_DIR, check_fits, link_pin_path, target_from_link_pin
from bpfshare.load.loader import MapBinding
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


def plan_program(
    kernel: NodeKernel,
    layout: Layout,
    res: ProgramResource,
    maps: Mapping[str, MapPlan],
    collection: CollectionSpec,
    digest: str,
    source: str,
) -> ProgramPlan:
    """Decide whether the program needs a (re)load, which targets need attaching, what is stale."""
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
    for target in res.targets:
        check_fits(spec, target)
    plan.spec = spec
    plan.previous = kernel.program_at(layout.program_pin(res.name))
    plan.record = kernel.read_record(layout.meta_pin(res.name)) or ProgramMeta()

    unknown = sorted(k for k, v in plan.predicted_ids.items() if v is None)
    if plan.previous is None:
        plan.load = LoadProgram(spec.name, source, "first load")
    elif unknown:
        plan.load = LoadProgram(spec.name, source, f"upgrade: bound map {', '.join(unknown)} is new")
    else:
        ids = {k: v for k, v in plan.predicted_ids.items() if v is not None}
        if plan.record.fingerprint != fingerprint(digest, spec.name, plan.bindings, ids):
            plan.load = LoadProgram(spec.name, source, "upgrade: " + _what_changed(plan.record, digest, spec.name, ids))

    pin_dir = layout.program_dir(res.name)
    for target in res.targets:
        current = None if plan.load is not None else _current_attachment(kernel, target, pin_dir, plan.previous)
        if current is None:
            plan.attach.append(Attach(target, repair=plan.load is None))
        else:
            plan.current[target.key] = current
    wanted = {t.key for t in res.targets}
    for record in plan.record.tc:
        target = tc_target(record)
        if target.key not in wanted:
            plan.detach.append(Detach(target))
    for name in kernel.list_dir(pin_dir / LINKS_DIR):
        if name.startswith("."):
            continue
        try:
            link_target = target_from_link_pin(name)
        except BpfshareError:
            continue  # not a name we make: leave it
        if link_target.key not in wanted:
            plan.detach.append(Detach(link_target, link_pin=pin_dir / LINKS_DIR / name))
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


def _current_attachment(
    kernel: NodeKernel, target: AttachTarget, pin_dir: Path, previous: object
) -> AttachResult | None:
    """The target's attachment if it already runs the pinned program, else None (attach it)."""
    prog_id = getattr(previous, "id", 0)
    try:
        if isinstance(target, TcTarget):
            f = kernel.tc_filter(target)
            if f is not None and f.prog_id == prog_id:
                return AttachResult(handle=f"{target.priority}:{target.handle}")
            return None
        pin = link_pin_path(pin_dir, target)
        link = kernel.current_link(pin, target)
        if link is not None and link.prog_id == prog_id:
            return AttachResult(link_id=link.id, pin_path=pin)
    except (KernelError, OSError, BpfshareError):
        return None  # the target is missing or unreadable: attaching will name the cause
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
    kernel: NodeKernel, layout: Layout, plan: ProgramPlan, map_ids: Mapping[str, int | None]
) -> ProgramResult:
    """Carry out the program's plan. ``map_ids``: the bound maps' IDs after the maps were applied
    (None: that BpfMap did not become Ready, so the program waits)."""
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
    wanted = fingerprint(plan.digest, spec.name, plan.bindings, ids)
    load = plan.load
    if load is None and plan.record.fingerprint != wanted:
        # A bound map was re-created between planning and now (its ID changed): reload after all.
        load = LoadProgram(spec.name, "", "upgrade: bound maps changed")
    result = ProgramResult(StatusEntry(Phase.Ready))
    previous_id = plan.previous.id if plan.previous is not None else 0
    program: Loaded
    if load is not None:
        program = kernel.load(plan.collection, spec.name, plan.bindings, layout.root, pin_dir)
        result.loaded, result.upgraded = True, bool(previous_id)
        result.kernel_seconds = program.kernel_seconds
    else:
        program = kernel.open_program(prog_pin)
    attachments: list[AttachmentStatus] = []
    try:
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
        owned = {program.view.id, previous_id} - {0}
        for detach in plan.detach:
            if _detach(kernel, detach, owned):
                result.detached.append(detach.target.key)
    finally:
        program.handle.close()
    tc_records = [tc_record(t) for t in res.targets if isinstance(t, TcTarget)]
    if plan.record.fingerprint != wanted or plan.record.tc != tc_records or result.detached:
        record = ProgramMeta(
            fingerprint=wanted,
            program=spec.name,
            digest=plan.digest,
            generation=res.meta.generation,
            bindings={k: str(v.pin_path) for k, v in plan.bindings.items()},
            map_ids=dict(ids),
            tc=tc_records,
        )
        kernel.write_record(layout.meta_pin(res.name), record)
    result.status.program = ProgramStatus(
        program_id=program.view.id,
        tag=program.view.tag,
        maps=program_map_ids(plan.collection, spec.name, ids, program.view.map_ids),
        attachments=tuple(attachments),
    )
    return result


def _attachment_status(target: AttachTarget, done: AttachResult) -> AttachmentStatus:
    pin = str(done.pin_path) if done.pin_path is not None else None
    return AttachmentStatus(target.key, link_id=done.link_id, pin_path=pin, handle=done.handle)


def _detach(kernel: NodeKernel, detach: Detach, owned: set[int]) -> bool:
    """Remove a stale attachment of ours; a tc filter only if it still runs one of our programs."""
    if detach.link_pin is not None:
        kernel.unpin(detach.link_pin)  # the last reference: the kernel detaches the link
        return True
    assert isinstance(detach.target, TcTarget)
    try:
        current = kernel.tc_filter(detach.target)
    except BpfshareError:
        return False  # interface or namespace gone: nothing left to detach
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


def apply_removal(kernel: NodeKernel, layout: Layout, name: str) -> list[str]:
    """Detach everything the program owns on this node and remove its directory."""
    prog_dir = layout.program_dir(name)
    if not layout.inside(prog_dir):
        raise BpfshareError(f"refusing to remove {prog_dir}: outside the pin root {layout.root}")
    if not kernel.exists(prog_dir):
        return []
    record = kernel.read_record(layout.meta_pin(name)) or ProgramMeta()
    current = kernel.program_at(layout.program_pin(name))
    owned = {current.id} if current is not None else set()
    removed = []
    for entry in record.tc:
        target = tc_target(entry)
        if _detach(kernel, Detach(target), owned):
            removed.append(target.key)
    links = prog_dir / LINKS_DIR
    for link in kernel.list_dir(links):
        kernel.unpin(links / link)
        removed.append(link)
    kernel.remove_tree(prog_dir)
    return removed
