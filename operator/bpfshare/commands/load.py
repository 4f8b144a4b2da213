"""``bpfshare load``: a node-level load like bpftool's, with a compatibility check on every reused map."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bpfshare.cli import pin_root_option
from bpfshare.errors import BpfshareError

if TYPE_CHECKING:
    from bpfshare.api.targets import AttachTarget


def _parse_map_option(text: str) -> tuple[str, str]:
    name, sep, target = text.partition("=")
    if not sep or not name or not target:
        raise click.BadParameter(f"{text!r}: expected OBJMAP=PIN (or OBJMAP=id:N)", param_hint="--map")
    return name, target


def _cli_target(target: AttachTarget) -> AttachTarget:
    """A cgroup given as bpftool users write it, an absolute path inside the cgroup v2 mount, is
    taken relative to the root like a resource's; a path outside the mount is an error naming it.
    An interface name no interface can have is refused here too, before anything is loaded."""
    from bpfshare.api.targets import CgroupTarget

    if not isinstance(target, CgroupTarget):
        from bpfshare.kernel.netns import check_interface_name

        check_interface_name(target.interface)
        return target
    from bpfshare.kernel.cgroup import cgroup_relative_path

    return dataclasses.replace(target, path=cgroup_relative_path(target.path))


@click.command("load")
@click.argument("obj", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--program", "program_name", required=True, help="function (or section) name in the object")
@click.option(
    "--map",
    "map_options",
    multiple=True,
    metavar="OBJMAP=PIN",
    help="reuse the map pinned at PIN (or id:N) for the object's map OBJMAP; repeatable",
)
@click.option(
    "--pin-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="where to pin the program, its links and its unbound maps (default PIN_ROOT/loads/NAME)",
)
@click.option(
    "--attach",
    "attach_specs",
    multiple=True,
    metavar="SPEC",
    help=(
        "tc:IFACE:ingress|egress[@NETNS], tcx:IFACE:ingress|egress[@NETNS] or cgroup:DIR:TYPE "
        "(DIR relative to the cgroup v2 root, or an absolute path inside its mount); repeatable"
    ),
)
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.option(
    "--btf",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="the kernel's BTF for CO-RE relocations, for kernels without /sys/kernel/btf/vmlinux",
)
@pin_root_option
def load(
    obj: Path,
    program_name: str,
    map_options: tuple[str, ...],
    pin_dir: Path | None,
    attach_specs: tuple[str, ...],
    as_json: bool,
    btf: Path | None,
    pin_root: str,
) -> None:
    """Load PROGRAM from OBJ, reusing pinned maps, and attach it."""
    from bpfshare.api.targets import parse_attach
    from bpfshare.load.attach import attach_program
    from bpfshare.load.loader import MapBinding, load_program
    from bpfshare.object import read_collection

    bindings: dict[str, MapBinding] = {}
    for text in map_options:
        name, target = _parse_map_option(text)
        if name in bindings:
            raise BpfshareError(f"--map {name} given twice")
        bindings[name] = MapBinding.parse(target)
    targets = [_cli_target(parse_attach(spec)) for spec in attach_specs]  # all parsed before anything is loaded

    collection = read_collection(obj)
    loaded = load_program(
        collection, program_name, bindings=bindings, pin_root=Path(pin_root), pin_dir=pin_dir, btf=btf
    )
    try:
        attachments = [attach_program(loaded.program, loaded.spec, t, loaded.pin_path.parent) for t in targets]
        info = loaded.program.info()
        result: dict[str, Any] = {
            "program": loaded.spec.name,
            "programId": info.id,
            "tag": info.tag,
            "pinPath": str(loaded.pin_path),
            "maps": {name: m.describe() for name, m in loaded.maps.items()},
            "attachments": [a.describe() for a in attachments],
        }
        if loaded.slot_programs:
            # The object's programs this load put in the initial slots of its prog arrays.
            result["tailCallPrograms"] = {name: p.info().id for name, p in loaded.slot_programs.items()}
    finally:
        loaded.close()
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"program {result['program']}: id {result['programId']} tag {result['tag']} pinned at {result['pinPath']}"
    )
    for name, m in result["maps"].items():
        how = "reused" if m["reused"] else "created"
        click.echo(f"  map {name}: id {m['id']} {how} at {m['pinPath']}")
    for name, prog_id in result.get("tailCallPrograms", {}).items():
        click.echo(f"  tail-call program {name}: id {prog_id} (in an initial prog array slot)")
    for a in result["attachments"]:
        click.echo(f"  attached {a['target']}")
