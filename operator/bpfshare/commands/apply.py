"""``bpfshare apply -f`` and ``bpfshare delete -f``: the node engine without a cluster.

Each document is validated on its own, exactly as the API server would validate it (api/schema.py,
from the CRDs); one that is invalid is reported with its file, line and number, and the others
still converge. The exit status is 0 only if every document was valid and nothing ended in Error.

The CRD confines ``spec.adopt`` to ``/sys/fs/bpf``, the node's bpffs. With ``--pin-root`` on another
bpffs mount (a simulated node, a test's private mount), that mount plays the part of /sys/fs/bpf: an
adopt path on it is checked as the same path under /sys/fs/bpf, and one anywhere else is refused.
"""

from __future__ import annotations

import json
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bpfshare.cli import pin_root_option
from bpfshare.commands.limits import limits_from, limits_options
from bpfshare.engine.node import Limits

if TYPE_CHECKING:
    from bpfshare.api.manifests import Document
    from bpfshare.api.resources import MapResource, ProgramResource
    from bpfshare.engine import Report


@dataclass
class Resources:
    """What the files hold: the valid resources, and a line for each refusal."""

    maps: list[MapResource] = field(default_factory=list)
    programs: list[ProgramResource] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)  # "FILE:LINE: document N: BpfMap x: spec.f: why"
    skipped: list[str] = field(default_factory=list)  # documents of other kinds, which are not ours


NODE_BPFFS = "/sys/fs/bpf"


def bpffs_mount(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str | None:
    """The deepest bpffs mount that holds ``path`` (which need not exist yet), or None."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    target = path.resolve()
    best: Path | None = None
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or rest.split()[:1] != ["bpf"]:
            continue
        mount = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4]))  # \040 is a space
        if (mount == target or mount in target.parents) and (best is None or len(mount.parts) > len(best.parts)):
            best = mount
    return str(best) if best is not None else None


def _as_on_the_node(body: dict[str, Any], mount: str | None) -> tuple[dict[str, Any], str | None]:
    """``body`` with an adopt path on ``mount`` written as the same path under /sys/fs/bpf (see the
    module doc), and the path as written; or ``body`` itself and None."""
    spec = body.get("spec")
    adopt = spec.get("adopt") if isinstance(spec, dict) else None
    if mount is None or mount == NODE_BPFFS or not isinstance(adopt, str) or not adopt.startswith(f"{mount}/"):
        return body, None
    return {**body, "spec": {**spec, "adopt": NODE_BPFFS + adopt[len(mount) :]}}, adopt  # type: ignore[dict-item]


def _at(doc: Document, line: int, text: str) -> str:
    where = doc.where.removeprefix(f"{doc.source}: ")
    return f"{doc.source}:{line}: {where}: {text}"


def read_resources(sources: tuple[Path, ...], bpffs: str | None = None) -> Resources:
    """The files' resources; ``bpffs`` is the mount that plays /sys/fs/bpf (see the module doc)."""
    from dataclasses import replace

    from bpfshare.api import manifests, schema
    from bpfshare.api.resources import GROUP, MAP_KIND, PROGRAM_KIND, ResourceError, parse_map, parse_program

    crds = schema.crds()
    out = Resources()
    found: dict[tuple[str, str], list[tuple[Document, Any]]] = {}
    for doc in manifests.read(sources, [crd.list_kind for crd in crds.values()]):
        if doc.error is not None:
            out.invalid.append(_at(doc, doc.line, doc.error))
            continue
        body = doc.body
        if not isinstance(body, dict):
            out.invalid.append(
                _at(doc, doc.line, f"must be an object (a Kubernetes resource), not {schema.show(body)}")
            )
            continue
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if not isinstance(kind, str) or not kind:
            out.invalid.append(_at(doc, doc.line_of("kind"), f"kind: required, not {schema.show(kind)}"))
            continue
        if kind not in (MAP_KIND, PROGRAM_KIND):
            if isinstance(api_version, str) and api_version.split("/")[0] == GROUP:
                if kind in crds:  # BpfMapState, BpfProgramState: each node's report, not something to apply
                    why = f"kind: {kind!r} is a node's report, written by its agent: apply {MAP_KIND} or {PROGRAM_KIND}"
                else:
                    why = f"kind: {kind!r} is not a {GROUP} kind ({MAP_KIND}, {PROGRAM_KIND})"
                out.invalid.append(_at(doc, doc.line_of("kind"), why))
            else:
                out.skipped.append(f"skipping {kind} in {doc.where} (not a {GROUP} resource)")
            continue
        checked, adopt = _as_on_the_node(body, bpffs) if kind == MAP_KIND else (body, None)
        try:
            resource: Any = parse_map(checked) if kind == MAP_KIND else parse_program(checked)
        except ResourceError as exc:
            for error in exc.errors:
                text = f"{exc.resource}: {error}"
                if adopt is not None and error.path == "spec.adopt":
                    text = text.replace(repr(checked["spec"]["adopt"]), repr(adopt))
                out.invalid.append(_at(doc, doc.line_of(error.path), text))
            continue
        if adopt is not None:
            resource = replace(resource, adopt=adopt)
        found.setdefault((kind, resource.name), []).append((doc, resource))
    for (kind, name), copies in found.items():
        if len(copies) > 1:
            # Which copy is meant? Neither is applied: a guess could be the one with the other reclaimPolicy.
            places = ", ".join(f"{d.source}:{d.line}" for d, _ in copies)
            for doc, _ in copies:
                out.invalid.append(_at(doc, doc.line, f"{kind} {name}: defined {len(copies)} times ({places})"))
            continue
        resource = copies[0][1]
        (out.maps if kind == MAP_KIND else out.programs).append(resource)
    return out


def _labels(options: tuple[str, ...]) -> dict[str, str]:
    labels = {"kubernetes.io/hostname": socket.gethostname()}
    for text in options:
        key, sep, value = text.partition("=")
        if not sep:
            raise click.BadParameter(f"{text!r}: expected KEY=VALUE", param_hint="--label")
        labels[key] = value
    return labels


def _print(report: Report, node: str, generations: dict[tuple[str, str], int], output: str) -> None:
    from bpfshare.api.resources import MAP_KIND, PROGRAM_KIND

    out: list[dict[str, Any]] = []
    for kind, entries in ((MAP_KIND, report.maps), (PROGRAM_KIND, report.programs)):
        for name, entry in entries.items():
            out.append(
                {
                    "kind": kind,
                    "name": name,
                    "status": {"nodes": [entry.to_dict(node, generations.get((kind, name), 0))]},
                }
            )
    for kind, name in sorted(report.released):
        out.append({"kind": kind, "name": name, "removed": True})
    _dump(out, output)


def _dump(data: object, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())


def _run(
    files: tuple[Path, ...],
    pin_root: str,
    labels: tuple[str, ...],
    output: str,
    delete: bool,
    dry_run: bool,
    limits: Limits,
) -> None:
    from dataclasses import replace

    from bpfshare.engine import Engine, Phase

    read = read_resources(files, bpffs_mount(Path(pin_root)))
    for line in read.skipped:
        click.echo(line, err=True)
    for line in read.invalid:
        click.echo(f"bpfshare: error: {line}", err=True)
    maps, programs = read.maps, read.programs
    if delete:
        maps = [replace(m, meta=replace(m.meta, deleting=True)) for m in maps]
        programs = [replace(p, meta=replace(p.meta, deleting=True)) for p in programs]
    node = socket.gethostname()
    engine = Engine(Path(pin_root), node, limits=limits)
    if dry_run:
        # What a pass would change, read from the node without changing it (as kubectl diff shows).
        _dump(engine.plan(maps, programs, _labels(labels)).to_list(), output)
        if read.invalid:
            sys.exit(1)
        return
    # Only the valid resources: the others, invalid here, are left on the node as they are.
    report = engine.reconcile(maps, programs, _labels(labels))
    for event in report.events:
        click.echo(f"{event.type} {event.reason} {event.kind}/{event.name}: {event.message}", err=True)
    generations = {(k, r.name): r.meta.generation for k, rs in (("BpfMap", maps), ("BpfProgram", programs)) for r in rs}
    _print(report, node, generations, output)
    errors = [e for e in [*report.maps.values(), *report.programs.values()] if e.phase is Phase.Error]
    if errors or read.invalid:
        sys.exit(1)


_files = click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="a YAML file or a directory of them",
)
_labels_opt = click.option(
    "--label", "labels", multiple=True, metavar="KEY=VALUE", help="a node label for nodeSelector matching (repeatable)"
)
_output = click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml")
_dry_run = click.option(
    "--dry-run", is_flag=True, help="print the plan (what would change on this node) and change nothing"
)


@click.command("apply")
@_files
@_labels_opt
@_output
@_dry_run
@limits_options
@pin_root_option
def apply(
    files: tuple[Path, ...],
    labels: tuple[str, ...],
    output: str,
    dry_run: bool,
    max_bytecode_bytes: int,
    map_memory_budget: int,
    pin_root: str,
) -> None:
    """Reconcile BpfMap/BpfProgram YAML on this node and print their status."""
    limits = limits_from(max_bytecode_bytes, map_memory_budget)
    _run(files, pin_root, labels, output, delete=False, dry_run=dry_run, limits=limits)


@click.command("delete")
@_files
@_labels_opt
@_output
@_dry_run
@pin_root_option
def delete(files: tuple[Path, ...], labels: tuple[str, ...], output: str, dry_run: bool, pin_root: str) -> None:
    """Remove the resources in the YAML from this node (programs detached; maps per reclaimPolicy)."""
    _run(files, pin_root, labels, output, delete=True, dry_run=dry_run, limits=Limits())
