"""``bpfshare inspect OBJ.o``: what an object declares, as JSON, without touching the kernel."""

from __future__ import annotations

import json

import click

from bpfshare.object import read_collection
from bpfshare.spec import CollectionSpec, MapSpec


def describe_map(spec: MapSpec, *, inner: bool = False) -> dict[str, object]:
    out = spec.describe()
    out["section"] = spec.section
    if not inner:
        out["loadable"] = True
    if spec.inner is not None:
        out["inner"] = describe_map(spec.inner, inner=True)
    if spec.extra:
        out["extra"] = dict(spec.extra)
    if spec.slots:
        # Initial slots (from .maps relocations): index -> program (prog array) or map (map-in-map).
        out["slots"] = {str(index): name for index, name in spec.slots}
    return out


def describe(collection: CollectionSpec, path: str) -> dict[str, object]:
    """``CollectionSpec.describe()``, plus the object path, kernel version and map details.

    Every program and map of the object is listed, with ``loadable`` and, when false, the
    ``reason`` (the message a load of it would fail with): one program's unsupported feature
    refuses that program and whatever needs it, not the object.
    """
    return {
        "object": path,
        "license": collection.license,
        "kernelVersion": collection.kernel_version,
        "programs": collection.describe()["programs"],
        "maps": [
            *(describe_map(m) for m in collection.maps.values()),
            *(m.describe() for m in collection.refused_maps.values()),
        ],
    }


@click.command("inspect")
@click.argument("obj", metavar="OBJ.o", type=click.Path(exists=True, dir_okay=False))
@click.option("--compact", is_flag=True, help="print the JSON on one line")
def inspect(obj: str, compact: bool) -> None:
    """Show the programs and maps of an eBPF object as JSON.

    Programs: name, section, type, expected attach type, instruction count, maps used, whether it
    can be loaded and why not. Maps: name, type, key and value size, max entries, flags, pinning
    (an iproute2 custom value raw: the node's bpf_pinning file resolves it), definition style (btf,
    libbpf-legacy, iproute2-legacy, global-data), initial slots, whether it can be loaded and why not.
    """
    collection = read_collection(obj)
    click.echo(json.dumps(describe(collection, obj), indent=None if compact else 2))
