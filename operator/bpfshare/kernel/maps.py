"""``Map``: a live kernel map (an owned fd), apart from the ``MapSpec`` that may have made it.

Keys and values are raw bytes in the kernel's layout; interpreting them (endianness, structs) is
the caller's business. Per-CPU maps are the one layout quirk handled here: the kernel reads and
writes one value per *possible* CPU, each padded to 8 bytes.
"""

from __future__ import annotations

import ctypes
import errno
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from bpfshare.errors import KernelError, MapRuleError
from bpfshare.kernel.abi import BPF_ANY, BPF_F_RDONLY, Cmd, MapInfoStruct
from bpfshare.kernel.cpus import possible_cpus
from bpfshare.kernel.objects import KernelObject, ObjectKind, obj_get, obj_info
from bpfshare.kernel.syscall import FD, bpf, fdinfo, new_attr
from bpfshare.spec import (
    PERF_MAX_STACK_DEFAULT,
    DefinitionStyle,
    MapSpec,
    effective_spec,
    kernel_object_name,
    map_rule_violations,
)
from bpfshare.types import MAP_IN_MAP_TYPES, MapFlag, MapType, ProgType, member_or_number

_log = logging.getLogger(__name__)

# libbpf's bpf_object__create_map creates these types without BTF (the kernel's map_check_no_btf,
# or values that are fds/ids rather than the declared type).
_NO_BTF_TYPES = frozenset(
    {
        MapType.PerfEventArray,
        MapType.CgroupArray,
        MapType.StackTrace,
        MapType.ArrayOfMaps,
        MapType.HashOfMaps,
        MapType.DevMap,
        MapType.DevMapHash,
        MapType.CpuMap,
        MapType.XskMap,
        MapType.SockMap,
        MapType.SockHash,
        MapType.Queue,
        MapType.Stack,
        MapType.Arena,
    }
)


def takes_btf(spec: MapSpec) -> bool:
    """Whether ``spec``'s map is created with BTF when its object's BTF is at hand: it has type
    IDs, and its type is not one libbpf creates without (bpf_object__create_map)."""
    return bool(spec.btf_key_type_id or spec.btf_value_type_id) and spec.type not in _NO_BTF_TYPES


PERCPU_TYPES = frozenset({MapType.PercpuHash, MapType.PercpuArray, MapType.LruPercpuHash, MapType.PercpuCgroupStorage})


@dataclass(frozen=True)
class MapInfo:
    id: int
    type: MapType  # or the bare number of a type newer than this code (see member_or_number)
    key_size: int
    value_size: int
    max_entries: int
    flags: MapFlag
    name: str
    btf_id: int = 0
    map_extra: int = 0
    ifindex: int = 0
    # ProgArray only: the program type the kernel bound it to at first use (None: not bound yet).
    owner_prog_type: ProgType | None = None

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "type": getattr(self.type, "name", str(self.type)),
            "keySize": self.key_size,
            "valueSize": self.value_size,
            "maxEntries": self.max_entries,
            "flags": MapFlag.names(int(self.flags)),
        }


def value_buffer_size(map_type: int, value_size: int) -> int:
    """Bytes the kernel copies for one value: per-CPU maps hold round_up(size, 8) per possible CPU."""
    if map_type in PERCPU_TYPES:
        return ((value_size + 7) & ~7) * possible_cpus()
    return value_size


class Map(KernelObject[MapInfo]):
    """An open map. Close it (or use ``with``) when done; pins keep the map alive without us."""

    kind = ObjectKind.MAP

    def __init__(self, fd: FD) -> None:
        super().__init__(fd)
        self._info: MapInfo | None = None

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def create(cls, spec: MapSpec, name: str | None = None, *, btf_fd: int | None = None) -> Self:
        """Create a map from ``spec``; global data maps get their initial contents (and .rodata
        is frozen, so neither user space nor a program can change it afterwards).

        The kernel's rules for the map's type are checked first (``map_rule_violations``, on the
        spec with its magic fields filled in, as it is sent): MapRuleError names every broken one,
        where the kernel would answer a bare EINVAL.

        ``btf_fd``: the object's BTF (``spec.btf`` loaded), passed with the spec's key and value
        type IDs as libbpf's bpf_object__create_map does, for the types that take BTF. If the
        kernel refuses the map with its BTF, it is created without, with a warning (libbpf:
        "Retrying without BTF"), unless its value holds fields only BTF describes (``btf_fields``:
        a timer, a spin lock), which would not work without it: that is an error naming them."""
        spec = effective_spec(spec, possible_cpus())
        violations = map_rule_violations(spec, perf_max_stack=_perf_max_stack(spec))
        if violations:
            raise MapRuleError(f"creating map {spec.name!r} ({_shape(spec)})", violations)
        inner: Self | None = None
        if spec.type in MAP_IN_MAP_TYPES:
            if spec.inner is None:
                raise KernelError(f"creating map {spec.name!r}: a {spec.type.name} needs an inner map spec")
            # The kernel only reads the template's shape; it can go right after creation.
            inner = cls.create(spec.inner, name=f"{spec.name}_inner", btf_fd=btf_fd)
        with_btf = btf_fd is not None and takes_btf(spec)
        attr = new_attr()
        mc = attr.map_create
        mc.map_type = int(spec.type)
        mc.key_size = spec.key_size
        mc.value_size = spec.value_size
        mc.max_entries = spec.max_entries
        mc.map_flags = int(spec.flags)
        mc.map_name = kernel_object_name(name if name is not None else spec.name).encode()  # ASCII only
        if inner is not None:
            mc.inner_map_fd = inner.fd
        if with_btf:
            assert btf_fd is not None
            mc.btf_fd = btf_fd
            mc.btf_key_type_id = spec.btf_key_type_id
            mc.btf_value_type_id = spec.btf_value_type_id
        try:
            try:
                fd = FD(bpf(Cmd.MAP_CREATE, attr))
            except KernelError as exc:
                if not with_btf:
                    raise
                if spec.btf_fields:
                    fields = ", ".join(spec.btf_fields)
                    raise KernelError(
                        f"the kernel refused its BTF (key type #{spec.btf_key_type_id}, value type "
                        f"#{spec.btf_value_type_id}), which its value needs ({fields}): {exc}",
                        exc.errno,
                    ) from None
                # libbpf's bpf_object__create_map: "Retrying without BTF".
                _log.warning("map %r: the kernel refused its BTF (%s); creating it without", spec.name, exc)
                mc.btf_fd = mc.btf_key_type_id = mc.btf_value_type_id = 0
                fd = FD(bpf(Cmd.MAP_CREATE, attr))
        except KernelError as exc:
            raise KernelError(
                f"creating map {spec.name!r} ({_shape(spec)}): {exc}{_create_hint(spec, exc)}", exc.errno
            ) from None
        finally:
            if inner is not None:
                inner.close()
        live = cls(fd)
        try:
            if spec.contents is not None:
                live._write_initial(spec)
        except BaseException:
            live.close()
            raise
        return live

    def _write_initial(self, spec: MapSpec) -> None:
        assert spec.contents is not None
        if len(spec.contents) > spec.value_size:
            raise KernelError(
                f"map {spec.name!r}: initial contents ({len(spec.contents)} bytes) exceed the value size "
                f"({spec.value_size})"
            )
        self.update(b"\0" * spec.key_size, spec.contents.ljust(spec.value_size, b"\0"))
        if _is_rodata(spec):
            self.freeze()

    @classmethod
    def from_pin(cls, path: Path | str, *, readonly: bool = False) -> Self:
        """Open the map pinned at ``path``; ``readonly``: through an fd that cannot change it."""
        return cls(obj_get(path, cls.kind, BPF_F_RDONLY if readonly else 0))

    # -- handle ----------------------------------------------------------------------------

    def _summary(self, info: MapInfo) -> str:
        return f"id={info.id}, name={info.name!r}, type={getattr(info.type, 'name', info.type)}"

    def info(self) -> MapInfo:
        """What the kernel says about the map (cached: none of these fields ever change)."""
        if self._info is None:
            raw = obj_info(self.fd, MapInfoStruct())
            owner: ProgType | None = None
            if raw.type == MapType.ProgArray:
                owner_text = fdinfo(self.fd).get("owner_prog_type")
                owner = member_or_number(ProgType, int(owner_text)) if owner_text else None
            self._info = MapInfo(
                id=raw.id,
                type=member_or_number(MapType, raw.type),
                key_size=raw.key_size,
                value_size=raw.value_size,
                max_entries=raw.max_entries,
                flags=MapFlag(raw.map_flags),
                name=raw.name.decode(errors="replace"),
                btf_id=raw.btf_id,
                map_extra=raw.map_extra,
                ifindex=raw.ifindex,
                owner_prog_type=owner,
            )
        return self._info

    def freeze(self) -> None:
        """Make the map read-only for user space from now on (BPF_MAP_FREEZE; irreversible)."""
        attr = new_attr()
        attr.map_elem.map_fd = self.fd
        bpf(Cmd.MAP_FREEZE, attr)

    # -- elements --------------------------------------------------------------------------

    @property
    def value_buffer_size(self) -> int:
        info = self.info()
        return value_buffer_size(info.type, info.value_size)

    def _key(self, key: bytes) -> ctypes.Array[ctypes.c_char]:
        size = self.info().key_size
        if len(key) != size:
            raise ValueError(f"map {self.info().name!r}: key must be {size} bytes, not {len(key)}")
        return ctypes.create_string_buffer(bytes(key), max(size, 1))

    def lookup(self, key: bytes) -> bytes | None:
        """The value at ``key`` (per-CPU maps: all CPUs' values, see ``lookup_percpu``), or None."""
        kbuf = self._key(key)
        size = self.value_buffer_size
        vbuf = ctypes.create_string_buffer(max(size, 1))
        attr = new_attr()
        attr.map_elem.map_fd = self.fd
        attr.map_elem.key = ctypes.addressof(kbuf)
        attr.map_elem.value = ctypes.addressof(vbuf)
        try:
            bpf(Cmd.MAP_LOOKUP_ELEM, attr)
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise self._error("lookup", exc) from None
        return vbuf.raw[:size]

    def lookup_percpu(self, key: bytes) -> list[bytes] | None:
        """A per-CPU map's value at ``key`` split by CPU (each value_size bytes), or None."""
        raw = self.lookup(key)
        if raw is None:
            return None
        info = self.info()
        stride = (info.value_size + 7) & ~7
        return [raw[i : i + info.value_size] for i in range(0, len(raw), stride)]

    def update(self, key: bytes, value: bytes | Sequence[bytes], flags: int = BPF_ANY) -> None:
        """Set ``key`` to ``value``. Per-CPU maps take either the full buffer or one value per CPU."""
        kbuf = self._key(key)
        data = self._value(value)
        vbuf = ctypes.create_string_buffer(data, max(len(data), 1))
        attr = new_attr()
        attr.map_elem.map_fd = self.fd
        attr.map_elem.key = ctypes.addressof(kbuf)
        attr.map_elem.value = ctypes.addressof(vbuf)
        attr.map_elem.flags = flags
        try:
            bpf(Cmd.MAP_UPDATE_ELEM, attr)
        except KernelError as exc:
            raise self._error("update", exc) from None

    def _value(self, value: bytes | Sequence[bytes]) -> bytes:
        info = self.info()
        if info.type in PERCPU_TYPES and not isinstance(value, (bytes, bytearray, memoryview)):
            values = list(value)
            if len(values) != possible_cpus():
                raise ValueError(f"map {info.name!r}: need one value per possible CPU ({possible_cpus()})")
            stride = (info.value_size + 7) & ~7
            data = b"".join(self._check_len(bytes(v), info.value_size).ljust(stride, b"\0") for v in values)
            return data
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"map {info.name!r}: one value per CPU is for per-CPU maps; give one bytes value")
        return self._check_len(bytes(value), self.value_buffer_size)

    def _check_len(self, data: bytes, size: int) -> bytes:
        if len(data) != size:
            raise ValueError(f"map {self.info().name!r}: value must be {size} bytes, not {len(data)}")
        return data

    def delete(self, key: bytes) -> bool:
        """Delete ``key``; False if it was not there."""
        kbuf = self._key(key)
        attr = new_attr()
        attr.map_elem.map_fd = self.fd
        attr.map_elem.key = ctypes.addressof(kbuf)
        try:
            bpf(Cmd.MAP_DELETE_ELEM, attr)
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise self._error("delete", exc) from None
        return True

    def keys(self) -> Iterator[bytes]:
        """Every key (BPF_MAP_GET_NEXT_KEY). For a hash map changed concurrently, the kernel may
        restart from the first key when the current one was deleted: keys can repeat."""
        size = self.info().key_size
        cur: ctypes.Array[ctypes.c_char] | None = None
        nxt = ctypes.create_string_buffer(max(size, 1))
        while True:
            attr = new_attr()
            attr.map_elem.map_fd = self.fd
            attr.map_elem.key = ctypes.addressof(cur) if cur is not None else 0
            attr.map_elem.value = ctypes.addressof(nxt)  # next_key
            try:
                bpf(Cmd.MAP_GET_NEXT_KEY, attr)
            except KernelError as exc:
                if exc.errno == errno.ENOENT:
                    return
                raise self._error("iterate", exc) from None
            key = nxt.raw[:size]
            yield key
            cur = ctypes.create_string_buffer(key, max(size, 1))

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs; a key deleted between the two calls is skipped."""
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def _error(self, what: str, exc: KernelError) -> KernelError:
        return KernelError(f"map {self.info().name!r} (id {self.info().id}): {what}: {exc}", exc.errno)


def _shape(spec: MapSpec) -> str:
    text = f"{spec.type.name}, key {spec.key_size}, value {spec.value_size}, max entries {spec.max_entries}"
    if spec.flags:
        text += ", flags " + "|".join(MapFlag.names(int(spec.flags)))
    return text


PERF_MAX_STACK = Path("/proc/sys/kernel/perf_event_max_stack")


def _perf_max_stack(spec: MapSpec) -> int:
    """The node's sysctl kernel.perf_event_max_stack, which bounds a StackTrace map's values."""
    if spec.type is not MapType.StackTrace:
        return PERF_MAX_STACK_DEFAULT
    try:
        return int(PERF_MAX_STACK.read_text())
    except (OSError, ValueError):
        return PERF_MAX_STACK_DEFAULT


def _create_hint(spec: MapSpec, exc: KernelError) -> str:
    """What an errno the rules did not foresee most likely means (they catch every EINVAL they know)."""
    if exc.errno == errno.EPERM:
        return " (needs CAP_BPF or root; on kernels before 5.11 also a high enough RLIMIT_MEMLOCK)"
    if exc.errno == errno.E2BIG:
        return " (a size or the number of entries is over the kernel's limit for this map type)"
    if exc.errno == errno.ENOMEM:
        return " (the kernel could not allocate the map: too many entries, or too little memory)"
    if exc.errno == errno.EINVAL:
        return f" (the kernel refuses these attributes for {getattr(spec.type, 'name', spec.type)})"
    return ""


def _is_rodata(spec: MapSpec) -> bool:
    if spec.style is not DefinitionStyle.GLOBAL_DATA:
        return False
    return (spec.section or spec.name).startswith(".rodata") or bool(spec.flags & MapFlag.RdonlyProg)
