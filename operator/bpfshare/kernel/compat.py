"""May an existing map stand in for a MapSpec? Every differing field, named at once.

Modelled on cilium/ebpf's ``MapSpec.Compatible`` and its message format, ``Field: <existing>
changed to <declared>``: the existing (pinned or live) map is the reference, the spec is what the
object or resource now declares. Unlike a first-mismatch check, all differences are reported
together, so a user fixes a definition in one round trip.

Before comparing, the spec is normalized the way the kernel (and libbpf, and cilium/ebpf) would
create it (its "magic fields": ``bpfshare.spec.effective_spec``), and flags the kernel sets or
drops on its own are ignored:

- BPF_F_RDONLY / BPF_F_WRONLY restrict the *fd* used at creation, not the map; the kernel does not
  keep them, so they never show in bpf_map_info. BPF_F_TOKEN_FD and BPF_F_VTYPE_BTF_OBJ_FD only say
  how to read other attr fields. All four are ignored on both sides.
- DevMap / DevMapHash: the kernel adds BPF_F_RDONLY_PROG on its own (since "devmap: Allow map
  lookups from eBPF", 5.x), so that bit is ignored for them.
- ProgArray: at the first program that uses it the kernel fixes an owner program type (and
  whether it is JITed); a program of another type is then refused at load. bpf_map_info does not
  carry it, but /proc/self/fdinfo does (``owner_prog_type``), and ``MapInfo.owner_prog_type`` holds
  it when known. Pass ``prog_type`` to have it compared too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bpfshare.errors import IncompatibleMapError
from bpfshare.kernel.cpus import possible_cpus
from bpfshare.spec import MapSpec, effective_spec
from bpfshare.types import MapFlag, MapType, ProgType

if TYPE_CHECKING:  # an annotation only: comparing needs no syscall module
    from bpfshare.kernel.maps import MapInfo

# Flags that describe the creating call, not the map: never reported by the kernel.
NON_PERSISTENT_FLAGS = MapFlag.Rdonly | MapFlag.Wronly | MapFlag.TokenFd | MapFlag.VtypeBtfObjFd

DEVMAPS = (MapType.DevMap, MapType.DevMapHash)


def _type_name(value: int) -> str:
    try:
        return MapType(value).name
    except ValueError:
        return f"type {value}"


def _prog_type_name(value: int) -> str:
    try:
        return ProgType(value).name
    except ValueError:
        return f"type {value}"


def _flags_text(value: int) -> str:
    names = MapFlag.names(value)
    return "|".join(names) if names else "0"


def map_differences(spec: MapSpec, info: MapInfo, *, prog_type: ProgType | None = None) -> list[str]:
    """Every field in which the live map ``info`` differs from ``spec``; empty if compatible.

    Each entry reads ``Field: <existing> changed to <declared>``.
    """
    want = effective_spec(spec, possible_cpus())
    diffs: list[str] = []
    if int(info.type) != int(want.type):
        diffs.append(f"Type: {_type_name(info.type)} changed to {_type_name(want.type)}")
    if info.key_size != want.key_size:
        diffs.append(f"KeySize: {info.key_size} changed to {want.key_size}")
    if info.value_size != want.value_size:
        diffs.append(f"ValueSize: {info.value_size} changed to {want.value_size}")
    if info.max_entries != want.max_entries:
        diffs.append(f"MaxEntries: {info.max_entries} changed to {want.max_entries}")

    have_flags = int(info.flags) & ~int(NON_PERSISTENT_FLAGS)
    want_flags = int(want.flags) & ~int(NON_PERSISTENT_FLAGS)
    if want.type in DEVMAPS:
        have_flags &= ~int(MapFlag.RdonlyProg)
        want_flags &= ~int(MapFlag.RdonlyProg)
    if have_flags != want_flags:
        diffs.append(f"Flags: {_flags_text(have_flags)} changed to {_flags_text(want_flags)}")

    owner = info.owner_prog_type
    if prog_type is not None and owner is not None and int(owner) != int(prog_type):
        diffs.append(
            f"OwnerProgType: {_prog_type_name(owner)} changed to {_prog_type_name(prog_type)} "
            "(a program array accepts only the program type that first used it)"
        )
    return diffs


def check_compatible(spec: MapSpec, info: MapInfo, subject: str, *, prog_type: ProgType | None = None) -> None:
    """Raise IncompatibleMapError naming every difference; the existing map is never touched."""
    diffs = map_differences(spec, info, prog_type=prog_type)
    if diffs:
        raise IncompatibleMapError(subject, diffs)
