"""``bpfshare apply -f`` and ``bpfshare delete -f``: the node engine without a cluster.

Each document is validated on its own, exactly as the API server would validate it (api/schema.py,
from the CRDs); one that is invalid is reported with its file, line and number, and the others
still converge. The exit status is 0 only if every document was valid and nothing ended in Error.
"""

from __future__ import annotations

import json
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


def _at(doc: Document, line: int, text: str) -> str:
    where = doc.where.removeprefix(f"{doc.source}: ")
    return f"{doc.source}:{line}: {where}: {text}"


def read_resources(sources: tuple[Path, ...]) -> Resources:
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
                known = ", ".join(sorted(crds))
                out.invalid.append(_at(doc, doc.line_of("kind"), f"kind: {kind!r} is not a {GROUP} kind ({known})"))
            else:
                out.skipped.append(f"skipping {kind} in {doc.where} (not a {GROUP} resource)")
            continue
        try:
            resource: Any = parse_map(body) if kind == MAP_KIND else parse_program(body)
        except ResourceError as exc:
            for error in exc.errors:
                out.invalid.append(_at(doc, doc.line_of(error.path), f"{exc.resource}: {error}"))
            continue
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

    read = read_resources(files)
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
