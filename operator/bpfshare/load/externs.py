"""``__ksym`` externs and kfunc calls resolved against the running kernel, at load time.

libbpf's bpf_object__resolve_externs / bpf_object__resolve_ksyms_btf_id, then the RELO_EXTERN_LD64
and RELO_EXTERN_CALL cases of bpf_object__relocate_data:
- a typeless ``__ksym`` (``extern const void x __ksym``): ld_imm64 of its address in /proc/kallsyms;
- a typed one (a VAR in the kernel's BTF, or a FUNC whose address is taken, as bpf_ksym_exists
  does): ld_imm64 with src_reg BPF_PSEUDO_BTF_ID, imm = the kernel BTF id, the second imm the
  module BTF's fd (0 for vmlinux);
- a kfunc call: src_reg BPF_PSEUDO_KFUNC_CALL, imm = the FUNC's BTF id, off = the index of its
  module's BTF fd in fd_array (0 for vmlinux);
- a ``__weak`` extern that does not resolve: address 0 (a typed one becomes a plain ld_imm64 of 0),
  and a call to it is poisoned as libbpf's poison_kfunc_call does: a helper call with an id no
  helper has (POISON_CALL_KFUNC_BASE + the extern's index), which the verifier names only if it is
  reachable.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from bpfshare.errors import BpfshareError
from bpfshare.kernel.btf_objects import open_btf_by_name as module_btf_fd
from bpfshare.kernel.syscall import FD
from bpfshare.load.kernel_symbols import find_ksym_btf_id, kallsyms, kernel_type_shape
from bpfshare.object.btf import Kind
from bpfshare.object.insn import CALL, IMM, PSEUDO_KFUNC_CALL
from bpfshare.object.kernel_btf import KernelType
from bpfshare.spec import INSN_SIZE, ExternKind, ExternRelocation, ProgramSpec

BPF_PSEUDO_BTF_ID = 3  # src_reg of an ld_imm64 of a kernel BTF VAR or FUNC
POISON_CALL_KFUNC_BASE = 2002000000
_OFF = struct.Struct("<h")


class ExternError(BpfshareError):
    pass


@dataclass
class Resolved:
    """The program's instructions with every extern filled in, and the fds the load needs."""

    instructions: bytes
    fd_array: list[int] = field(default_factory=list)
    fds: list[FD] = field(default_factory=list)  # module BTF fds: close after the load

    def close(self) -> None:
        for fd in self.fds:
            fd.close()


def _set(buf: bytearray, index: int, *, src: int | None = None, imm: int | None = None, off: int | None = None) -> None:
    base = index * INSN_SIZE
    if src is not None:
        buf[base + 1] = (buf[base + 1] & 0x0F) | (src << 4)
    if off is not None:
        _OFF.pack_into(buf, base + 2, off)
    if imm is not None:
        IMM.pack_into(buf, base + 4, imm - (1 << 32) if imm >= 1 << 31 else imm)


def resolve_externs(program: ProgramSpec, instructions: bytes) -> Resolved:
    """Fill in ``program.externs`` in ``instructions`` (already bound to map fds)."""
    out = Resolved(bytes(instructions))
    if not program.externs:
        return out
    buf = bytearray(instructions)
    names = [e.name for e in program.externs]
    index = {name: n for n, name in enumerate(dict.fromkeys(names))}  # the poison's extern index
    typeless = {e.name for e in program.externs if e.kind is ExternKind.KSYM and not e.typed}
    addresses = kallsyms(typeless) if typeless else {}
    module_slots: dict[str, int] = {}  # module name -> index of its BTF fd in fd_array
    try:
        for ext in program.externs:
            if ext.kind is ExternKind.KSYM and not ext.typed:
                addr = addresses.get(ext.name)
                if addr is None and not ext.weak:
                    raise ExternError(f"ksym {ext.name}: not in /proc/kallsyms")
                addr = addr or 0
                _set(buf, ext.insn, imm=addr & 0xFFFFFFFF)
                _set(buf, ext.insn + 1, imm=addr >> 32)
                continue
            found = find_ksym_btf_id(ext.name, Kind.FUNC if ext.is_func else Kind.VAR)
            if found is not None and ext.proto:
                # The declared type must be compatible with the kernel's (libbpf's
                # bpf_core_types_are_compat, in bpf_object__resolve_ksym_func_btf_id and
                # _var_btf_id): a weak kfunc that is not is left unresolved; a variable is refused.
                theirs = kernel_type_shape(found)
                if theirs != ext.proto:
                    what = "kfunc" if ext.is_func else "ksym"
                    if not (ext.weak and ext.is_func):
                        raise ExternError(
                            f"{what} {ext.name}: declared as {ext.proto}, incompatible with the kernel's {theirs}"
                        )
                    found = None
            if found is None:
                if not ext.weak:
                    what = "kfunc" if ext.is_func else "ksym"
                    raise ExternError(f"{what} {ext.name}: not in the kernel's BTF")
                if ext.kind is ExternKind.KFUNC_CALL:
                    _poison(buf, ext.insn, index[ext.name])
                continue  # a weak typed ksym: ld_imm64 of 0, as the linker left it
            slot, fd = _module_slot(found, module_slots, out)
            if ext.kind is ExternKind.KFUNC_CALL:
                _set(buf, ext.insn, src=PSEUDO_KFUNC_CALL, imm=found.id, off=slot)
            else:
                _set(buf, ext.insn, src=BPF_PSEUDO_BTF_ID, imm=found.id)
                _set(buf, ext.insn + 1, imm=fd)
    except BaseException:
        out.close()
        raise
    out.instructions = bytes(buf)
    return out


def _module_slot(found: KernelType, slots: dict[str, int], out: Resolved) -> tuple[int, int]:
    """(index in fd_array, fd) of the BTF that holds ``found``: (0, 0) for vmlinux. As libbpf,
    index 0 of fd_array stays unused (an off of 0 means vmlinux)."""
    if not found.module:
        return 0, 0
    if found.module not in slots:
        fd = module_btf_fd(found.module)
        out.fds.append(fd)
        if not out.fd_array:
            out.fd_array.append(0)
        slots[found.module] = len(out.fd_array)
        out.fd_array.append(int(fd))
    slot = slots[found.module]
    return slot, out.fd_array[slot]


def _poison(buf: bytearray, index: int, ext_index: int) -> None:
    """libbpf's poison_kfunc_call: a helper call (src, dst and off 0) of an id no helper has."""
    base = index * INSN_SIZE
    buf[base] = CALL
    buf[base + 1] = 0
    _OFF.pack_into(buf, base + 2, 0)
    IMM.pack_into(buf, base + 4, POISON_CALL_KFUNC_BASE + ext_index)


__all__ = ["ExternError", "ExternRelocation", "Resolved", "resolve_externs"]
