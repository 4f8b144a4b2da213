"""The agent's view of the cluster, fed by watch events; decides which programs need a look.

Pure (no API, no kernel): the watch handlers put bodies in, the reconcile loop takes snapshots out.
A watch event only makes work when it changes what this node must do (a new object, a new spec
generation, the start of a deletion, the object gone, this node's labels); status, finalizers,
labels and annotations make none (the controller's writes of the cluster view among them), so an
idle agent stays idle. The agent's own writes go to its state objects, which it does not watch.

A resource deleted while this node still holds it (no controller's finalizer kept it: the controller
is not installed or was removed) stays as a tombstone, its last body marked deleting, until a pass
released it: the engine then unloads and unpins it as for any deletion, with the last spec it had.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bpfshare.api.resources import MAP_KIND, PROGRAM_KIND, MapResource, ProgramResource, parse_map, parse_program
from bpfshare.errors import BpfshareError

log = logging.getLogger("bpfshare.agent")


def _makes_work(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """A new object (a new uid: deleted and created again), a new generation or the start of a
    deletion. Nothing else on a resource concerns a node: this agent puts no finalizer on it and
    writes no status to it."""
    if old is None:
        return True
    before, after = old.get("metadata") or {}, new.get("metadata") or {}
    return (before.get("uid"), before.get("generation"), bool(before.get("deletionTimestamp"))) != (
        after.get("uid"),
        after.get("generation"),
        bool(after.get("deletionTimestamp")),
    )


def _tombstone(body: dict[str, Any]) -> dict[str, Any]:
    """The last body of a deleted resource, marked deleting (the engine then releases it)."""
    meta = dict(body.get("metadata") or {})
    meta.setdefault("deletionTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return {**body, "metadata": meta}


@dataclass
class Snapshot:
    maps: list[MapResource]
    programs: list[ProgramResource]
    labels: dict[str, str]
    only_programs: set[str] | None  # None: every program (resync, node labels, map changes)
    bodies: dict[tuple[str, str], dict[str, Any]]
    invalid: dict[tuple[str, str], str]  # resources the agent cannot parse: reported as Error


@dataclass
class ClusterState:
    maps: dict[str, dict[str, Any]] = field(default_factory=dict)
    programs: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    # (kind, name) of the deleted resources kept as tombstones until a pass released them
    tombstones: set[tuple[str, str]] = field(default_factory=set)
    _dirty_all: bool = True
    # (kind, name) -> (the body last parsed, what it parsed to or why it is invalid, its parse version)
    _parsed: dict[tuple[str, str], tuple[dict[str, Any], Any, object]] = field(default_factory=dict)
    _dirty_programs: set[str] = field(default_factory=set)

    @property
    def dirty(self) -> bool:
        return self._dirty_all or bool(self._dirty_programs)

    def mark_all(self) -> None:
        self._dirty_all = True

    def mark_programs(self, names: Iterable[str]) -> bool:
        """Re-check these programs in the next pass (their targets changed: pods came or went)."""
        chosen = set(names)
        self._dirty_programs |= chosen
        return bool(chosen)

    def on_map(self, event_type: str | None, body: dict[str, Any]) -> bool:
        if self._on_resource(MAP_KIND, self.maps, event_type, body):
            self._dirty_all = True  # a map change can unblock or affect any program
            return True
        return False

    def on_program(self, event_type: str | None, body: dict[str, Any]) -> bool:
        if self._on_resource(PROGRAM_KIND, self.programs, event_type, body):
            self._dirty_programs.add(body["metadata"]["name"])
            return True
        return False

    def _on_resource(
        self, kind: str, bodies: dict[str, dict[str, Any]], event_type: str | None, body: dict[str, Any]
    ) -> bool:
        name = body["metadata"]["name"]
        old = bodies.get(name)
        if event_type == "DELETED":
            if old is None or (kind, name) in self.tombstones:
                return False
            # Gone while this node may still hold it: a pass releases it, then ``released`` forgets it.
            bodies[name] = _tombstone(old)
            self.tombstones.add((kind, name))
            return True
        self.tombstones.discard((kind, name))
        bodies[name] = body
        return _makes_work(old, body)

    def released(self, kind: str, name: str) -> None:
        """A pass released the resource on this node: a tombstone of it is no longer needed."""
        if (kind, name) in self.tombstones:
            self.tombstones.discard((kind, name))
            (self.maps if kind == MAP_KIND else self.programs).pop(name, None)

    def on_node(self, event_type: str | None, body: dict[str, Any]) -> bool:
        """This node's Node object; deleted (or never there), it has no labels: only resources
        without a nodeSelector select it."""
        meta = body.get("metadata") or {}
        labels = {} if event_type == "DELETED" else dict(meta.get("labels") or {})
        if labels != self.labels:
            self.labels = labels
            self._dirty_all = True
            return True
        return False

    def take(self) -> Snapshot:
        """Parse what is known and clear the dirty marks (the caller reconciles the snapshot).

        A resource is parsed (and validated against the CRD) once per version of what parsing reads:
        its spec (whose every change bumps metadata.generation), uid, deletion and finalizers. The
        watch events of status writes (the controller's) change none of them, so they parse nothing
        again; nor does an idle resync."""
        maps: list[MapResource] = []
        programs: list[ProgramResource] = []
        invalid: dict[tuple[str, str], str] = {}
        bodies: dict[tuple[str, str], dict[str, Any]] = {}
        parsed: dict[tuple[str, str], tuple[dict[str, Any], MapResource | ProgramResource | str, object]] = {}
        for kind, source, parse, out in (
            ("BpfMap", self.maps, parse_map, maps),
            ("BpfProgram", self.programs, parse_program, programs),
        ):
            for name, body in source.items():
                key = (kind, name)
                bodies[key] = body
                cached = self._parsed.get(key)
                version = _parse_version(body)
                if cached is not None and (cached[0] is body or (version is not None and cached[2] == version)):
                    result = cached[1]
                else:
                    try:
                        # Without status: it is the controller's and means nothing to the agent, and an
                        # object stored before an upgrade may still carry the previous model's status
                        # (status.nodes[], phases, mapIds), which the current schema calls unknown fields.
                        result = parse({k: v for k, v in body.items() if k != "status"})
                    except BpfshareError as exc:
                        result = str(exc)
                parsed[key] = (body, result, version)
                if isinstance(result, str):
                    invalid[key] = result
                else:
                    out.append(result)
        self._parsed = parsed
        only = None if self._dirty_all else set(self._dirty_programs)
        self._dirty_all = False
        self._dirty_programs = set()
        return Snapshot(maps, programs, dict(self.labels), only, bodies, invalid)


def _parse_version(body: dict[str, Any]) -> object:
    """What parsing a body reads besides the spec, with the generation standing for the spec; None
    when the body has no uid or generation (not from an API server: compared by identity only)."""
    meta = body.get("metadata") or {}
    uid, generation = meta.get("uid"), meta.get("generation")
    if not uid or not generation:
        return None
    return (uid, generation, bool(meta.get("deletionTimestamp")), tuple(meta.get("finalizers") or ()))
