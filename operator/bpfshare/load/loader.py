"""Load one program of an object so that it shares maps with whatever already runs on the node.

Data flow: ``CollectionSpec`` (pure) + bindings → live maps (reused after a compatibility check, or
created and pinned) → relocated instructions → ``Program`` (verifier) → pinned program.

Map resolution, for every map the program refers to:
- bound to a pin path or a live map ID: reuse it; every differing field is reported at once and the
  existing map is never touched. A bound pin that does not exist is an error: binding is how a user
  says "share that map", and silently creating a fresh one would split the data in two.
- unbound, ``pinning`` ByName (libbpf) or GlobalNS (iproute2): the loader's own convention under
  the pin root, ``<root>/<name>`` and ``<root>/tc/globals/<name>``: reused if present, else created
  and pinned; concurrent loaders converge on one map.
- unbound, no pinning: created and pinned under the load's pin directory, so that a later load of
  the same program (an upgrade) finds it again with its contents.
- global data (.data/.rodata/.bss): created fresh on every load (its initial contents belong to this
  version of the object) and pinned under the pin directory, replacing the previous version's pin.
"""

from __future__ import annotations

import errno
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from bpfshare.errors import BpfshareError, KernelError, VerifierError
from bpfshare.kernel.maps import Map
from bpfshare.kernel.pins import checked, ensure_pin_dir, get_or_create_pinned, replace_pin
from bpfshare.kernel.programs import Program
from bpfshare.load.core import POISON_IMM, Poisoned
from bpfshare.load.core import apply as apply_core
from bpfshare.object.kernel_btf import kernel_btf
from bpfshare.spec import CollectionSpec, DefinitionStyle, MapSpec, Pinning, ProgramSpec, kernel_object_name

PROGRAM_PIN = "program"
PRIVATE_MAPS_DIR = "maps"  # <pin dir>/maps/<name>: the object's own maps, apart from the loader's pins
# What a program directory holds besides ``maps/``: a private map may not take these names.
RESERVED_PIN_NAMES = frozenset({PROGRAM_PIN, "meta", "links", PRIVATE_MAPS_DIR})


@dataclass(frozen=True)
class MapBinding:
    """Where an object map's live map comes from: an existing pin or a live map ID."""

    pin_path: Path | None = None
    map_id: int | None = None

    @classmethod
    def parse(cls, target: str) -> MapBinding:
        """``/sys/fs/bpf/x`` (a pin), ``id:42`` or ``42`` (a live map ID)."""
        text = target.strip()
        number = text.removeprefix("id:")
        if number.isdigit():
            return cls(map_id=int(number))
        if not text:
            raise BpfshareError("empty map binding")
        return cls(pin_path=Path(text))

    def describe(self) -> str:
        return str(self.pin_path) if self.pin_path is not None else f"map id {self.map_id}"


@dataclass
class LoadedMap:
    spec: MapSpec
    map: Map
    pin_path: Path | None
    reused: bool

    def describe(self) -> dict[str, object]:
        return {
            "id": self.map.info().id,
            "pinPath": str(self.pin_path) if self.pin_path else None,
            "reused": self.reused,
        }


@dataclass
class LoadedProgram:
    spec: ProgramSpec
    program: Program
    pin_path: Path
    maps: dict[str, LoadedMap] = field(default_factory=dict)
    kernel_seconds: float = 0.0  # the BPF_PROG_LOAD call(s): the verifier's time

    def close(self) -> None:
        for loaded in self.maps.values():
            loaded.map.close()
        self.program.close()


def default_pin_dir(pin_root: Path, program: str) -> Path:
    """``bpfshare load``'s default: apart from ``programs/``, which the engine owns (and garbage-collects)."""
    return pin_root / "loads" / program


def convention_pin_path(spec: MapSpec, pin_root: Path) -> Path | None:
    """Where a map that asks to be pinned by name goes when it is not bound explicitly."""
    if spec.pinning is Pinning.ByName:
        return pin_root / spec.name
    if spec.pinning is Pinning.GlobalNS:
        return pin_root / "tc" / "globals" / spec.name
    return None


def open_binding(spec: MapSpec, binding: MapBinding) -> Map:
    """Open the map a binding names and check it against the object's declaration."""
    subject = f"map {spec.name!r} bound to {binding.describe()}"
    if binding.pin_path is not None:
        # Asked of the kernel, not of stat(2): bpffs answers EPERM for a name with a '.', which
        # only obj_get explains (and Path.exists raises).
        try:
            live = Map.from_pin(binding.pin_path)
        except KernelError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise BpfshareError(f"{subject}: no such pin (bind an existing map; nothing was created)") from None
            raise KernelError(f"{subject}: {exc}", exc.errno) from None
    else:
        assert binding.map_id is not None
        live = Map.from_id(binding.map_id)
    return checked(live, spec, subject)


def resolve_maps(
    collection: CollectionSpec,
    program: ProgramSpec,
    *,
    bindings: dict[str, MapBinding],
    pin_dir: Path,
    pin_root: Path,
) -> dict[str, LoadedMap]:
    unknown = sorted(set(bindings) - set(collection.maps))
    if unknown:
        known = ", ".join(sorted(collection.maps)) or "none"
        raise BpfshareError(f"no map named {', '.join(unknown)} in the object (maps: {known})")
    resolved: dict[str, LoadedMap] = {}
    try:
        for name in program.map_names:
            spec = collection.maps.get(name)
            if spec is None:
                raise BpfshareError(f"program {program.name!r} refers to map {name!r}, which the object lacks")
            resolved[name] = _resolve_one(spec, bindings.get(name), pin_dir, pin_root)
    except BaseException:
        for loaded in resolved.values():
            loaded.map.close()
        raise
    return resolved


def _resolve_one(spec: MapSpec, binding: MapBinding | None, pin_dir: Path, pin_root: Path) -> LoadedMap:
    if binding is not None:
        return LoadedMap(spec, open_binding(spec, binding), binding.pin_path, reused=True)
    if spec.style is DefinitionStyle.GLOBAL_DATA:
        live = Map.create(spec)
        path = pin_dir / PRIVATE_MAPS_DIR / private_pin_name(spec.name)
        replace_pin(live, path)
        return LoadedMap(spec, live, path, reused=False)
    path = convention_pin_path(spec, pin_root) or pin_dir / PRIVATE_MAPS_DIR / private_pin_name(spec.name)
    ensure_pin_dir(path.parent)
    _move_legacy_private_pin(spec, path, pin_dir)
    live, reused = get_or_create_pinned(spec, path, f"map {spec.name!r} pinned at {path}")
    return LoadedMap(spec, live, path, reused=reused)


def _move_legacy_private_pin(spec: MapSpec, path: Path, pin_dir: Path) -> None:
    """Private maps used to be pinned beside the program's own pins (``<pin dir>/<name>``), where a
    map named ``program`` or ``meta`` collided with them: move such a pin to ``maps/`` once, so an
    upgrade keeps its contents."""
    legacy = pin_dir / private_pin_name(spec.name)
    if path.parent != pin_dir / PRIVATE_MAPS_DIR or legacy.name in RESERVED_PIN_NAMES or path.exists():
        return
    try:
        old = Map.from_pin(legacy)
    except KernelError:
        return  # nothing there (or not a map): nothing to move
    with old:
        if old.info().name == kernel_object_name(spec.name):
            old.pin(path)
            legacy.unlink()


def private_pin_name(name: str) -> str:
    """The pin name of an object's private map under the program's directory."""
    # bpffs refuses names containing '.', so ".rodata.str1.1" is pinned as "rodata_str1_1".
    return re.sub(r"[^A-Za-z0-9_-]", "_", name.lstrip(".")) or "map"


def load_program(
    collection: CollectionSpec,
    program_name: str,
    *,
    bindings: dict[str, MapBinding] | None = None,
    pin_root: Path,
    pin_dir: Path | None = None,
    pin_program: bool = True,
    btf: Path | None = None,
) -> LoadedProgram:
    """Resolve the program's maps, load it through the verifier, and pin it as ``<pin_dir>/program``.

    ``btf``: the kernel's BTF for CO-RE relocations when /sys/kernel/btf/vmlinux is missing (--btf)."""
    try:
        program = collection.program(program_name)
    except KeyError as exc:
        raise BpfshareError(exc.args[0]) from None
    pin_dir = pin_dir or default_pin_dir(pin_root, program.name)
    maps = resolve_maps(collection, program, bindings=bindings or {}, pin_dir=pin_dir, pin_root=pin_root)
    try:
        fds = {name: loaded.map.fd for name, loaded in maps.items()}
        instructions = program.instructions_with_fds(fds)
        poisoned: list[Poisoned] = []
        if program.core_relocations:
            instructions, poisoned = relocate_core(program, instructions, btf)
        started = time.perf_counter()
        try:
            live = Program.load(program, instructions, name=program.name)
        except VerifierError as exc:
            if poisoned:
                raise VerifierError(_poisoned_message(program, poisoned, exc), exc.errno, exc.log) from None
            raise
        kernel_seconds = time.perf_counter() - started
        prog_pin = pin_dir / PROGRAM_PIN
        if pin_program:
            replace_pin(live, prog_pin)
    except BaseException:
        for loaded in maps.values():
            loaded.map.close()
        raise
    return LoadedProgram(program, live, prog_pin, maps, kernel_seconds)


def relocate_core(program: ProgramSpec, instructions: bytes, btf: Path | None) -> tuple[bytes, list[Poisoned]]:
    """Apply the program's CO-RE relocations against the kernel's BTF (or ``btf``), at load time:
    the spec stays pure, and the kernel's types are indexed once per process (kernel_btf)."""
    if program.local_btf is None:
        raise BpfshareError(f"program {program.name!r}: CO-RE relocations without the object's BTF")
    target = kernel_btf(btf)
    return apply_core(program.name, instructions, program.core_relocations, program.local_btf, target)


def _poisoned_message(program: ProgramSpec, poisoned: list[Poisoned], exc: VerifierError) -> str:
    """Name what the kernel lacks when the verifier reached a poisoned instruction (libbpf prints
    the relocation in its log; the verifier says only "invalid func unknown#195896080")."""
    reached = [p for p in poisoned if f"{p.insn}: (85) call unknown#{POISON_IMM}" in (exc.log or "")]
    shown = reached or poisoned
    reasons = "; ".join(dict.fromkeys(p.reason for p in shown))
    return f"loading program {program.name!r}: {reasons} (CO-RE relocation unresolved; instruction {shown[0].insn})"
