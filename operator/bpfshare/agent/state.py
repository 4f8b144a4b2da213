"""The agent's view of the cluster, fed by watch events; decides which programs need a look.

Pure (no API, no kernel): the kopf handlers put bodies in, the reconcile loop takes snapshots out.
A watch event only makes work when it changes what this node must do (spec generation, deletion,
a finalizer removed, node labels, a referenced ConfigMap); status updates and finalizers added,
including the agent's own writes and those of the other nodes' agents, make none, so an idle agent
stays idle and N agents do not make each other work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from bpfshare.api.resources import MapResource, ProgramResource, parse_map, parse_program
from bpfshare.errors import BpfshareError

log = logging.getLogger("bpfshare.agent")


def _makes_work(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """A new object, a new generation, the start of a deletion, or a finalizer removed (this node's
    may be among them, and must be put back). Finalizers *added* make no work: they are this
    agent's own writes or other nodes' (with N nodes, each would otherwise cost every agent a pass)."""
    if old is None:
        return True
    before, after = old.get("metadata") or {}, new.get("metadata") or {}
    if (before.get("generation"), bool(before.get("deletionTimestamp"))) != (
        after.get("generation"),
        bool(after.get("deletionTimestamp")),
    ):
        return True
    return bool(set(before.get("finalizers") or ()) - set(after.get("finalizers") or ()))


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
    config_maps: dict[tuple[str, str], str] = field(default_factory=dict)  # (ns, name) -> resourceVersion
    _dirty_all: bool = True
    # (kind, name) -> (the body last parsed, what it parsed to or why it is invalid, its parse version)
    _parsed: dict[tuple[str, str], tuple[dict[str, Any], Any, object]] = field(default_factory=dict)
    _dirty_programs: set[str] = field(default_factory=set)

    @property
    def dirty(self) -> bool:
        return self._dirty_all or bool(self._dirty_programs)

    def mark_all(self) -> None:
        self._dirty_all = True

    def on_map(self, event_type: str | None, body: dict[str, Any]) -> bool:
        name = body["metadata"]["name"]
        if event_type == "DELETED":
            self.maps.pop(name, None)
            return False  # gone for good: our finalizer was already released
        old = self.maps.get(name)
        self.maps[name] = body
        if _makes_work(old, body):
            self._dirty_all = True  # a map change can unblock or affect any program
            return True
        return False

    def on_program(self, event_type: str | None, body: dict[str, Any]) -> bool:
        name = body["metadata"]["name"]
        if event_type == "DELETED":
            self.programs.pop(name, None)
            return False
        old = self.programs.get(name)
        self.programs[name] = body
        if _makes_work(old, body):
            self._dirty_programs.add(name)
            return True
        return False

    def on_node(self, event_type: str | None, body: dict[str, Any]) -> bool:
        labels = dict((body.get("metadata") or {}).get("labels") or {})
        if labels != self.labels:
            self.labels = labels
            self._dirty_all = True
            return True
        return False

    def on_config_map(self, event_type: str | None, body: dict[str, Any]) -> bool:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        version = "" if event_type == "DELETED" else str(meta.get("resourceVersion", ""))
        if self.config_maps.get(key) == version:
            return False
        self.config_maps[key] = version
        users = {name for name, prog in self.programs.items() if _config_map_of(prog) == key}
        self._dirty_programs |= users
        return bool(users)

    def take(self) -> Snapshot:
        """Parse what is known and clear the dirty marks (the caller reconciles the snapshot).

        A resource is parsed (and validated against the CRD) once per version of what parsing reads:
        its spec (whose every change bumps metadata.generation), uid, deletion and finalizers. The
        watch events of status writes (this agent's own, after every pass) change none of them, so
        they parse nothing again; nor does an idle resync."""
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
                        result = parse(body)
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


def _config_map_of(body: dict[str, Any]) -> tuple[str, str] | None:
    cm = (((body.get("spec") or {}).get("bytecode")) or {}).get("configMap")
    if not cm:
        return None
    return (str(cm.get("namespace", "")), str(cm.get("name", "")))
