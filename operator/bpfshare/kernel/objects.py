"""What every kernel BPF object shares: an owned fd, pins, IDs, info. And iteration over all live IDs.

Maps, programs and links each have an ID (global, never reused while the object lives) and can be
pinned in bpffs. ``KernelObject`` holds what their handles have in common (opening by pin or ID,
pinning, closing, ``with``, ``repr``), keyed by ``ObjectKind``, so that maps.py, programs.py and
links.py stay about their own object.
"""

from __future__ import annotations

import abc
import ctypes
import enum
import errno
import os
import platform
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Generic, Self, TypeVar

from bpfshare.errors import KernelError
from bpfshare.kernel import libc
from bpfshare.kernel.abi import Cmd
from bpfshare.kernel.syscall import FD, bpf, fd_kind, new_attr

S = TypeVar("S", bound=ctypes.Structure)
InfoT = TypeVar("InfoT")


class ObjectKind(enum.StrEnum):
    """A kind of BPF object, spelled as the anon inode /proc/self/fd/N points to (see ``fd_kind``)."""

    MAP = "bpf-map"
    PROG = "bpf-prog"
    LINK = "bpf-link"

    @property
    def noun(self) -> str:
        """``map``, ``prog``, ``link``: for messages."""
        return self.value.removeprefix("bpf-")


BPF_FS_MAGIC = 0xCAFE4A11


def fs_magic(path: Path | str) -> int:
    """statfs(2)'s f_type: the filesystem's magic number (first field, a native long)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    libc.statfs(path, buf)
    if platform.machine() == "s390x":  # the one 64-bit ABI where f_type is a 32-bit int
        return ctypes.c_uint.from_buffer(buf).value
    return ctypes.c_ulong.from_buffer(buf).value


def is_bpffs(path: Path | str) -> bool:
    try:
        return fs_magic(path) == BPF_FS_MAGIC
    except OSError:
        return False


def pin_name_problem(path: Path | str) -> str:
    """Why bpffs would refuse ``path``'s last component, or "" (it refuses any name with a '.',
    reserved by the kernel, with a bare EPERM)."""
    name = Path(path).name
    if "." in name:
        return f"bpffs refuses names containing '.' ({name!r})"
    return ""


def dotted_component_problem(path: Path | str) -> str:
    """Why bpffs refuses ``path`` because of a '.' in one of its components inside bpffs, or "".

    bpffs's lookup (kernel/bpf/inode.c bpf_lookup) answers EPERM for any name with a '.', in a
    directory as much as in the last component; a '.' in a directory outside bpffs (the mount
    point's own path) is fine. Names the component and the directory it is in."""
    parts = Path(os.path.abspath(path)).parts
    for depth in range(1, len(parts)):
        parent, name = Path(*parts[:depth]), parts[depth]
        if "." in name and is_bpffs(parent):
            return f"bpffs refuses names containing '.': {name!r} in {parent}"
    return ""


def _get_hint(path: Path | str, kind: ObjectKind, err: int) -> str:
    """What an EACCES or EPERM from BPF_OBJ_GET means for this path: never bare.

    EACCES: the path is not a pinned object (a directory, a file outside bpffs: bpf_inode_type)
    or its mode does not let us read it. EPERM: a '.' in a name inside bpffs, else privileges."""
    if err == errno.EPERM:
        return pin_name_problem(path) or dotted_component_problem(path) or "opening a pin needs CAP_BPF or root"
    if err != errno.EACCES:
        return ""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    if stat.S_ISDIR(st.st_mode):
        return f"{path} is a directory, not a pinned {kind.noun} (name the pin inside it)"
    if not is_bpffs(path):
        return f"{path} is not on a bpffs mount, so it is not a pinned {kind.noun}"
    return f"the pin's mode {stat.S_IMODE(st.st_mode):04o} (owner uid {st.st_uid}) does not let this process open it"


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
            why = pin_name_problem(path) or dotted_component_problem(path)
            hint = f" ({why})" if why else " (is the directory on a bpffs mount?)"
        raise KernelError(f"pinning at {path}: {exc}{hint}", exc.errno) from None


def obj_get(path: Path | str, kind: ObjectKind, file_flags: int = 0) -> FD:
    """Open a pinned object; refuse a pin of another kind (a program where a map was expected).

    EACCES and EPERM, which the kernel gives for several unrelated causes, come with the one
    that applies (a directory, a path outside bpffs, a '.' in a name, the pin's mode)."""
    raw = os.fsencode(str(path)) + b"\0"
    buf = ctypes.create_string_buffer(raw, len(raw))
    attr = new_attr()
    attr.obj.pathname = ctypes.addressof(buf)
    attr.obj.file_flags = file_flags
    try:
        fd = FD(bpf(Cmd.OBJ_GET, attr))
    except KernelError as exc:
        why = _get_hint(path, kind, exc.errno)
        hint = f" ({why})" if why else ""
        raise KernelError(f"opening pin {path}: {exc}{hint}", exc.errno) from None
    actual = fd_kind(fd.fileno())
    if actual != kind:
        fd.close()
        raise KernelError(f"pin {path} holds a {actual}, not a {kind}", errno.EINVAL)
    return fd


_BY_ID = {
    ObjectKind.MAP: Cmd.MAP_GET_FD_BY_ID,
    ObjectKind.PROG: Cmd.PROG_GET_FD_BY_ID,
    ObjectKind.LINK: Cmd.LINK_GET_FD_BY_ID,
}
_NEXT_ID = {
    ObjectKind.MAP: Cmd.MAP_GET_NEXT_ID,
    ObjectKind.PROG: Cmd.PROG_GET_NEXT_ID,
    ObjectKind.LINK: Cmd.LINK_GET_NEXT_ID,
}


def fd_by_id(kind: ObjectKind, obj_id: int) -> FD:
    """Open a live object by ID (ENOENT: no such object, or it went away)."""
    attr = new_attr()
    attr.id.start_id = obj_id
    try:
        return FD(bpf(_BY_ID[kind], attr))
    except KernelError as exc:
        raise KernelError(f"opening {kind.noun} id {obj_id}: {exc}", exc.errno) from None


def next_ids(kind: ObjectKind) -> Iterator[int]:
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
    return next_ids(ObjectKind.MAP)


def prog_ids() -> Iterator[int]:
    return next_ids(ObjectKind.PROG)


def link_ids() -> Iterator[int]:
    return next_ids(ObjectKind.LINK)


def obj_info(fd: int, info: S) -> S:
    """Fill ``info`` (a bpf_*_info struct, with any array pointers already set) for ``fd``."""
    attr = new_attr()
    attr.info.bpf_fd = fd
    attr.info.info_len = ctypes.sizeof(info)
    attr.info.info = ctypes.addressof(info)
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr)
    return info


class KernelObject(abc.ABC, Generic[InfoT]):
    """An open BPF object of one ``kind``: owns its fd. Close it (or use ``with``) when done; pins
    (and, for programs, attachments) keep the object alive without us.

    Subclasses set ``kind`` and say what is their own: ``info()`` (what the kernel reports, as
    ``InfoT``), ``_summary`` (the fields ``repr`` shows), and how they are made.
    """

    kind: ClassVar[ObjectKind]

    def __init__(self, fd: FD) -> None:
        self._fd = fd

    @classmethod
    def from_pin(cls, path: Path | str) -> Self:
        """Open the object pinned at ``path``; a pin of another kind is refused."""
        return cls(obj_get(path, cls.kind))

    @classmethod
    def from_id(cls, obj_id: int) -> Self:
        """Open a live object by its ID (KernelError with ENOENT once it is gone)."""
        return cls(fd_by_id(cls.kind, obj_id))

    @property
    def fd(self) -> int:
        return self._fd.fileno()

    def close(self) -> None:
        self._fd.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pin(self, path: Path | str) -> None:
        """Pin the object at ``path`` (in bpffs; must not exist yet)."""
        obj_pin(self.fd, path)

    @abc.abstractmethod
    def info(self) -> InfoT:
        """What the kernel says about the object."""

    @abc.abstractmethod
    def _summary(self, info: InfoT) -> str:
        """The fields ``repr`` shows, e.g. ``id=3, name='counts'``."""

    def __repr__(self) -> str:
        name = type(self).__name__
        if self._fd.closed:
            return f"{name}(closed)"
        return f"{name}({self._summary(self.info())})"
