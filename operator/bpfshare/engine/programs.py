"""Converge one BpfProgram on this node: load against the shared pins, attach, upgrade in place, remove.

Order matters for "no moment without a program": a new version is loaded first, then every
attachment is switched to it (tc replace at the same priority/handle, BPF_LINK_UPDATE for links),
and only then is the program pin replaced and stale attachments removed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bpfshare.api.resources import ProgramResource
from bpfshare.api.status import Phase, StatusEntry
from bpfshare.engine.layout import Layout
from bpfshare.engine.meta import ProgramMeta, read_meta, write_meta
from bpfshare.errors import BpfshareError, KernelError
from bpfshare.load.attach import (
    LINKS_DIR,
    Attachment,
    AttachTarget,
    TcTarget,
    attach_program,
    check_fits,
    link_pin_path,
    target_from_link_pin,
)
from bpfshare.load.loader import MapBinding, load_program, replace_pin
from bpfshare.spec import CollectionSpec

if TYPE_CHECKING:
    from bpfshare.kernel.programs import Program


class WaitingError(BpfshareError):
    """Something the program needs is not there yet (a BpfMap not Ready): phase Pending, not Error."""


@dataclass
class ProgramOutcome:
    status: StatusEntry
    loaded: bool = False  # a new program was loaded (first load or upgrade)
    upgraded: bool = False
    kernel_seconds: float | None = None  # the verifier's time, when a program was loaded
    attached: list[str] = field(default_factory=list)  # targets newly attached or repaired
    detached: list[str] = field(default_factory=list)


def fingerprint(digest: str, program: str, bindings: dict[str, MapBinding], map_ids: dict[str, int]) -> str:
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


def _tc_record(target: TcTarget) -> dict[str, object]:
    return {
        "interface": target.interface,
        "direction": target.direction,
        "netns": target.netns,
        "priority": target.priority,
        "handle": target.handle,
    }


def ensure_program(
    layout: Layout,
    res: ProgramResource,
    collection: CollectionSpec,
    digest: str,
    bindings: dict[str, MapBinding],
    map_ids: dict[str, int],
) -> ProgramOutcome:
    from bpfshare.kernel.programs import Program

    spec = _program_spec(collection, res)
    for target in res.targets:
        check_fits(spec, target)
    pin_dir = layout.program_dir(res.name)
    meta = read_meta(layout.meta_pin(res.name)) or ProgramMeta()
    wanted = fingerprint(digest, spec.name, bindings, map_ids)
    outcome = ProgramOutcome(StatusEntry(Phase.Ready))
    prog_pin = layout.program_pin(res.name)

    previous_id = 0
    if prog_pin.exists():
        with Program.from_pin(prog_pin) as previous:
            previous_id = previous.info().id
    if meta.fingerprint == wanted and previous_id:
        program = Program.from_pin(prog_pin)
    else:
        loaded = load_program(
            collection, spec.name, bindings=bindings, pin_root=layout.root, pin_dir=pin_dir, pin_program=False
        )
        program = loaded.program
        outcome.kernel_seconds = loaded.kernel_seconds
        for m in loaded.maps.values():
            m.map.close()
        outcome.loaded = True
        outcome.upgraded = bool(previous_id)
    with program:
        info = program.info()
        attachments = [_ensure_attached(program, info.id, spec, t, pin_dir, outcome) for t in res.targets]
        if outcome.loaded:
            replace_pin(program, prog_pin)
        outcome.detached = _remove_stale(layout, res, meta, {info.id, previous_id})
    tc_records = [_tc_record(t) for t in res.targets if isinstance(t, TcTarget)]
    if meta.fingerprint != wanted or meta.tc != tc_records or outcome.detached:
        write_meta(
            layout.meta_pin(res.name),
            ProgramMeta(
                fingerprint=wanted,
                program=spec.name,
                digest=digest,
                generation=res.meta.generation,
                bindings={k: str(v.pin_path) for k, v in bindings.items()},
                map_ids=dict(map_ids),
                tc=tc_records,
            ),
        )
    outcome.status.fields = {
        "programId": info.id,
        "tag": info.tag,
        "maps": _program_map_ids(collection, spec.name, map_ids, info.map_ids),
        "attachments": [a.describe() for a in attachments],
    }
    return outcome


def _program_map_ids(
    collection: CollectionSpec, program: str, bound: dict[str, int], live_ids: list[int]
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


def _program_spec(collection: CollectionSpec, res: ProgramResource):  # type: ignore[no-untyped-def]
    try:
        return collection.program(res.program)
    except KeyError as exc:
        raise BpfshareError(f"spec.program: {exc.args[0]}") from None


def _ensure_attached(
    program: Program,
    prog_id: int,
    spec,
    target: AttachTarget,
    pin_dir: Path,  # type: ignore[no-untyped-def]
    outcome: ProgramOutcome,
) -> Attachment:
    """Attach, or leave alone when the target already runs this very program."""
    current = _current_attachment(target, pin_dir, prog_id)
    if current is not None:
        return current
    attachment = attach_program(program, spec, target, pin_dir)
    outcome.attached.append(target.key)
    return attachment


def _current_attachment(target: AttachTarget, pin_dir: Path, prog_id: int) -> Attachment | None:
    try:
        if isinstance(target, TcTarget):
            from bpfshare.kernel.tc import list_tc_filters

            for f in list_tc_filters(target.interface, target.direction, target.netns):
                if (f.priority, f.handle) == (target.priority, target.handle) and f.prog_id == prog_id:
                    return Attachment(target, handle=f"{f.priority}:{f.handle}")
            return None
        from bpfshare.kernel.links import Link

        pin = link_pin_path(pin_dir, target)
        if not pin.exists():
            return None
        with Link.from_pin(pin) as link:
            info = link.info()
        # A pinned link whose target vanished is found stale by attach_program, which replaces it.
        if info.prog_id == prog_id and (info.ifindex or info.cgroup_id):
            return Attachment(target, link_id=info.id, pin_path=pin)
    except (KernelError, OSError):
        return None
    return None


def _tc_target(record: dict[str, object]) -> TcTarget:
    return TcTarget(
        str(record["interface"]),
        record["direction"],
        record.get("netns"),  # type: ignore[arg-type]
        int(record["priority"]),
        int(record["handle"]),
    )  # type: ignore[call-overload]


def _remove_stale(layout: Layout, res: ProgramResource, meta: ProgramMeta, owned: set[int]) -> list[str]:
    """Detach what this program owned on targets the resource no longer names."""
    wanted = {t.key for t in res.targets}
    removed = []
    for record in meta.tc:
        target = _tc_target(record)
        if target.key not in wanted and _detach_tc_if_ours(target, owned):
            removed.append(target.key)
    links = layout.program_dir(res.name) / LINKS_DIR
    if links.is_dir():
        for pin in links.iterdir():
            if pin.name.startswith("."):
                continue
            try:
                key = target_from_link_pin(pin.name).key
            except BpfshareError:
                key = pin.name
            if key not in wanted:
                pin.unlink()  # the last reference: the kernel detaches the link
                removed.append(key)
    return removed


def _detach_tc_if_ours(target: TcTarget, owned: set[int]) -> bool:
    """Delete the filter at the target's priority/handle only if it runs one of our programs."""
    from bpfshare.kernel.tc import detach_tc, list_tc_filters

    try:
        filters = list_tc_filters(target.interface, target.direction, target.netns)
    except BpfshareError:
        return False  # interface or namespace gone: nothing left to detach
    for f in filters:
        if (f.priority, f.handle) == (target.priority, target.handle) and f.prog_id in owned:
            detach_tc(target.interface, target.direction, target.priority, target.handle, target.netns)
            return True
    return False


def remove_program(layout: Layout, name: str) -> list[str]:
    """Detach everything the program owns on this node and remove its directory."""
    from bpfshare.kernel.programs import Program

    prog_dir = layout.program_dir(name)
    if not layout.inside(prog_dir):
        raise BpfshareError(f"refusing to remove {prog_dir}: outside the pin root {layout.root}")
    if not prog_dir.exists():
        return []
    meta = read_meta(layout.meta_pin(name)) or ProgramMeta()
    prog_id = 0
    if layout.program_pin(name).exists():
        with Program.from_pin(layout.program_pin(name)) as program:
            prog_id = program.info().id
    removed = []
    for record in meta.tc:
        target = _tc_target(record)
        if _detach_tc_if_ours(target, {prog_id} - {0}):
            removed.append(target.key)
    links = prog_dir / LINKS_DIR
    if links.is_dir():
        for pin in links.iterdir():
            pin.unlink()
            removed.append(pin.name)
    shutil.rmtree(prog_dir)  # bpffs: unlink of pins and rmdir of directories
    return removed
