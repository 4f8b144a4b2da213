"""``bpfshare inspect OBJ.o``: what an object declares, as JSON, without touching the kernel."""

from __future__ import annotations

import json

import click

from bpfshare.object import read_collection
from bpfshare.spec import CollectionSpec, MapSpec


def describe_map(spec: MapSpec) -> dict[str, object]:
    out = spec.describe()
    out["section"] = spec.section
    if spec.inner is not None:
        out["inner"] = describe_map(spec.inner)
    if spec.extra:
        out["extra"] = dict(spec.extra)
    return out


def describe(collection: CollectionSpec, path: str) -> dict[str, object]:
    """``CollectionSpec.describe()``, plus the object path, kernel version and map details."""
    return {
        "object": path,
        "license": collection.license,
        "kernelVersion": collection.kernel_version,
        "programs": [p.describe() for p in collection.programs.values()],
        "maps": [describe_map(m) for m in collection.maps.values()],
    }


@click.command("inspect")
@click.argument("obj", metavar="OBJ.o", type=click.Path(exists=True, dir_okay=False))
@click.option("--compact", is_flag=True, help="print the JSON on one line")
def inspect(obj: str, compact: bool) -> None:
    """Show the programs and maps of an eBPF object as JSON.

    Programs: name, section, type, expected attach type, instruction count, maps used. Maps: name,
    type, key and value size, max entries, flags, pinning and definition style (btf,
    libbpf-legacy, iproute2-legacy, global-data).
    """
    collection = read_collection(obj)
    click.echo(json.dumps(describe(collection, obj), indent=None if compact else 2))
