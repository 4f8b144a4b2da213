"""The kernel's BTF objects (vmlinux's and each module's), found by name for fd_array.

A kfunc or a typed ksym defined in a module is named to the verifier by (BTF object fd, type ID):
the fd goes in the program's fd_array. libbpf (load_module_btfs) walks BPF_BTF_GET_NEXT_ID, opens
each object and reads its name with BPF_OBJ_GET_INFO_BY_FD; so does this.
"""

from __future__ import annotations

import ctypes
import errno
from ctypes import c_uint32, c_uint64

from bpfshare.errors import BpfshareError, KernelError
from bpfshare.kernel.syscall import FD, bpf, new_attr

BTF_GET_FD_BY_ID = 19
BTF_GET_NEXT_ID = 23
OBJ_GET_INFO_BY_FD = 15


class BtfInfoStruct(ctypes.Structure):
    """struct bpf_btf_info."""

    _fields_ = [
        ("btf", c_uint64),
        ("btf_size", c_uint32),
        ("id", c_uint32),
        ("name", c_uint64),
        ("name_len", c_uint32),
        ("kernel_btf", c_uint32),
    ]


def _next_id(start: int) -> int | None:
    attr = new_attr()
    attr.id.start_id = start
    try:
        bpf(BTF_GET_NEXT_ID, attr)
    except KernelError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return int(attr.id.next_id)


def _info(fd: FD) -> tuple[int, str, bool]:
    """(BTF object ID, name, is kernel BTF)."""
    name = ctypes.create_string_buffer(64)
    info = BtfInfoStruct()
    info.name = ctypes.addressof(name)
    info.name_len = ctypes.sizeof(name)
    attr = new_attr()
    attr.info.bpf_fd = int(fd)
    attr.info.info_len = ctypes.sizeof(info)
    attr.info.info = ctypes.addressof(info)
    bpf(OBJ_GET_INFO_BY_FD, attr)
    return int(info.id), name.value.decode(errors="replace"), bool(info.kernel_btf)


def open_btf_by_name(module: str) -> FD:
    """An fd of the kernel BTF object named ``module`` ("vmlinux" or a module's name)."""
    current = 0
    while (next_id := _next_id(current)) is not None:
        current = next_id
        attr = new_attr()
        attr.id.start_id = next_id
        try:
            fd = FD(bpf(BTF_GET_FD_BY_ID, attr))
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                continue  # freed meanwhile
            raise
        try:
            _id, name, kernel = _info(fd)
        except BaseException:
            fd.close()
            raise
        if kernel and name == module:
            return fd
        fd.close()
    raise BpfshareError(f"no kernel BTF object named {module!r} (is the module loaded?)")


def btf_object_id(fd: FD) -> int:
    return _info(fd)[0]
