"""What every kernel BPF object shares: pins, IDs, info. And iteration over all live IDs.

Maps, programs and links each have an ID (global, never reused while the object lives) and can be
pinned in bpffs. These helpers are typed by ``Cmd`` so that maps.py, programs.py and links.py stay
about their own object.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from bpfshare.errors import KernelError
from bpfshare.kernel.abi import Cmd
from bpfshare.kernel.syscall import FD, bpf, fd_kind, new_attr

S = TypeVar("S", bound=ctypes.Structure)

# What /proc/self/fd/N points to for each kind of object.
KIND_MAP = "bpf-map"
KIND_PROG = "bpf-prog"
KIND_LINK = "bpf-link"


def pin_name_problem(path: Path | str) -> str:
    """Why bpffs would refuse ``path``'s last component, or "" (it refuses any name with a '.',
    reserved by the kernel, with a bare EPERM)."""
    name = Path(path).name
    if "." in name:
        return f"bpffs refuses names containing '.' ({name!r})"
    return ""


def obj_pin(fd: int, path: Path | str) -> None:
    """Pin an object at ``path`` (which must be in bpffs and must not exist yet)."""
    raw = os.fsencode(str(path)) + b"\0"
    buf = ctypes.create_string_buffer(raw, len(raw))
    attr = new_attr()
    attr.obj.pathname = ctypes.addressof(buf)
    attr.obj.bpf_fd = fd
    try:
        bpf(Cmd.OBJ_PIN, attr)
    except KernelError as exc:
        hint = ""
        if exc.errno == errno.EPERM:
            why = pin_name_problem(path)
            hint = f" ({why})" if why else " (is the directory on a bpffs mount?)"
        raise KernelError(f"pinning at {path}: {exc}{hint}", exc.errno) from None


def obj_get(path: Path | str, kind: str, file_flags: int = 0) -> FD:
    """Open a pinned object; refuse a pin of another kind (a program where a map was expected)."""
    raw = os.fsencode(str(path)) + b"\0"
    buf = ctypes.create_string_buffer(raw, len(raw))
    attr = new_attr()
    attr.obj.pathname = ctypes.addressof(buf)
    attr.obj.file_flags = file_flags
    try:
        fd = FD(bpf(Cmd.OBJ_GET, attr))
    except KernelError as exc:
        hint = ""
        if exc.errno == errno.EPERM:
            why = pin_name_problem(path)
            hint = f" ({why})" if why else " (is it on a bpffs mount?)"
        raise KernelError(f"opening pin {path}: {exc}{hint}", exc.errno) from None
    actual = fd_kind(fd.fileno())
    if actual != kind:
        fd.close()
        raise KernelError(f"pin {path} holds a {actual}, not a {kind}", errno.EINVAL)
    return fd


_BY_ID = {KIND_MAP: Cmd.MAP_GET_FD_BY_ID, KIND_PROG: Cmd.PROG_GET_FD_BY_ID, KIND_LINK: Cmd.LINK_GET_FD_BY_ID}
_NEXT_ID = {KIND_MAP: Cmd.MAP_GET_NEXT_ID, KIND_PROG: Cmd.PROG_GET_NEXT_ID, KIND_LINK: Cmd.LINK_GET_NEXT_ID}


def fd_by_id(kind: str, obj_id: int) -> FD:
    """Open a live object by ID (ENOENT: no such object, or it went away)."""
    attr = new_attr()
    attr.id.start_id = obj_id
    try:
        return FD(bpf(_BY_ID[kind], attr))
    except KernelError as exc:
        what = kind.removeprefix("bpf-")
        raise KernelError(f"opening {what} id {obj_id}: {exc}", exc.errno) from None


def next_ids(kind: str) -> Iterator[int]:
    """Every live ID of one kind, ascending. Objects may come and go while iterating."""
    current = 0
    while True:
        attr = new_attr()
        attr.id.start_id = current
        try:
            bpf(_NEXT_ID[kind], attr)
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise
        current = attr.id.next_id
        yield current


def map_ids() -> Iterator[int]:
    return next_ids(KIND_MAP)


def prog_ids() -> Iterator[int]:
    return next_ids(KIND_PROG)


def link_ids() -> Iterator[int]:
    return next_ids(KIND_LINK)


def obj_info(fd: int, info: S) -> S:
    """Fill ``info`` (a bpf_*_info struct, with any array pointers already set) for ``fd``."""
    attr = new_attr()
    attr.info.bpf_fd = fd
    attr.info.info_len = ctypes.sizeof(info)
    attr.info.info = ctypes.addressof(info)
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr)
    return info
