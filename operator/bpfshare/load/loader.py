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

Maps are created with the object's BTF (their key and value types) when the spec has them, as
libbpf does: BTF maps and global data maps. The BTF is loaded once per load, on first need
(load/object_btf.py), shared with the programs' func_info, and closed after the load. A map the
kernel refuses with its BTF is created without it (a warning), unless its value needs BTF (a
timer, a spin lock: an error). A reused map is taken with or without BTF: it is not compared.

Initial slots (``.values = { [i] = &x }`` in ``.maps``), as libbpf does them:
- a prog array's slots name programs of the same object: loading a program loads the programs that
  the slots of the prog arrays it uses name (transitively: ``CollectionSpec.load_closure``), with
  their own maps resolved in the same load (one live map per object map), and puts them in the
  slots. They are written whether the prog array was created or reused (libbpf's
  init_prog_array_slots), so an upgrade replaces the previous version's tail calls. The tail-call
  programs are not pinned: the prog array (pinned, like every map) holds them. A slot naming a
  program that cannot be loaded fails the load, naming the program and why.
- a map-in-map's slots name maps of the object: when the outer map is created by this load, they are
  resolved like any map (created or reused by their own pinning) and put in the slots; a reused outer
  map keeps its contents (libbpf's init_map_in_map_slots runs only on creation). An iproute2 map-in-map
  (``struct bpf_elf_map`` inner_id/inner_idx) gets its slots written on every load, as iproute2 does.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from bpfshare.errors import BpfshareError, KernelError, VerifierError
from bpfshare.kernel.maps import Map
from bpfshare.kernel.pins import checked, ensure_pin_dir, get_or_create_pinned, replace_pin
from bpfshare.kernel.programs import Program
from bpfshare.load.bpf_pinning import custom_pin_subdir
from bpfshare.load.core import POISON_IMM, Poisoned
from bpfshare.load.core import apply as apply_core
from bpfshare.load.externs import resolve_externs
from bpfshare.load.kconfig import kconfig_contents
from bpfshare.load.object_btf import ObjectBtf
from bpfshare.object.btf import Btf
from bpfshare.object.kernel_btf import kernel_btf
from bpfshare.spec import (
    KCONFIG_MAP,
    CollectionSpec,
    DefinitionStyle,
    MapSpec,
    Pinning,
    ProgramSpec,
    kernel_object_name,
)
from bpfshare.types import MapType

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
    # Every map the load resolved: the program's, and those of its tail-call programs and the
    # inner maps put in map-in-map slots.
    maps: dict[str, LoadedMap] = field(default_factory=dict)
    kernel_seconds: float = 0.0  # the BPF_PROG_LOAD call(s): the verifier's time
    # Programs loaded into prog array slots, by name (held by the prog arrays, not pinned).
    slot_programs: dict[str, Program] = field(default_factory=dict)

    def close_dependencies(self) -> None:
        """Close what the load opened besides the program itself (pins and prog arrays keep them)."""
        for loaded in self.maps.values():
            loaded.map.close()
        for prog in self.slot_programs.values():
            prog.close()

    def close(self) -> None:
        self.close_dependencies()
        self.program.close()


def default_pin_dir(pin_root: Path, program: str) -> Path:
    """``bpfshare load``'s default: apart from ``programs/``, which the engine owns (and garbage-collects)."""
    return pin_root / "loads" / program


def convention_pin_path(spec: MapSpec, pin_root: Path) -> Path | None:
    """Where a map that asks to be pinned by name goes when it is not bound explicitly.

    An iproute2 custom pinning value is looked up in the node's bpf_pinning file (iproute2's
    bpf_make_pathname: ``<bpffs>/<subdir>/<name>``); a value the file lacks is an error naming the map.
    """
    if spec.pinning is Pinning.ByName:
        return pin_root / spec.name
    if spec.pinning is Pinning.GlobalNS:
        return pin_root / "tc" / "globals" / spec.name
    if spec.pinning is Pinning.Custom:
        return pin_root / custom_pin_subdir(spec.custom_pinning, spec.name) / spec.name
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
    resolved: dict[str, LoadedMap] | None = None,
    btfs: ObjectBtf | None = None,
) -> dict[str, LoadedMap]:
    """The live maps ``program`` refers to, added to ``resolved`` (the maps already resolved by
    this load, shared so that every program of one load gets the same map). ``btfs``: the load's
    object BTF, which the maps it creates get (their own, closed on return, when not given)."""
    unknown = sorted(set(bindings) - set(collection.maps))
    if unknown:
        known = ", ".join(sorted(collection.maps)) or "none"
        raise BpfshareError(f"no map named {', '.join(unknown)} in the object (maps: {known})")
    resolved = resolved if resolved is not None else {}
    own_btfs = btfs is None
    btfs = btfs if btfs is not None else ObjectBtf()
    new: list[str] = []
    try:
        for name in program.map_names:
            if name in resolved:
                continue
            spec = collection.maps.get(name)
            if spec is None:
                raise BpfshareError(f"program {program.name!r} refers to map {name!r}, which the object lacks")
            resolved[name] = _resolve_one(spec, bindings.get(name), pin_dir, pin_root, btfs)
            new.append(name)
            # libbpf fills a map-in-map's slots only when it creates it; iproute2 every time.
            iproute2 = spec.style is DefinitionStyle.IPROUTE2_LEGACY
            if spec.slot_maps and (iproute2 or not resolved[name].reused):
                new.extend(_fill_map_slots(collection, spec, resolved, bindings, pin_dir, pin_root, btfs))
    except BaseException:
        for name in new:
            resolved.pop(name).map.close()
        raise
    finally:
        if own_btfs:
            btfs.close()
    return resolved


def _fill_map_slots(
    collection: CollectionSpec,
    spec: MapSpec,
    resolved: dict[str, LoadedMap],
    bindings: dict[str, MapBinding],
    pin_dir: Path,
    pin_root: Path,
    btfs: ObjectBtf,
) -> list[str]:
    """Resolve the inner maps a new map-in-map's slots name and put them in (libbpf's
    init_map_in_map_slots). Returns the maps it resolved, for the caller to close on failure."""
    new: list[str] = []
    outer = resolved[spec.name].map
    for index, inner_name in spec.slots:
        if inner_name not in resolved:
            inner_spec = collection.maps.get(inner_name)
            if inner_spec is None:
                # (the reader refuses the programs using a map whose slots name a refused map)
                raise BpfshareError(f"map {spec.name!r}: slot {index} names map {inner_name!r}, which the object lacks")
            resolved[inner_name] = _resolve_one(inner_spec, bindings.get(inner_name), pin_dir, pin_root, btfs)
            new.append(inner_name)
        try:
            outer.update(struct.pack("<I", index), struct.pack("<I", resolved[inner_name].map.fd))
        except KernelError as exc:
            raise KernelError(
                f"map {spec.name!r}: putting map {inner_name!r} in slot {index}: {exc}", exc.errno
            ) from None
    return new


def _resolve_one(
    spec: MapSpec, binding: MapBinding | None, pin_dir: Path, pin_root: Path, btfs: ObjectBtf
) -> LoadedMap:
    if binding is not None:
        return LoadedMap(spec, open_binding(spec, binding), binding.pin_path, reused=True)
    if spec.style is DefinitionStyle.GLOBAL_DATA:
        live = Map.create(spec, btf_fd=btfs.for_map(spec))
        path = pin_dir / PRIVATE_MAPS_DIR / private_pin_name(spec.name)
        replace_pin(live, path)
        return LoadedMap(spec, live, path, reused=False)
    path = convention_pin_path(spec, pin_root) or pin_dir / PRIVATE_MAPS_DIR / private_pin_name(spec.name)
    ensure_pin_dir(path.parent)
    _move_legacy_private_pin(spec, path, pin_dir)
    # The BTF is loaded only if the map is created (a reused map has its own, or none).
    live, reused = get_or_create_pinned(
        spec, path, f"map {spec.name!r} pinned at {path}", btf=functools.partial(btfs.for_map, spec)
    )
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


def with_kconfig_values(collection: CollectionSpec, programs: list[ProgramSpec]) -> CollectionSpec:
    """The collection with its ``.kconfig`` map's contents filled in for the running kernel, if
    one of the programs being loaded reads __kconfig values (libbpf's bpf_object__resolve_externs)."""
    spec = collection.maps.get(KCONFIG_MAP)
    if spec is None or not any(KCONFIG_MAP in program.map_names for program in programs):
        return collection
    contents = kconfig_contents(collection.kconfig, spec.value_size)
    maps = {**collection.maps, KCONFIG_MAP: dataclasses.replace(spec, contents=contents)}
    return dataclasses.replace(collection, maps=maps)


def _load_one(
    program: ProgramSpec, fds: dict[str, int], btf_path: Path | None, btfs: ObjectBtf
) -> tuple[Program, float]:
    """One program through the verifier, its map references bound to ``fds``, its CO-RE relocations
    applied and its externs and kfuncs resolved against the running kernel (libbpf's order:
    bpf_object__relocate_core, then the data and call relocations); and the seconds spent in
    BPF_PROG_LOAD."""
    instructions = program.instructions_with_fds(fds)
    poisoned: list[Poisoned] = []
    if program.core_relocations:
        instructions, poisoned = relocate_core(program, instructions, btf_path)
    resolved = resolve_externs(program, instructions)
    try:
        # The object's BTF, for the func_info of programs with callbacks (the same BTF object as
        # the maps', as libbpf's prog_btf_fd); the load closes it, the kernel holds its own reference.
        btf_fd = btfs.for_program(program)
        started = time.perf_counter()
        try:
            live = Program.load(
                program, resolved.instructions, name=program.name, btf_fd=btf_fd, fd_array=resolved.fd_array
            )
        except VerifierError as exc:
            if poisoned:
                raise VerifierError(_poisoned_message(program, poisoned, exc), exc.errno, exc.log) from None
            raise
        return live, time.perf_counter() - started
    finally:
        resolved.close()


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

    A program the object has but that cannot be loaded fails with the reason (``UnsupportedError``
    naming it), whatever the object's other programs use. The programs that the initial slots of
    its prog arrays name are loaded too and put in the slots (see the module's docstring).
    ``btf``: the kernel's BTF for CO-RE relocations when /sys/kernel/btf/vmlinux is missing (--btf).
    """
    try:
        program = collection.program(program_name)
    except KeyError as exc:
        raise BpfshareError(exc.args[0]) from None
    pin_dir = pin_dir or default_pin_dir(pin_root, program.name)
    bindings = bindings or {}
    names, _ = collection.load_closure(program.name)
    collection = with_kconfig_values(collection, [collection.programs[name] for name in names])
    maps: dict[str, LoadedMap] = {}
    live: Program | None = None
    slot_programs: dict[str, Program] = {}
    btfs = ObjectBtf()
    try:
        for name in names:
            resolve_maps(
                collection,
                collection.programs[name],
                bindings=bindings,
                pin_dir=pin_dir,
                pin_root=pin_root,
                resolved=maps,
                btfs=btfs,
            )
        fds = {name: loaded.map.fd for name, loaded in maps.items()}
        try:
            live, kernel_seconds = _load_one(program, fds, btf, btfs)
        except VerifierError as exc:
            raise _reused_without_btf(exc, maps) from None
        for name in names[1:]:
            spec = collection.programs[name]
            try:
                try:
                    slot_programs[name], _ = _load_one(spec, fds, btf, btfs)
                except VerifierError as exc:
                    raise _reused_without_btf(exc, maps) from None
            except KernelError as exc:
                error = VerifierError if isinstance(exc, VerifierError) else KernelError
                raise error(
                    f"tail-call program {name!r} (an initial prog array slot): {exc}", exc.errno, exc.log
                ) from None
        loaded_fds = {program.name: live.fd, **{n: p.fd for n, p in slot_programs.items()}}
        _fill_prog_array_slots(maps, loaded_fds)
        prog_pin = pin_dir / PROGRAM_PIN
        if pin_program:
            replace_pin(live, prog_pin)
    except BaseException:
        for loaded in maps.values():
            loaded.map.close()
        for prog in slot_programs.values():
            prog.close()
        if live is not None:
            live.close()
        raise
    finally:
        btfs.close()
    return LoadedProgram(program, live, prog_pin, maps, kernel_seconds, slot_programs)


def _reused_without_btf(exc: VerifierError, maps: dict[str, LoadedMap]) -> VerifierError:
    """``exc``, saying why when the verifier refused a timer or spin lock of a map without BTF
    ("map 'x' has to have BTF in order to use bpf_timer") that the load reused: a map pinned by a
    loader that passed no BTF (bpfshare before it did, a tool of the user's), which the
    compatibility check accepts (BTF is not compared) but the kernel cannot give the field."""
    text = exc.log or str(exc)
    for name, loaded in maps.items():
        if not (loaded.reused and loaded.spec.btf_fields):
            continue
        if f"map '{kernel_object_name(name)}' has to have BTF" not in text:
            continue
        info = loaded.map.info()
        if info.btf_id == 0:
            where = str(loaded.pin_path) if loaded.pin_path is not None else f"map id {info.id}"
            hint = (
                f"map {name!r} was reused from {where}, which was created without BTF: its value's "
                f"{loaded.spec.btf_fields[0]} needs it (remove the pin so that the load creates the map with BTF)"
            )
            return VerifierError(f"{exc}\n{hint}", exc.errno, exc.log)
    return exc


def _fill_prog_array_slots(maps: dict[str, LoadedMap], fds: dict[str, int]) -> None:
    """Put the programs of this load in the slots of every prog array it uses that names them
    (libbpf's init_prog_array_slots: created or reused alike)."""
    for name, loaded in maps.items():
        for index, target in loaded.spec.slots if loaded.spec.type is MapType.ProgArray else ():
            try:
                loaded.map.update(struct.pack("<I", index), struct.pack("<I", fds[target]))
            except KernelError as exc:
                raise KernelError(
                    f"map {name!r}: putting program {target!r} in slot {index}: {exc}", exc.errno
                ) from None


def relocate_core(program: ProgramSpec, instructions: bytes, btf: Path | None) -> tuple[bytes, list[Poisoned]]:
    """Apply the program's CO-RE relocations against the kernel's BTF (or ``btf``), at load time:
    the spec stays pure, and the kernel's types are indexed once per process (kernel_btf)."""
    if program.local_btf is None:
        raise BpfshareError(f"program {program.name!r}: CO-RE relocations without the object's BTF")
    target = kernel_btf(btf)
    return apply_core(program.name, instructions, program.core_relocations, _parsed_btf(program.local_btf), target)


@functools.lru_cache(maxsize=16)
def _parsed_btf(data: bytes) -> Btf:
    """An object's BTF, parsed once per process for every load of its programs (the spec keeps the
    section's bytes: specs are plain data)."""
    return Btf(data)


def _poisoned_message(program: ProgramSpec, poisoned: list[Poisoned], exc: VerifierError) -> str:
    """Name what the kernel lacks when the verifier reached a poisoned instruction (libbpf prints
    the relocation in its log; the verifier says only "invalid func unknown#195896080")."""
    reached = [p for p in poisoned if f"{p.insn}: (85) call unknown#{POISON_IMM}" in (exc.log or "")]
    shown = reached or poisoned
    reasons = "; ".join(dict.fromkeys(p.reason for p in shown))
    return f"loading program {program.name!r}: {reasons} (CO-RE relocation unresolved; instruction {shown[0].insn})"
