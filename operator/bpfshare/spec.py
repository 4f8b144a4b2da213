"""Specs: what an ELF object declares, as pure data (no kernel, no file handles).

Modelled on cilium/ebpf's MapSpec / ProgramSpec / CollectionSpec. The object reader
(``bpfshare.object``) produces a ``CollectionSpec``; the loader turns specs into live kernel
objects (``bpfshare.kernel``). Everything here is immutable and cheap to compare.
"""

from __future__ import annotations

import dataclasses
import enum
import mmap
import re
import struct
from dataclasses import dataclass, field

from bpfshare.errors import ObjectError, UnsupportedError
from bpfshare.types import MAP_IN_MAP_TYPES, AttachType, MapFlag, MapType, ProgType

INSN_SIZE = 8

# BPF_OBJ_NAME_LEN is 16 bytes including the NUL: a map or program name keeps 15 characters.
OBJECT_NAME_MAX = 15
_NOT_IN_OBJECT_NAME = re.compile(r"[^A-Za-z0-9_.]")


def kernel_object_name(name: str) -> str:
    """The name the kernel will keep for a map or program called ``name``.

    At most ``OBJECT_NAME_MAX`` characters of [A-Za-z0-9_.]: the kernel refuses any other character
    (EINVAL, bpf_obj_name_cpy) rather than dropping it, so each one becomes '_'. Pure, so that the
    engine can predict the name a map will show without asking the kernel.
    """
    return _NOT_IN_OBJECT_NAME.sub("_", name)[:OBJECT_NAME_MAX]


class Pinning(enum.IntEnum):
    """How a map asks to be pinned. Values follow iproute2's ``bpf_elf_map.pinning``.

    libbpf's ``LIBBPF_PIN_BY_NAME`` (1) is stored as ``ByName``; iproute2's PIN_OBJECT_NS (1) and
    PIN_GLOBAL_NS (2) are told apart by the definition style.
    """

    NONE = 0
    ObjectNS = 1  # iproute2: /sys/fs/bpf/tc/<object hash>/<name>
    GlobalNS = 2  # iproute2: /sys/fs/bpf/tc/globals/<name>
    ByName = 3  # libbpf: <pin root>/<name>
    Custom = 4  # iproute2, any other value: /sys/fs/bpf/tc/<subdir from bpf_pinning>/<name>


class DefinitionStyle(enum.StrEnum):
    BTF = "btf"  # SEC(".maps") with BTF
    LIBBPF_LEGACY = "libbpf-legacy"  # SEC("maps") struct bpf_map_def
    IPROUTE2_LEGACY = "iproute2-legacy"  # SEC("maps") struct bpf_elf_map
    GLOBAL_DATA = "global-data"  # .data / .rodata / .bss


@dataclass(frozen=True)
class MapSpec:
    name: str
    type: MapType
    key_size: int
    value_size: int
    max_entries: int
    flags: MapFlag = MapFlag(0)  # noqa: RUF009  (an immutable IntFlag value)
    pinning: Pinning = Pinning.NONE
    style: DefinitionStyle = DefinitionStyle.BTF
    section: str = ""
    # Map-in-map: the inner map's spec (BTF __array(values, ...) or bpf_elf_map.inner_idx).
    inner: MapSpec | None = None
    # Initial contents of a global data map (.data/.rodata): value of key 0.
    contents: bytes | None = None
    # iproute2's bpf_elf_map.id / inner_id / inner_idx, kept so inspect can show them.
    extra: tuple[tuple[str, int], ...] = ()
    # Initial slots from relocations in ``.maps`` (libbpf's bpf_object__collect_map_relos), by
    # index: a ProgArray's name the object's programs, a map-in-map's the object's maps.
    slots: tuple[tuple[int, str], ...] = ()
    # iproute2's pinning value when it is neither 0, 1 nor 2 (``pinning`` is then Pinning.Custom):
    # a subdirectory that the node's bpf_pinning file names, looked up at load time.
    custom_pinning: int = 0
    # BTF (libbpf's btf_key_type_id / btf_value_type_id): the key's and value's types in the
    # object's BTF (a BTF map's ``__type(key/value, T)``, a global data map's DATASEC as value), and
    # that BTF as BPF_BTF_LOAD takes it (sanitized, the bytes ProgramSpec.btf holds), which the
    # loader passes at creation (BPF_MAP_CREATE btf_fd). 0 / None without: legacy maps, resources.
    # Not compared: a map created without BTF (an older bpfshare, a resource) stands in for the
    # same definition with it, as the kernel's info and cilium/ebpf's MapSpec.Compatible ignore it.
    btf_key_type_id: int = field(default=0, compare=False)
    btf_value_type_id: int = field(default=0, compare=False)
    btf: bytes | None = field(default=None, compare=False, repr=False)
    # What the value holds that the kernel knows only from BTF (``struct bpf_timer at offset 0``,
    # a spin lock, a kptr: object.btf_fields): such a map must be created with its BTF, where libbpf
    # would retry without it and leave the verifier to refuse the program.
    btf_fields: tuple[str, ...] = field(default=(), compare=False)

    @property
    def slot_programs(self) -> list[str]:
        """Programs a ProgArray's initial slots name (in slot order, once each)."""
        if self.type is not MapType.ProgArray:
            return []
        return list(dict.fromkeys(name for _, name in self.slots))

    @property
    def slot_maps(self) -> list[str]:
        """Maps a map-in-map's initial slots name (in slot order, once each)."""
        if self.type not in MAP_IN_MAP_TYPES:
            return []
        return list(dict.fromkeys(name for _, name in self.slots))

    def describe(self) -> dict[str, object]:
        """The JSON shape of ``bpfshare inspect``'s maps."""
        if self.pinning is Pinning.Custom:
            pinning = str(self.custom_pinning)  # the raw bpf_elf_map value: the node's file decides
        else:
            pinning = self.pinning.name if self.pinning else "none"
        return {
            "name": self.name,
            "type": self.type.name,
            "keySize": self.key_size,
            "valueSize": self.value_size,
            "maxEntries": self.max_entries,
            "flags": MapFlag.names(int(self.flags)),
            "pinning": pinning,
            "style": str(self.style),
        }


def effective_spec(spec: MapSpec, possible_cpus: int) -> MapSpec:
    """The spec as the kernel will create it: its "magic" fields filled in, as the kernel (and libbpf,
    and cilium/ebpf) do, on a machine with ``possible_cpus`` possible CPUs.

    - PerfEventArray: key and value size 0 mean 4; max_entries 0 (or more than the CPUs) means the
      number of possible CPUs. CpuMap: max_entries clamped to the possible CPUs likewise.
    - ArrayOfMaps / HashOfMaps: value size 0 means 4 (the value is a map fd, read back as an id).
    - RingBuf / UserRingBuf: key and value size are always 0 (the kernel refuses anything else).

    Returns ``spec`` itself when nothing changes.
    """
    changes: dict[str, int] = {}
    if spec.type is MapType.PerfEventArray:
        changes = {"key_size": spec.key_size or 4, "value_size": spec.value_size or 4}
        if spec.max_entries == 0 or spec.max_entries > possible_cpus:
            changes["max_entries"] = possible_cpus
    elif spec.type is MapType.CpuMap:
        if spec.max_entries == 0 or spec.max_entries > possible_cpus:
            changes["max_entries"] = possible_cpus
    elif spec.type in MAP_IN_MAP_TYPES:
        changes = {"value_size": spec.value_size or 4}
    elif spec.type in (MapType.RingBuf, MapType.UserRingBuf):
        changes = {"key_size": 0, "value_size": 0}
    changes = {name: value for name, value in changes.items() if getattr(spec, name) != value}
    return dataclasses.replace(spec, **changes) if changes else spec  # type: ignore[arg-type]


# -- the kernel's per-type rules at map creation ---------------------------------------------------
#
# Each map type checks its attributes in its own map_alloc_check (or map_alloc) function and answers
# a bare EINVAL (a few: E2BIG, ENOTSUPP) for any it dislikes. ``map_rule_violations`` says the same
# thing in words, before the kernel is asked. Transcribed from kernel/bpf/*.c and net/*/ (6.18); the
# function each rule mirrors is named beside it. tests/kernel/test_map_rules.py sweeps the real
# kernel to keep both in step.

# BPF_F_ACCESS_MASK: how the map may be accessed (fd and program side).
_ACCESS = MapFlag.Rdonly | MapFlag.Wronly | MapFlag.RdonlyProg | MapFlag.WronlyProg
_FD_ACCESS = MapFlag.Rdonly | MapFlag.Wronly
# Flags map_create (kernel/bpf/syscall.c) consumes itself before the type's check sees them.
_GENERIC_FLAGS = MapFlag.TokenFd | MapFlag.VtypeBtfObjFd
# PCPU_MIN_UNIT_SIZE: a per-CPU value, rounded up to 8 bytes, must fit one per-CPU allocation unit.
PERCPU_VALUE_MAX = 32768
# include/linux/bpf.h: struct bpf_lpm_trie_key_u8 is a 4-byte prefix length followed by the data.
LPM_PREFIXLEN_SIZE = 4
LPM_DATA_SIZE_MAX = 256  # kernel/bpf/lpm_trie.c LPM_DATA_SIZE_MAX
MAX_BPF_STACK = 512  # include/linux/filter.h: a program's stack, where it builds its keys
PERF_MAX_STACK_DEFAULT = 127  # the sysctl kernel.perf_event_max_stack's default (PERF_MAX_STACK_DEPTH)
_ARRAY_TYPES = frozenset(
    {
        MapType.Array,
        MapType.PercpuArray,
        MapType.ProgArray,
        MapType.PerfEventArray,
        MapType.CgroupArray,
        MapType.ArrayOfMaps,
        MapType.ReuseportSockArray,
    }
)
_FD_ARRAY_TYPES = frozenset({MapType.ProgArray, MapType.PerfEventArray, MapType.CgroupArray, MapType.ArrayOfMaps})
_HASH_TYPES = frozenset({MapType.Hash, MapType.PercpuHash, MapType.LruHash, MapType.LruPercpuHash, MapType.HashOfMaps})
_LRU_TYPES = frozenset({MapType.LruHash, MapType.LruPercpuHash})
_PERCPU_TYPES = frozenset({MapType.PercpuArray, MapType.PercpuHash, MapType.LruPercpuHash})
_LOCAL_STORAGE_TYPES = frozenset({MapType.SkStorage, MapType.InodeStorage, MapType.TaskStorage, MapType.CgrpStorage})


class _Check:
    """Collects the violations of one spec, each worded ``<Type> needs <field> <rule>, not <value>``."""

    def __init__(self, spec: MapSpec) -> None:
        self.spec = spec
        self.type = str(getattr(spec.type, "name", spec.type))
        self.out: list[str] = []

    def sizes(self, field: str, actual: int, allowed: tuple[int, ...], why: str = "") -> None:
        if actual not in allowed:
            words = " or ".join(str(a) for a in allowed)
            self.out.append(f"{self.type} needs {field} {words}{why}, not {actual}")

    def between(self, field: str, actual: int, low: int, high: int | None = None, why: str = "") -> None:
        if actual < low or (high is not None and actual > high):
            rule = f"at least {low}" if high is None else f"{low} to {high}"
            self.out.append(f"{self.type} needs {field} {rule}{why}, not {actual}")

    def flags(self, allowed: MapFlag, why: str = "") -> None:
        extra = int(self.spec.flags) & ~int(allowed | _GENERIC_FLAGS)
        if extra:
            names = ", ".join(MapFlag.names(extra))
            self.out.append(f"{self.type} does not accept the flag{'s' if ',' in names else ''} {names}{why}")

    def require(self, flag: MapFlag, why: str = "") -> None:
        if not self.spec.flags & flag:
            self.out.append(f"{self.type} needs the {flag.name} flag{why}")

    def refuse(self, text: str) -> None:
        self.out.append(f"{self.type} {text}")


def map_rule_violations(
    spec: MapSpec, *, page_size: int = mmap.PAGESIZE, perf_max_stack: int = PERF_MAX_STACK_DEFAULT
) -> list[str]:
    """Every rule of the kernel's for ``spec``'s map type that ``spec`` breaks; empty if none.

    Pure, so a resource can be refused at plan time, and ``Map.create`` checks it before asking the
    kernel (which would answer a bare EINVAL). Each entry reads like ``Array needs keySize 4, not 8``
    or ``LpmTrie needs the NoPrealloc flag``; callers join them with "; " after their subject.

    The fields a loader fills in (``effective_spec``) count as filled in: a PerfEventArray's key and
    value size 0, a map-in-map's value size 0, a PerfEventArray's or CpuMap's max entries 0 (the
    possible CPUs). A ring buffer's key and value size are checked as given: must be 0 (an object's
    ring buffer gets them zeroed by ``effective_spec`` before ``Map.create`` checks it). Types with
    no rules here (Arena, types newer than this code) are left to the kernel. ``page_size`` and
    ``perf_max_stack`` (the sysctl kernel.perf_event_max_stack) are the node's; the defaults are this
    machine's page size and the sysctl's default.
    """
    c = _Check(spec)
    t = spec.type
    key, value, entries = spec.key_size, spec.value_size, spec.max_entries
    if t is MapType.PerfEventArray:
        key, value = key or 4, value or 4
    if t in MAP_IN_MAP_TYPES:
        value = value or 4
    entries_filled_in = t in (MapType.PerfEventArray, MapType.CpuMap)

    def entries_at_least_one() -> None:
        if not entries_filled_in:
            c.between("maxEntries", entries, 1)

    # map_create (kernel/bpf/syscall.c): bpf_get_file_flag refuses Rdonly with Wronly;
    # bpf_map_flags_access_ok refuses RdonlyProg with WronlyProg.
    if spec.flags & _FD_ACCESS == _FD_ACCESS:
        c.refuse("cannot take both Rdonly and Wronly")
    if spec.flags & (MapFlag.RdonlyProg | MapFlag.WronlyProg) == MapFlag.RdonlyProg | MapFlag.WronlyProg:
        c.refuse("cannot take both RdonlyProg and WronlyProg")

    if t is MapType.Unspec:
        c.refuse("is not a map type (give one, e.g. Hash or Array)")
    elif t in _ARRAY_TYPES:
        # kernel/bpf/arraymap.c array_map_alloc_check (every array below ends in it), after
        # fd_array_map_alloc_check (fd arrays: value 4, a file descriptor) and
        # kernel/bpf/reuseport_array.c reuseport_array_alloc_check (value 4 or 8).
        c.sizes("keySize", key, (4,), " (an array index is a u32)")
        if t in _FD_ARRAY_TYPES:
            c.sizes("valueSize", value, (4,), " (its values are file descriptors)")
        elif t is MapType.ReuseportSockArray:
            c.sizes("valueSize", value, (4, 8), " (a socket fd or cookie)")
        else:
            c.between("valueSize", value, 1)
        entries_at_least_one()
        allowed = MapFlag.NumaNode | _ACCESS | MapFlag.PreserveElems | MapFlag.Mmapable | MapFlag.InnerMap
        if t is not MapType.Array:
            allowed &= ~(MapFlag.Mmapable | MapFlag.InnerMap)
        if t is not MapType.PerfEventArray:
            allowed &= ~MapFlag.PreserveElems
        if t in _FD_ARRAY_TYPES:
            allowed &= ~(MapFlag.RdonlyProg | MapFlag.WronlyProg)
        if t in _PERCPU_TYPES:
            allowed &= ~MapFlag.NumaNode  # a per-CPU array cannot be bound to one NUMA node
        why = " (an array is always preallocated)" if spec.flags & MapFlag.NoPrealloc else ""
        c.flags(allowed, why)
    elif t in _HASH_TYPES:
        # kernel/bpf/hashtab.c htab_map_alloc_check, after fd_htab_map_alloc_check for HashOfMaps.
        c.between("keySize", key, 1)
        if t is MapType.HashOfMaps:
            c.sizes("valueSize", value, (4,), " (its values are file descriptors)")
        else:
            c.between("valueSize", value, 1)
        entries_at_least_one()
        lru = t in _LRU_TYPES
        allowed = MapFlag.NoPrealloc | MapFlag.NoCommonLru | MapFlag.NumaNode | _ACCESS | MapFlag.ZeroSeed
        if not lru:
            allowed &= ~MapFlag.NoCommonLru  # a per-CPU LRU list only exists for LRU maps
        if t in _PERCPU_TYPES or spec.flags & MapFlag.NoCommonLru:
            allowed &= ~MapFlag.NumaNode
        if lru:
            allowed &= ~MapFlag.NoPrealloc  # ENOTSUPP: an LRU map is always preallocated
        c.flags(allowed)
    elif t is MapType.LpmTrie:
        # kernel/bpf/lpm_trie.c trie_alloc (LPM_KEY_SIZE_MIN/MAX, LPM_VAL_SIZE_MIN, LPM_CREATE_FLAG_MASK).
        c.between(
            "keySize",
            key,
            LPM_PREFIXLEN_SIZE + 1,
            LPM_PREFIXLEN_SIZE + LPM_DATA_SIZE_MAX,
            " (a 4-byte prefix length, then 1 to 256 bytes of data)",
        )
        c.between("valueSize", value, 1)
        entries_at_least_one()
        c.require(MapFlag.NoPrealloc, " (a trie allocates its nodes as they are inserted)")
        c.flags(MapFlag.NoPrealloc | MapFlag.NumaNode | _ACCESS)
    elif t in (MapType.Queue, MapType.Stack):
        # kernel/bpf/queue_stack_maps.c queue_stack_map_alloc_check.
        c.sizes("keySize", key, (0,), " (it has no keys)")
        c.between("valueSize", value, 1)
        entries_at_least_one()
        c.flags(MapFlag.NumaNode | _ACCESS)
    elif t is MapType.BloomFilter:
        # kernel/bpf/bloom_filter.c bloom_map_alloc (BLOOM_CREATE_FLAG_MASK).
        c.sizes("keySize", key, (0,), " (it has no keys)")
        c.between("valueSize", value, 1)
        entries_at_least_one()
        c.flags(MapFlag.NumaNode | MapFlag.ZeroSeed | _ACCESS)
    elif t in (MapType.RingBuf, MapType.UserRingBuf):
        # kernel/bpf/ringbuf.c ringbuf_map_alloc (shared by both): maxEntries is the size in bytes.
        c.sizes("keySize", key, (0,), " (it has no keys)")
        c.sizes("valueSize", value, (0,), " (it has no fixed-size values)")
        if entries <= 0 or entries & (entries - 1) or entries % page_size:
            c.refuse(
                f"needs maxEntries (its size in bytes) a power of 2 and a multiple of the page size "
                f"({page_size}), not {entries}"
            )
        c.flags(MapFlag.NumaNode)
    elif t in (MapType.DevMap, MapType.DevMapHash):
        # kernel/bpf/devmap.c dev_map_alloc_check: value 4 (ifindex) or 8 (ifindex + program fd).
        c.sizes("keySize", key, (4,))
        c.sizes("valueSize", value, (4, 8), " (an ifindex, or an ifindex and a program fd)")
        entries_at_least_one()
        c.flags(MapFlag.NumaNode | _FD_ACCESS)
    elif t is MapType.CpuMap:
        # kernel/bpf/cpumap.c cpu_map_alloc: value 4 (queue size) or 8 (queue size + program fd).
        c.sizes("keySize", key, (4,), " (a CPU number)")
        c.sizes("valueSize", value, (4, 8), " (a queue size, or a queue size and a program fd)")
        c.flags(MapFlag.NumaNode)
    elif t is MapType.XskMap:
        # net/xdp/xskmap.c xsk_map_alloc.
        c.sizes("keySize", key, (4,))
        c.sizes("valueSize", value, (4,), " (an AF_XDP socket fd)")
        entries_at_least_one()
        c.flags(MapFlag.NumaNode | _FD_ACCESS)
    elif t in (MapType.SockMap, MapType.SockHash):
        # net/core/sock_map.c sock_map_alloc (key 4) and sock_hash_alloc (any key).
        if t is MapType.SockMap:
            c.sizes("keySize", key, (4,))
        else:
            c.between("keySize", key, 1, MAX_BPF_STACK, " (a program builds the key on its stack)")
        c.sizes("valueSize", value, (4, 8), " (a socket fd or cookie)")
        entries_at_least_one()
        c.flags(MapFlag.NumaNode | _FD_ACCESS)
    elif t is MapType.StackTrace:
        # kernel/bpf/stackmap.c stack_map_alloc: values are arrays of u64 addresses (or of 32-byte
        # struct bpf_stack_build_id with StackBuildId).
        c.sizes("keySize", key, (4,), " (a stack id)")
        unit = 32 if spec.flags & MapFlag.StackBuildId else 8
        if value < unit or value % unit:
            c.refuse(f"needs valueSize a multiple of {unit} (at least {unit}), not {value}")
        elif value // unit > perf_max_stack:
            c.refuse(
                f"needs valueSize at most {unit * perf_max_stack} ({perf_max_stack} frames of {unit} bytes, "
                f"the sysctl kernel.perf_event_max_stack), not {value}"
            )
        entries_at_least_one()
        c.flags(MapFlag.NumaNode | _FD_ACCESS | MapFlag.StackBuildId)
    elif t in (MapType.CgroupStorage, MapType.PercpuCgroupStorage):
        # kernel/bpf/local_storage.c cgroup_storage_map_alloc: the key is a cgroup id (8 bytes) or
        # a struct bpf_cgroup_storage_key (16, padded); max_entries is unused and must be 0.
        c.sizes("keySize", key, (8, 16), " (a cgroup id, or a struct bpf_cgroup_storage_key)")
        # BPF_LOCAL_STORAGE_MAX_VALUE_SIZE: a u16 less the element's header (E2BIG beyond).
        c.between("valueSize", value, 1, 0xFFFF, " (less the kernel's element header)")
        c.sizes("maxEntries", entries, (0,), " (one value per cgroup, created on attach)")
        c.flags(MapFlag.NumaNode | _ACCESS)
    elif t in _LOCAL_STORAGE_TYPES:
        # kernel/bpf/bpf_local_storage.c bpf_local_storage_map_alloc_check.
        c.sizes("keySize", key, (4,), " (an fd of the owner)")
        c.between("valueSize", value, 1)
        c.sizes("maxEntries", entries, (0,), " (one value per owner)")
        c.require(MapFlag.NoPrealloc)
        c.flags(MapFlag.NoPrealloc | MapFlag.Clone)
        # bpf_local_storage_map_check_btf: an int key type and a value type, from BTF, which only
        # an object's BTF map carries (the loader passes it); a resource has none.
        if not (spec.btf_key_type_id and spec.btf_value_type_id and spec.btf is not None):
            c.refuse("needs BTF type information for its key and value (a BTF map of an object)")
    elif t is MapType.StructOps:
        # kernel/bpf/bpf_struct_ops.c bpf_struct_ops_map_alloc_check: a kernel struct's BTF type.
        c.refuse("needs the BTF type of a kernel struct, which bpfshare does not pass")
    if (t in _PERCPU_TYPES or t is MapType.PercpuCgroupStorage) and (value + 7) & ~7 > PERCPU_VALUE_MAX:
        # array_map_alloc_check / htab_map_alloc_check: a value, rounded up to 8 bytes, must fit
        # one per-CPU allocation unit (PCPU_MIN_UNIT_SIZE; E2BIG otherwise).
        c.refuse(f"needs valueSize at most {PERCPU_VALUE_MAX} (one per-CPU allocation unit), not {value}")
    return c.out


class RelocationKind(enum.IntEnum):
    """The pseudo source register an ld_imm64 of a map gets (BPF_PSEUDO_MAP_*)."""

    MAP_FD = 1  # BPF_PSEUDO_MAP_FD, ld_imm64 of a map: imm := map fd
    MAP_VALUE = 2  # BPF_PSEUDO_MAP_VALUE, into a global data map: imm := fd, next imm := offset


@dataclass(frozen=True)
class MapRelocation:
    """An ``ld_imm64`` at instruction ``insn`` (index in the linked program) that refers to a map."""

    insn: int
    map_name: str
    kind: RelocationKind = RelocationKind.MAP_FD
    offset: int = 0  # for MAP_VALUE: byte offset into the map value


class ExternKind(enum.IntEnum):
    """What an instruction referring to a ``__ksym`` extern becomes once the kernel resolves it."""

    KSYM = 1  # ld_imm64 of a __ksym: typeless -> its kallsyms address; typed -> BPF_PSEUDO_BTF_ID
    KFUNC_CALL = 2  # call of a kfunc: src_reg BPF_PSEUDO_KFUNC_CALL, imm = its BTF id


@dataclass(frozen=True)
class ExternRelocation:
    """An instruction (index in the linked program) referring to a ``__ksym`` extern by name.

    Resolved against the running kernel at load time (``bpfshare.load.externs``), as libbpf's
    bpf_object__resolve_externs and bpf_object__relocate_data (RELO_EXTERN_LD64/RELO_EXTERN_CALL) do.
    ``typed``: the object's BTF gives it a type (a VAR of non-void type, or a FUNC), so it is looked
    up in the kernel's BTF rather than in /proc/kallsyms. ``weak``: resolves to zero when missing.
    """

    insn: int
    name: str
    kind: ExternKind
    typed: bool = False
    is_func: bool = False
    weak: bool = False
    proto: str = ""  # a typed extern's type, to check against the kernel's (object.externs.type_shape)


class KconfigType(enum.IntEnum):
    """libbpf's enum kcfg_type: how a Kconfig value is stored (find_kcfg_type)."""

    BOOL = 1
    CHAR = 2
    TRISTATE = 3  # enum libbpf_tristate: n = 0, y = 1, m = 2
    INT = 4
    CHAR_ARRAY = 5


@dataclass(frozen=True)
class KconfigExtern:
    """A ``__kconfig`` extern: where its value goes in the ``.kconfig`` map and how it is encoded."""

    name: str
    offset: int
    size: int
    type: KconfigType
    signed: bool = False
    weak: bool = False


KCONFIG_MAP = ".kconfig"


class CoreKind(enum.IntEnum):
    """enum bpf_core_relo_kind (include/uapi/linux/bpf.h)."""

    FIELD_BYTE_OFFSET = 0
    FIELD_BYTE_SIZE = 1
    FIELD_EXISTS = 2
    FIELD_SIGNED = 3
    FIELD_LSHIFT_U64 = 4
    FIELD_RSHIFT_U64 = 5
    TYPE_ID_LOCAL = 6
    TYPE_ID_TARGET = 7
    TYPE_EXISTS = 8
    TYPE_SIZE = 9
    ENUMVAL_EXISTS = 10
    ENUMVAL_VALUE = 11
    TYPE_MATCHES = 12


@dataclass(frozen=True)
class CoreRelocation:
    """A CO-RE relocation (``.BTF.ext`` core_relo) of instruction ``insn`` (index in the linked
    program): ``type_id`` (in the object's BTF) and ``access`` ("0:1:2") name what the instruction
    reads; the loader resolves it against the kernel's BTF (libbpf bpf_core_calc_relo_insn)."""

    insn: int
    kind: CoreKind
    type_id: int
    access: str


@dataclass(frozen=True)
class ProgramSpec:
    name: str  # function symbol
    section: str
    type: ProgType
    expected_attach_type: AttachType | None
    instructions: bytes  # linked: the program followed by every .text subprogram it calls
    license: str = "GPL"
    kernel_version: int = 0
    relocations: tuple[MapRelocation, ...] = ()
    externs: tuple[ExternRelocation, ...] = ()
    # BTF func_info (8-byte records: insn_off, type_id) and line_info (16-byte records: insn_off,
    # file_name_off, line_off, line_col), rebased to linked instruction indexes, and the object's
    # BTF sanitized for the kernel. Set only for programs the kernel refuses without them (those
    # taking a function's address: callbacks); empty otherwise.
    func_info: bytes = b""
    line_info: bytes = b""
    btf: bytes | None = field(default=None, compare=False, repr=False)
    core_relocations: tuple[CoreRelocation, ...] = ()
    # The object's BTF, which core_relocations' type IDs refer to (None without CO-RE relocations).
    local_btf: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def map_names(self) -> list[str]:
        """Object maps the program refers to, in first-use order."""
        seen: dict[str, None] = {}
        for rel in self.relocations:
            seen.setdefault(rel.map_name, None)
        return list(seen)

    def instructions_with_fds(self, fds: dict[str, int]) -> bytes:
        """Return the instructions with every map reference bound to a file descriptor.

        Pure: the loader passes the fds of the maps it created or reused.
        """
        buf = bytearray(self.instructions)
        for rel in self.relocations:
            off = rel.insn * INSN_SIZE
            fd = fds[rel.map_name]
            regs = buf[off + 1]
            buf[off + 1] = (regs & 0x0F) | (int(rel.kind) << 4)  # src_reg := pseudo kind
            struct.pack_into("<i", buf, off + 4, fd)
            if rel.kind is RelocationKind.MAP_VALUE:
                struct.pack_into("<i", buf, off + INSN_SIZE + 4, rel.offset)
        return bytes(buf)

    def describe(self) -> dict[str, object]:
        """The JSON shape of ``bpfshare inspect``'s programs."""
        return {
            "name": self.name,
            "section": self.section,
            "type": self.type.name,
            "attachType": self.expected_attach_type.name if self.expected_attach_type is not None else None,
            "instructions": len(self.instructions) // INSN_SIZE,
            "maps": self.map_names,
        }


@dataclass(frozen=True)
class RefusedProgram:
    """A program of the object that cannot be loaded, and why (an ``UnsupportedError``'s or
    ``ObjectError``'s message). ``spec`` is the linked program when only something it needs (a map,
    a program in a prog array's initial slots) is refused, so inspect can still show it."""

    name: str
    section: str
    type: ProgType
    expected_attach_type: AttachType | None
    reason: str
    spec: ProgramSpec | None = None
    # The reason is a malformation (ObjectError), not a feature bpfshare lacks (UnsupportedError).
    malformed: bool = False

    def describe(self) -> dict[str, object]:
        if self.spec is not None:
            out = self.spec.describe()
        else:
            out = {
                "name": self.name,
                "section": self.section,
                "type": self.type.name,
                "attachType": self.expected_attach_type.name if self.expected_attach_type is not None else None,
                "instructions": None,
                "maps": [],
            }
        out.update(loadable=False, reason=self.reason)
        return out


@dataclass(frozen=True)
class RefusedMap:
    """A map definition that cannot be loaded, and why; a program that uses it is refused too."""

    name: str
    section: str
    reason: str
    malformed: bool = False  # as RefusedProgram.malformed

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "section": self.section, "loadable": False, "reason": self.reason}


@dataclass(frozen=True)
class CollectionSpec:
    """What an object declares. ``programs`` and ``maps`` hold what can be loaded; what cannot is in
    ``refused_programs`` / ``refused_maps`` with the reason, so that one program's unsupported
    feature refuses that program (and whatever needs it), not the object."""

    maps: dict[str, MapSpec] = field(default_factory=dict)
    programs: dict[str, ProgramSpec] = field(default_factory=dict)
    license: str = ""
    kernel_version: int = 0
    refused_programs: dict[str, RefusedProgram] = field(default_factory=dict)
    refused_maps: dict[str, RefusedMap] = field(default_factory=dict)
    # Every program's name, loadable or not, in the object's order (for inspect).
    order: tuple[str, ...] = ()
    # The ``__kconfig`` externs, laid out in the ``.kconfig`` map (``KCONFIG_MAP``), whose contents
    # the loader fills in from the running kernel's configuration.
    kconfig: tuple[KconfigExtern, ...] = ()

    def program(self, name: str) -> ProgramSpec:
        """Find a program by function name, or by section name when that is unique.

        Raises KeyError for a name the object lacks, ``UnsupportedError`` (naming the program and
        the reason) for a program the object has but that cannot be loaded.
        """
        if name in self.programs:
            return self.programs[name]
        refused = self.refused_programs.get(name)
        if refused is None:
            by_section: list[ProgramSpec | RefusedProgram] = [
                *(p for p in self.programs.values() if p.section == name),
                *(p for p in self.refused_programs.values() if p.section == name),
            ]
            if len(by_section) > 1:
                names = ", ".join(p.name for p in by_section)
                raise KeyError(f"section {name!r} holds several programs ({names}); name one")
            if not by_section:
                known = ", ".join(sorted({*self.programs, *self.refused_programs})) or "none"
                raise KeyError(f"no program {name!r} in the object (programs: {known})")
            found = by_section[0]
            if isinstance(found, ProgramSpec):
                return found
            refused = found
        error = ObjectError if refused.malformed else UnsupportedError
        raise error(f"program {refused.name!r} cannot be loaded: {refused.reason}")

    def load_closure(self, name: str) -> tuple[list[str], list[str]]:
        """``(programs, maps)`` a load of program ``name`` brings up, in load order: the program and
        the programs named by the initial slots of the prog arrays it uses (transitively, as their
        tail calls may use further prog arrays), and every map those use plus the inner maps named
        by their map-in-maps' initial slots. Pure; ``name`` must be loadable."""
        programs: dict[str, None] = {}
        maps: dict[str, None] = {}
        queue = [self.program(name).name]
        while queue:
            prog = self.programs[queue.pop(0)]
            if prog.name in programs:
                continue
            programs[prog.name] = None
            for map_name in prog.map_names:
                spec = self.maps[map_name]
                maps.setdefault(map_name, None)
                for inner in spec.slot_maps:
                    maps.setdefault(inner, None)
                queue.extend(p for p in spec.slot_programs if p not in programs)
        return list(programs), list(maps)

    def describe(self) -> dict[str, object]:
        programs: list[dict[str, object]] = []
        for name in self.order or [*self.programs, *self.refused_programs]:
            if name in self.programs:
                programs.append({**self.programs[name].describe(), "loadable": True, "reason": None})
            elif name in self.refused_programs:
                programs.append(self.refused_programs[name].describe())
        return {
            "license": self.license,
            "programs": programs,
            "maps": [*(m.describe() for m in self.maps.values()), *(m.describe() for m in self.refused_maps.values())],
        }
