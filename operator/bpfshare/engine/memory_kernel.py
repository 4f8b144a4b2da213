"""``MemoryKernel``: a ``NodeKernel`` in memory, for logic tests and hollow nodes.

Faithful where the engine's decisions depend on it, and only there:

- bpffs: pins and directories under the mounts given (``bpffs``); names with a '.' are refused
  and a pin path that exists is EEXIST, as the kernel does; a pin outside a mount is refused.
- lifetimes: an object lives while something holds it (a pin, an open handle, a tc filter, a
  link, a program using a map); a map whose last holder goes is gone, with its contents.
- maps keep contents (``update``/``lookup``), so tests can prove that nothing was lost.
- the loader's map resolution: bound maps are reused only after the same compatibility check
  (every differing field), unbound maps pinned by name or under the program's directory, global
  data created fresh on every load.
- targets: interfaces per network namespace and cgroups exist only once added; a tcx or cgroup
  link whose target is removed becomes defunct, and a tc filter goes with its interface.
- faults: ``fail(operation, error)`` makes the next call of a protocol method raise ``error``.

It does not model the verifier (``reject(program, message)`` makes a load fail with the given
log) or the datapath.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bpfshare.api.targets import AttachTarget, CgroupTarget, TcTarget, TcxTarget
from bpfshare.engine.kernel import AttachResult, LinkView, Loaded, MapView, ProgramView, TcFilterView
from bpfshare.engine.meta import record_spec
from bpfshare.errors import (
    BpfshareError,
    IncompatibleMapError,
    KernelError,
    MapRuleError,
    TargetNotFoundError,
    VerifierError,
)
from bpfshare.kernel.compat import map_differences
from bpfshare.load.attach import link_pin_path
from bpfshare.load.loader import PRIVATE_MAPS_DIR, MapBinding, convention_pin_path, private_pin_name
from bpfshare.spec import (
    CollectionSpec,
    DefinitionStyle,
    MapSpec,
    ProgramSpec,
    effective_spec,
    kernel_object_name,
    map_rule_violations,
)
from bpfshare.types import MapFlag

POSSIBLE_CPUS = 2


@dataclass
class _Map:
    info: MapView
    values: dict[bytes, bytes] = field(default_factory=dict)


@dataclass
class _Program:
    view: ProgramView
    name: str
    handles: int = 0  # open handles (the engine's, while loading and attaching)


@dataclass
class _Link:
    id: int
    prog_id: int
    target: AttachTarget
    defunct: bool = False


@dataclass
class _Pin:
    kind: str  # "map", "prog", "link"
    id: int


class MemoryHandle:
    def __init__(self, kernel: MemoryKernel, prog_id: int) -> None:
        self.kernel = kernel
        self.prog_id = prog_id
        self.closed = False
        kernel._programs[prog_id].handles += 1

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.kernel._programs[self.prog_id].handles -= 1
            self.kernel._collect()


class MemoryKernel:
    def __init__(self, bpffs: tuple[Path | str, ...] = ("/sys/fs/bpf",)) -> None:
        self.mounts = tuple(Path(p) for p in bpffs)
        self._ids = itertools.count(1)
        self._pins: dict[Path, _Pin] = {}
        self._dirs: set[Path] = set(self.mounts)
        self._children: dict[Path, set[str]] = defaultdict(set)  # directory -> names in it (pins, dirs)
        self._maps: dict[int, _Map] = {}
        self._programs: dict[int, _Program] = {}
        self._links: dict[int, _Link] = {}
        self._interfaces: set[tuple[str | None, str]] = set()  # (netns, name)
        self._cgroups: set[str] = {"/"}
        self._tc: dict[tuple[str | None, str, str, int, int], TcFilterView] = {}
        self._faults: dict[str, list[Exception]] = defaultdict(list)
        self._rejected: dict[str, str] = {}  # program name -> verifier log
        self.calls: list[str] = []  # every mutating call, in order: what a pass did to the node
        self.call_count = 0  # every protocol call
        self._fail_at = 0
        self._fail_error: BpfshareError | None = None

    # -- the test's hands on the node ----------------------------------------------------------

    def add_interface(self, name: str, netns: str | None = None) -> None:
        self._interfaces.add((netns, name))

    def remove_interface(self, name: str, netns: str | None = None) -> None:
        """Like deleting a veth: its filters go, its tcx links become defunct."""
        self._interfaces.discard((netns, name))
        for key in [k for k in self._tc if (k[0], k[1]) == (netns, name)]:
            del self._tc[key]
        for link in self._links.values():
            t = link.target
            if isinstance(t, TcxTarget) and (t.netns, t.interface) == (netns, name):
                link.defunct = True
        self._collect()

    def add_cgroup(self, path: str) -> None:
        self._cgroups.add(_cgroup_key(path))

    def remove_cgroup(self, path: str) -> None:
        key = _cgroup_key(path)
        self._cgroups.discard(key)
        for link in self._links.values():
            if isinstance(link.target, CgroupTarget) and _cgroup_key(link.target.path) == key:
                link.defunct = True
        self._collect()

    def fail_call(self, n: int, error: BpfshareError) -> None:
        """The ``n``-th protocol call from now on (counting every method) raises ``error``."""
        self._fail_at = self.call_count + n
        self._fail_error = error

    def fail(self, operation: str, error: Exception, times: int = 1) -> None:
        """The next ``times`` calls of ``operation`` (a protocol method's name) raise ``error``."""
        self._faults[operation] += [error] * times

    def reject(self, program: str, log: str) -> None:
        """Loads of ``program`` fail as the verifier would, with ``log`` as its words."""
        self._rejected[program] = log

    def add_foreign_tc_filter(self, target: TcTarget, prog_id: int = 0, name: str = "foreign") -> None:
        """A filter another tool made at the target's slot."""
        self._tc[_tc_key(target)] = TcFilterView(prog_id, name)

    def reboot(self) -> None:
        """bpffs emptied, every object gone (interfaces and cgroups stay)."""
        self._pins.clear()
        self._dirs = set(self.mounts)
        self._children.clear()
        self._maps.clear()
        self._programs.clear()
        self._links.clear()
        self._tc.clear()

    def update(self, pin: Path, key: bytes, value: bytes) -> None:
        self._map(pin).values[key] = value

    def lookup(self, pin: Path, key: bytes) -> bytes | None:
        return self._map(pin).values.get(key)

    def tc_filters(self) -> dict[str, TcFilterView]:
        return {f"{t[1]}:{t[2]}@{t[0]} {t[3]}:{t[4]}": v for t, v in self._tc.items()}

    def live_programs(self) -> list[int]:
        return sorted(self._programs)

    def live_maps(self) -> list[int]:
        return sorted(self._maps)

    def live_links(self) -> list[int]:
        return sorted(i for i, link in self._links.items() if not link.defunct)

    def possible_cpus(self) -> int:
        return POSSIBLE_CPUS

    # -- bpffs ---------------------------------------------------------------------------------

    def exists(self, path: Path) -> bool:
        return path in self._pins or path in self._dirs

    def list_dir(self, path: Path) -> list[str]:
        return sorted(self._children.get(path, ()))

    def is_dir(self, path: Path) -> bool:
        return path in self._dirs

    def on_bpffs(self, path: Path) -> bool:
        return any(path == m or m in path.parents for m in self.mounts)

    def unpin(self, path: Path) -> None:
        self._fault("unpin")
        self.calls.append(f"unpin {path}")
        if path in self._dirs:
            raise KernelError(f"unlink {path}: is a directory", errno.EISDIR)
        self._drop(path)
        self._collect()

    def remove_tree(self, path: Path) -> None:
        self._fault("remove_tree")
        self.calls.append(f"remove {path}")
        for pin in [p for p in self._pins if p == path or path in p.parents]:
            self._drop(pin)
        for gone in [d for d in self._dirs if d == path or path in d.parents]:
            self._dirs.discard(gone)
            self._children.pop(gone, None)
            self._children[gone.parent].discard(gone.name)
        self._collect()

    # -- maps ----------------------------------------------------------------------------------

    def map_at(self, pin: Path) -> MapView:
        self._fault("map_at")
        return self._map(pin).info

    def map_by_id(self, map_id: int) -> MapView | None:
        self._fault("map_by_id")
        found = self._maps.get(map_id)
        return found.info if found is not None else None

    def get_or_create_map(self, spec: MapSpec, pin: Path, subject: str) -> tuple[MapView, bool]:
        self._fault("get_or_create_map")
        if pin in self._pins:
            info = self._map(pin).info
            diffs = map_differences(spec, info)
            if diffs:
                raise IncompatibleMapError(subject, diffs)
            return info, False
        map_id = self._create_map(spec)
        self._pin(pin, _Pin("map", map_id))
        self.calls.append(f"create map {map_id} at {pin}")
        return self._maps[map_id].info, True

    def pin_existing_map(self, source: Path | int, pin: Path) -> MapView:
        self._fault("pin_existing_map")
        if isinstance(source, int):
            if source not in self._maps:
                raise KernelError(f"opening map id {source}: ENOENT", errno.ENOENT)
            map_id = source
        else:
            map_id = self._object(source, "map").id
        self._pin(pin, _Pin("map", map_id))
        self.calls.append(f"pin map {map_id} at {pin}")
        return self._maps[map_id].info

    # -- program records -----------------------------------------------------------------------

    def read_record(self, pin: Path) -> bytes | None:
        self._fault("read_record")
        if pin not in self._pins:
            return None
        return self._map(pin).values.get(bytes(4))

    def write_record(self, pin: Path, data: bytes) -> None:
        self._fault("write_record")
        if pin not in self._pins:
            self._pin(pin, _Pin("map", self._create_map(record_spec(len(data)))))
        self.calls.append(f"record {pin}")
        self._map(pin).values[bytes(4)] = data

    # -- programs ------------------------------------------------------------------------------

    def program_at(self, pin: Path) -> ProgramView | None:
        self._fault("program_at")
        if pin not in self._pins:
            return None
        return self._programs[self._object(pin, "prog").id].view

    def open_program(self, pin: Path) -> Loaded:
        self._fault("open_program")
        prog_id = self._object(pin, "prog").id
        return Loaded(MemoryHandle(self, prog_id), self._programs[prog_id].view)

    def load(
        self,
        collection: CollectionSpec,
        program: str,
        bindings: dict[str, MapBinding],
        pin_root: Path,
        pin_dir: Path,
    ) -> Loaded:
        self._fault("load")
        try:
            spec = collection.program(program)
        except KeyError as exc:
            raise BpfshareError(exc.args[0]) from None
        unknown = sorted(set(bindings) - set(collection.maps))
        if unknown:
            raise BpfshareError(f"no map named {', '.join(unknown)} in the object")
        missing = [name for name in spec.map_names if name not in collection.maps]
        if missing:
            raise BpfshareError(f"program {spec.name!r} refers to map {missing[0]!r}, which the object lacks")
        pinned: dict[Path, bool] = {}
        map_ids = [
            self._resolve(collection.maps[name], bindings.get(name), pin_dir, pin_root, pinned)
            for name in spec.map_names
        ]
        # The maps of its tail-call programs and the inner maps of its map-in-maps' initial slots
        # are pinned too, as load_program does (their slots are not modelled here).
        for name in collection.load_closure(spec.name)[1]:
            if name not in spec.map_names:
                self._resolve(collection.maps[name], bindings.get(name), pin_dir, pin_root, pinned)
        if spec.name in self._rejected:
            log = self._rejected[spec.name]
            raise VerifierError(f"loading program {spec.name}: EACCES: Permission denied:\n{log}", errno.EACCES, log)
        prog_id = next(self._ids)
        tag = hashlib.sha256(spec.instructions).hexdigest()[:16]
        self._programs[prog_id] = _Program(ProgramView(prog_id, tag, tuple(map_ids)), spec.name)
        self.calls.append(f"load {spec.name} as program {prog_id}")
        return Loaded(MemoryHandle(self, prog_id), self._programs[prog_id].view, 0.0, pinned)

    def pin_program(self, program: Loaded, pin: Path) -> None:
        self._fault("pin_program")
        handle = program.handle
        assert isinstance(handle, MemoryHandle)
        self._drop(pin)  # rename over the old pin: atomic
        self._pin(pin, _Pin("prog", handle.prog_id))
        self.calls.append(f"pin program {handle.prog_id} at {pin}")
        self._collect()

    # -- attachments ---------------------------------------------------------------------------

    def missing_target(self, target: AttachTarget) -> str | None:
        self._fault("missing_target")
        if isinstance(target, CgroupTarget):
            if _cgroup_key(target.path) not in self._cgroups:
                return f"cgroup {target.path!r} not found"
            return None
        if len(target.interface) > 15:
            return f"interface name {target.interface!r} is longer than 15 characters"
        if (target.netns, target.interface) not in self._interfaces:
            where = f" in network namespace {target.netns}" if target.netns else ""
            return f"interface {target.interface}{where} not found"
        return None

    def place_gone(self, target: AttachTarget) -> bool:
        # A namespace is modelled by its interfaces: one with none left is gone.
        self._fault("place_gone")
        if isinstance(target, CgroupTarget):
            return _cgroup_key(target.path) not in self._cgroups
        return target.netns is not None and not any(ns == target.netns for ns, _ in self._interfaces)

    def tc_filter(self, target: TcTarget) -> TcFilterView | None:
        self._fault("tc_filter")
        self._require_interface(target.interface, target.netns)
        return self._tc.get(_tc_key(target))

    def detach_tc(self, target: TcTarget) -> None:
        self._fault("detach_tc")
        self.calls.append(f"detach {target.key}")
        self._tc.pop(_tc_key(target), None)
        self._collect()

    def current_link(self, pin: Path, target: AttachTarget) -> LinkView | None:
        self._fault("current_link")
        if pin not in self._pins:
            return None
        link = self._links[self._object(pin, "link").id]
        if link.defunct or link.target != target:
            return None
        return LinkView(link.id, link.prog_id)

    def attach(self, program: Loaded, spec: ProgramSpec, target: AttachTarget, pin_dir: Path) -> AttachResult:
        self._fault("attach")
        handle = program.handle
        assert isinstance(handle, MemoryHandle)
        if isinstance(target, TcTarget):
            self._require_interface(target.interface, target.netns)
            self._tc[_tc_key(target)] = TcFilterView(handle.prog_id, spec.name)
            self.calls.append(f"attach program {handle.prog_id} to {target.key}")
            self._collect()
            return AttachResult(handle=f"{target.priority}:{target.handle}")
        if isinstance(target, TcxTarget):
            self._require_interface(target.interface, target.netns)
        elif _cgroup_key(target.path) not in self._cgroups:
            raise KernelError(f"cgroup {target.path}: no such cgroup", errno.ENOENT)
        pin = link_pin_path(pin_dir, target)
        if pin in self._pins:
            link = self._links[self._object(pin, "link").id]
            if not link.defunct and link.target == target:
                link.prog_id = handle.prog_id  # BPF_LINK_UPDATE
                self.calls.append(f"update link {link.id} to program {handle.prog_id}")
                self._collect()
                return AttachResult(link_id=link.id, pin_path=pin)
            self._drop(pin)
        link = _Link(next(self._ids), handle.prog_id, target)
        self._links[link.id] = link
        self._pin(pin, _Pin("link", link.id))
        self.calls.append(f"attach program {handle.prog_id} to {target.key} (link {link.id})")
        self._collect()
        return AttachResult(link_id=link.id, pin_path=pin)

    # -- internals -----------------------------------------------------------------------------

    def _fault(self, operation: str) -> None:
        self.call_count += 1
        if self.call_count == self._fail_at and self._fail_error is not None:
            raise self._fail_error
        pending = self._faults.get(operation)
        if pending:
            raise pending.pop(0)

    def _drop(self, path: Path) -> None:
        if self._pins.pop(path, None) is not None:
            self._children[path.parent].discard(path.name)

    def _object(self, pin: Path, kind: str) -> _Pin:
        found = self._pins.get(pin)
        if found is None:
            raise KernelError(f"opening pin {pin}: No such file or directory", errno.ENOENT)
        if found.kind != kind:
            raise KernelError(f"pin {pin} holds a bpf-{found.kind}, not a bpf-{kind}", errno.EINVAL)
        return found

    def _map(self, pin: Path) -> _Map:
        return self._maps[self._object(pin, "map").id]

    def _pin(self, path: Path, obj: _Pin) -> None:
        if not self.on_bpffs(path):
            raise KernelError(f"pinning at {path}: not on a bpffs mount", errno.EPERM)
        if "." in path.name:
            raise KernelError(f"pinning at {path}: bpffs refuses names containing '.' ({path.name!r})", errno.EPERM)
        if path in self._pins or path in self._dirs:
            raise KernelError(f"pinning at {path}: File exists", errno.EEXIST)
        for parent in path.parents:
            if parent in self._pins:
                raise KernelError(f"pinning at {path}: {parent} is not a directory", errno.ENOTDIR)
            if not self.on_bpffs(parent):
                break
            self._dirs.add(parent)
            self._children[parent.parent].add(parent.name)
        self._pins[path] = obj
        self._children[path.parent].add(path.name)

    def _create_map(self, spec: MapSpec) -> int:
        violations = map_rule_violations(spec)
        if violations:  # what Map.create checks before the syscall
            raise MapRuleError(f"creating map {spec.name!r}", violations)
        spec = effective_spec(spec, POSSIBLE_CPUS)
        map_id = next(self._ids)
        info = MapView(
            map_id,
            spec.type,
            spec.key_size,
            spec.value_size,
            spec.max_entries,
            MapFlag(spec.flags),
            kernel_object_name(spec.name),
        )
        self._maps[map_id] = _Map(info)
        if spec.contents is not None:
            self._maps[map_id].values[bytes(spec.key_size)] = spec.contents.ljust(spec.value_size, b"\0")
        return map_id

    def _resolve(
        self, spec: MapSpec, binding: MapBinding | None, pin_dir: Path, pin_root: Path, pinned: dict[Path, bool]
    ) -> int:
        if binding is not None:
            subject = f"map {spec.name!r} bound to {binding.describe()}"
            if binding.pin_path is None:
                raise BpfshareError(f"{subject}: the memory kernel binds by pin only")
            if binding.pin_path not in self._pins:
                raise BpfshareError(f"{subject}: no such pin (bind an existing map; nothing was created)")
            info = self._map(binding.pin_path).info
            diffs = map_differences(spec, info)
            if diffs:
                raise IncompatibleMapError(subject, diffs)
            return info.id
        if spec.style is DefinitionStyle.GLOBAL_DATA:
            path = pin_dir / PRIVATE_MAPS_DIR / private_pin_name(spec.name)
            map_id = self._create_map(spec)
            self._drop(path)
            self._pin(path, _Pin("map", map_id))
            return map_id
        convention = convention_pin_path(spec, pin_root)
        path = convention or pin_dir / PRIVATE_MAPS_DIR / private_pin_name(spec.name)
        info, created = self.get_or_create_map(spec, path, f"map {spec.name!r} pinned at {path}")
        if convention is not None:
            pinned[path] = created
        return info.id

    def _require_interface(self, name: str, netns: str | None) -> None:
        if (netns, name) not in self._interfaces:
            where = f" in network namespace {netns}" if netns else ""
            raise TargetNotFoundError(f"interface {name}{where} not found")

    def _collect(self) -> None:
        """Free what nothing holds any more: links, then programs, then maps (their contents too)."""
        pinned = defaultdict(set)
        for pin in self._pins.values():
            pinned[pin.kind].add(pin.id)
        self._links = {i: link for i, link in self._links.items() if i in pinned["link"]}
        held = {link.prog_id for link in self._links.values() if not link.defunct}
        held |= {f.prog_id for f in self._tc.values()}
        self._programs = {i: p for i, p in self._programs.items() if i in pinned["prog"] or i in held or p.handles > 0}
        used = {m for p in self._programs.values() for m in p.view.map_ids}
        self._maps = {i: m for i, m in self._maps.items() if i in pinned["map"] or i in used}


def _tc_key(target: TcTarget) -> tuple[str | None, str, str, int, int]:
    return (target.netns, target.interface, target.direction, target.priority, target.handle)


def _cgroup_key(path: str) -> str:
    return "/" + path.strip("/")
