"""Converge one BpfMap on this node: create, adopt or check its pin; remove it on deletion."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bpfshare.api.resources import MapResource
from bpfshare.api.status import Phase, StatusEntry
from bpfshare.engine.layout import Layout
from bpfshare.errors import BpfshareError
from bpfshare.spec import MapSpec

BPFFS_ROOT = Path("/sys/fs/bpf")


def map_spec(res: MapResource) -> MapSpec:
    return MapSpec(
        name=res.pin_name.replace("-", "_")[:15],
        type=res.type,
        key_size=res.key_size,
        value_size=res.value_size,
        max_entries=res.max_entries,
        flags=res.flags,
    )


@dataclass
class MapOutcome:
    status: StatusEntry
    created: bool = False
    adopted: bool = False
    repinned: bool = False  # the pin was gone but the map lived on (held by programs): pinned again
    lost: int | None = None  # the pin and the map were gone (bpffs emptied, reboot): this ID's data is lost


def ensure_map(layout: Layout, res: MapResource, known_id: int | None = None) -> MapOutcome:
    """Make ``<root>/maps/<pinName>`` hold a map matching the resource; never alter an existing one.

    An existing pin that differs is reported field by field and left as it is: its contents and its
    users matter more than the new spec. ``known_id`` is the map this node had before (from status or
    memory): if its pin was removed by hand while programs still hold the map, it is pinned again
    from its ID, so no data is lost.
    """
    from bpfshare.kernel.compat import check_compatible
    from bpfshare.kernel.maps import Map
    from bpfshare.kernel.pins import checked, ensure_pin_dir, get_or_create_pinned

    spec = map_spec(res)
    pin = layout.map_pin(res.pin_name)
    subject = f"pinned map {pin}"
    adopted = created = False
    if not pin.exists() and res.adopt:
        source = Path(res.adopt)
        if not _in_bpffs(source, layout):
            raise BpfshareError(f"spec.adopt: {source} is not inside bpffs")
        if not source.exists():
            return MapOutcome(StatusEntry(Phase.Pending, f"spec.adopt: waiting for {source} to exist"))
        with Map.from_pin(source) as foreign:
            check_compatible(spec, foreign.info(), f"spec.adopt: map pinned at {source}")
            ensure_pin_dir(pin.parent)
            foreign.pin(pin)  # a second pin of the same map; the adopted pin is never removed
        adopted = True
    repinned = lost = None
    if not pin.exists() and known_id:
        repinned = _repin(spec, pin, known_id)
        lost = None if repinned else known_id
    if pin.exists():
        live = checked(Map.from_pin(pin), spec, subject)
    else:
        ensure_pin_dir(pin.parent)
        live, reused = get_or_create_pinned(spec, pin, subject)
        created = not reused
    with live:
        info = live.info()
    fields = {"mapId": info.id, "pinPath": str(pin)}
    if res.adopt:
        fields["adoptedFrom"] = res.adopt
    message = ""
    if lost is not None and created:
        message = f"map {lost} was gone (node restarted or bpffs emptied): created map {info.id}, contents lost"
    return MapOutcome(
        StatusEntry(Phase.Ready, message, fields),
        created=created,
        adopted=adopted,
        repinned=bool(repinned),
        lost=lost if created else None,
    )


def _repin(spec: MapSpec, pin: Path, map_id: int) -> bool:
    """Pin the live map ``map_id`` at ``pin`` if it still exists and still is the map we made."""
    from bpfshare.kernel.compat import map_differences
    from bpfshare.kernel.maps import Map
    from bpfshare.kernel.pins import ensure_pin_dir

    try:
        live = Map.from_id(map_id)
    except BpfshareError:
        return False
    with live:
        info = live.info()
        if info.name != spec.name or map_differences(spec, info):
            return False  # the ID was reused by an unrelated map
        ensure_pin_dir(pin.parent)
        live.pin(pin)
    return True


def _in_bpffs(path: Path, layout: Layout) -> bool:
    from bpfshare.kernel.pins import is_bpffs

    try:
        return is_bpffs(path.parent if not path.exists() else path)
    except OSError:
        return False


def remove_map(layout: Layout, res: MapResource) -> None:
    """Unpin the resource's pin under the pin root (never the adopted source pin)."""
    pin = layout.map_pin(res.pin_name)
    if not layout.inside(pin):
        raise BpfshareError(f"refusing to remove {pin}: outside the pin root {layout.root}")
    if pin.exists():
        os.unlink(pin)
