"""``bpfshare get [maps|programs]``: what this node holds, read from the pins and the kernel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from bpfshare.cli import pin_root_option


def node_maps(root: Path) -> list[dict[str, Any]]:
    from bpfshare.engine.host_kernel import HostKernel
    from bpfshare.engine.layout import Layout
    from bpfshare.errors import BpfshareError
    from bpfshare.kernel.maps import Map

    layout = Layout(root)
    out: list[dict[str, Any]] = []
    for name in layout.map_pin_names(HostKernel()):
        pin = layout.map_pin(name)
        try:
            with Map.from_pin(pin) as live:
                info = live.info()
        except BpfshareError as exc:
            out.append({"pinName": name, "pinPath": str(pin), "error": str(exc)})
            continue
        shape = info.describe()
        del shape["id"], shape["name"]
        out.append({"pinName": name, "pinPath": str(pin), "mapId": info.id, **shape})
    return out


def node_programs(root: Path) -> list[dict[str, Any]]:
    from bpfshare.engine.host_kernel import HostKernel
    from bpfshare.engine.layout import Layout
    from bpfshare.engine.meta import ProgramMeta
    from bpfshare.errors import BpfshareError
    from bpfshare.kernel.links import Link
    from bpfshare.kernel.programs import Program
    from bpfshare.load.attach import LINKS_DIR

    layout = Layout(root)
    kernel = HostKernel()
    out = []
    for name in layout.program_names(kernel):
        entry: dict[str, Any] = {"name": name}
        try:
            if layout.program_pin(name).exists():
                with Program.from_pin(layout.program_pin(name)) as prog:
                    info = prog.info()
                kind = getattr(info.type, "name", str(info.type))  # a type newer than this code: its number
                entry.update(programId=info.id, tag=info.tag, type=kind, mapIds=list(info.map_ids))
            raw = kernel.read_record(layout.meta_pin(name))
            meta = ProgramMeta.decode(raw) if raw else None
            attachments: list[dict[str, Any]] = []
            if meta is not None:
                entry["program"] = meta.program
                entry["maps"] = meta.bindings
                entry["pins"] = list(meta.pins)  # maps it pinned by name, outside its directory
                attachments += [
                    {
                        "target": "tc:{interface}:{direction}".format(**t)
                        + (f"@{t['netns']}" if t.get("netns") else ""),
                        "handle": f"{t['priority']}:{t['handle']}",
                    }
                    for t in meta.tc
                ]
            links = layout.program_dir(name) / LINKS_DIR
            for pin in sorted(links.iterdir()) if links.is_dir() else []:
                with Link.from_pin(pin) as link:
                    attachments.append({"pin": str(pin), "linkId": link.info().id})
            entry["attachments"] = attachments
        except BpfshareError as exc:
            entry["error"] = str(exc)
        out.append(entry)
    return out


@click.command("get")
@click.argument("what", type=click.Choice(["all", "maps", "programs"]), default="all")
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table")
@pin_root_option
def get(what: str, output: str, pin_root: str) -> None:
    """Show the maps and programs bpfshare holds on this node, with their kernel IDs."""
    root = Path(pin_root)
    data: dict[str, Any] = {}
    if what in ("all", "maps"):
        data["maps"] = node_maps(root)
    if what in ("all", "programs"):
        data["programs"] = node_programs(root)
    if output == "json":
        click.echo(json.dumps(data, indent=2))
    elif output == "yaml":
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
    else:
        for m in data.get("maps", []):
            click.echo(f"map  {m['pinName']:<24} id {m.get('mapId', '-'):<6} {m.get('type', m.get('error', ''))}")
        for p in data.get("programs", []):
            targets = ", ".join(a.get("target", a.get("pin", "")) for a in p.get("attachments", []))
            click.echo(f"prog {p['name']:<24} id {p.get('programId', '-'):<6} {targets}")
