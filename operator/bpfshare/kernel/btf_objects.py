"""The kernel's BTF objects (vmlinux's and each module's), found by name for fd_array.

A kfunc or a typed ksym defined in a module is named to the verifier by (BTF object fd, type ID):
the fd goes in the program's fd_array. libbpf (load_module_btfs) walks BPF_BTF_GET_NEXT_ID, opens
each object and reads its name with BPF_OBJ_GET_INFO_BY_FD; so does this, once per module and
process: the ID found is remembered and checked again (name, kernel BTF) on each later open.
"""

from __future__ import annotations

import ctypes
import errno

from bpfshare.errors import BpfshareError, KernelError
from bpfshare.kernel.abi import BtfInfoStruct, Cmd
from bpfshare.kernel.objects import obj_info
from bpfshare.kernel.syscall import FD, bpf, new_attr

# Module name -> ID of its BTF object. Every BTF object on the system (each loaded program's and
# map's too) is walked to find a module's, so the ID is kept: it stays valid while the module is
# loaded, and a module reloaded gets a new one (IDs are allocated cyclically, and the name is
# checked anyway), in which case the walk is done again.
_IDS: dict[str, int] = {}


def _next_id(start: int) -> int | None:
    attr = new_attr()
    attr.id.start_id = start
    try:
        bpf(Cmd.BTF_GET_NEXT_ID, attr)
    except KernelError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return int(attr.id.next_id)


def _info(fd: FD) -> tuple[str, bool]:
    """(name, is kernel BTF) of a BTF object."""
    name = ctypes.create_string_buffer(64)
    info = BtfInfoStruct()
    info.name = ctypes.addressof(name)
    info.name_len = ctypes.sizeof(name)
    obj_info(int(fd), info)
    return name.value.decode(errors="replace"), bool(info.kernel_btf)


def _open_if(btf_id: int, module: str) -> FD | None:
    """An fd of BTF object ``btf_id`` if it is the kernel BTF named ``module``; None if it is not
    (or was freed meanwhile)."""
    attr = new_attr()
    attr.id.start_id = btf_id
    try:
        fd = FD(bpf(Cmd.BTF_GET_FD_BY_ID, attr))
    except KernelError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    try:
        name, kernel = _info(fd)
    except BaseException:
        fd.close()
        raise
    if kernel and name == module:
        return fd
    fd.close()
    return None


def open_btf_by_name(module: str) -> FD:
    """An fd of the kernel BTF object named ``module`` ("vmlinux" or a module's name)."""
    cached = _IDS.pop(module, None)
    if cached is not None and (fd := _open_if(cached, module)) is not None:
        _IDS[module] = cached
        return fd
    current = 0
    while (next_id := _next_id(current)) is not None:
        current = next_id
        if (fd := _open_if(next_id, module)) is not None:
            _IDS[module] = next_id
            return fd
    raise BpfshareError(f"no kernel BTF object named {module!r} (is the module loaded?)")
