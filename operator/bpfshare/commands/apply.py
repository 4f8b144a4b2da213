"""``bpfshare apply -f`` and ``bpfshare delete -f``: the node engine without a cluster."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bpfshare.cli import pin_root_option
from bpfshare.commands.limits import limits_from, limits_options
from bpfshare.engine.node import Limits
from bpfshare.errors import BpfshareError

if TYPE_CHECKING:
    from bpfshare.api.resources import MapResource, ProgramResource
    from bpfshare.engine import Report

YAML_SUFFIXES = (".yaml", ".yml", ".json")


def iter_documents(sources: tuple[Path, ...]) -> Iterator[tuple[Path, dict[str, Any]]]:
    import yaml

    for source in sources:
        files = sorted(p for p in source.rglob("*") if p.suffix in YAML_SUFFIXES) if source.is_dir() else [source]
        for path in files:
            try:
                docs = list(yaml.safe_load_all(path.read_text()))
            except (OSError, yaml.YAMLError) as exc:
                raise BpfshareError(f"{path}: {exc}") from None
            for doc in docs:
                if doc is None:
                    continue
                if not isinstance(doc, dict):
                    raise BpfshareError(f"{path}: a document is not a mapping")
                if doc.get("kind") == "List":
                    for item in doc.get("items") or []:
                        yield path, item
                else:
                    yield path, doc


def read_resources(sources: tuple[Path, ...]) -> tuple[list[MapResource], list[ProgramResource]]:
    from bpfshare.api.resources import API_VERSION, MAP_KIND, PROGRAM_KIND, parse_map, parse_program

    maps: list[MapResource] = []
    programs: list[ProgramResource] = []
    for path, doc in iter_documents(sources):
        kind = doc.get("kind")
        if kind not in (MAP_KIND, PROGRAM_KIND):
            click.echo(f"skipping {kind or 'a document without kind'} in {path}", err=True)
            continue
        if doc.get("apiVersion") != API_VERSION:
            raise BpfshareError(f"{path}: {kind} apiVersion must be {API_VERSION}, not {doc.get('apiVersion')!r}")
        if kind == MAP_KIND:
            maps.append(parse_map(doc))
        else:
            programs.append(parse_program(doc))
    return maps, programs


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

    maps, programs = read_resources(files)
    if delete:
        maps = [replace(m, meta=replace(m.meta, deleting=True)) for m in maps]
        programs = [replace(p, meta=replace(p.meta, deleting=True)) for p in programs]
    node = socket.gethostname()
    engine = Engine(Path(pin_root), node, limits=limits)
    if dry_run:
        # What a pass would change, read from the node without changing it (as kubectl diff shows).
        _dump(engine.plan(maps, programs, _labels(labels)).to_list(), output)
        return
    report = engine.reconcile(maps, programs, _labels(labels))
    for event in report.events:
        click.echo(f"{event.type} {event.reason} {event.kind}/{event.name}: {event.message}", err=True)
    generations = {(k, r.name): r.meta.generation for k, rs in (("BpfMap", maps), ("BpfProgram", programs)) for r in rs}
    _print(report, node, generations, output)
    if any(e.phase is Phase.Error for e in [*report.maps.values(), *report.programs.values()]):
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
