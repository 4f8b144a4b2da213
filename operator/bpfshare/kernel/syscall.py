"""The bpf(2) system call through ctypes, and ``FD``, the owner of a kernel object's file descriptor.

No libbpf: every command is a zeroed ``BpfAttr`` filled with the fields it needs. Errors carry the
command's name and errno (``BPF_MAP_CREATE: Invalid argument (EINVAL)``); callers add what they
were doing. File descriptors made by bpf() are always close-on-exec (the kernel passes O_CLOEXEC
for every map, program and link fd), so a spawned helper never inherits them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_mod
import os
import platform
from typing import Any

from bpfshare.errors import KernelError
from bpfshare.kernel import libc
from bpfshare.kernel.abi import ATTR_SIZE, BpfAttr, Cmd

# __NR_bpf per architecture (it is not in the generic table on every one).
_NR_BPF = {
    "x86_64": 321,
    "aarch64": 280,
    "arm64": 280,
    "riscv64": 280,
    "loongarch64": 280,
    "ppc64le": 361,
    "ppc64": 361,
    "s390x": 351,
}

# Kernel-internal errno values that leak to user space and that libc does not name.
_EXTRA_ERRNO = {524: ("ENOTSUPP", "Operation not supported")}


def _nr_bpf() -> int:
    machine = platform.machine()
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        raise KernelError(f"bpfshare needs a 64-bit process (bpf_attr layouts), not {machine}")
    try:
        return _NR_BPF[machine]
    except KeyError:
        raise KernelError(f"bpf() syscall number unknown for architecture {machine}") from None


NR_BPF = _nr_bpf()


def errno_text(err: int) -> str:
    """``Invalid argument (EINVAL)``."""
    if err in _EXTRA_ERRNO:
        name, text = _EXTRA_ERRNO[err]
    else:
        name = errno_mod.errorcode.get(err, f"errno {err}")
        text = os.strerror(err)
    return f"{text} ({name})"


def bpf(cmd: int, attr: Any, size: int | None = None) -> int:
    """Call bpf(cmd, &attr, size) and return its result (often a new fd); raise KernelError.

    ``attr`` is normally a ``BpfAttr``; its full size is passed so that fields newer than ours are
    zero. EINTR (a signal during a long verification) is retried, as libbpf does.
    """
    size = ctypes.sizeof(attr) if size is None else size
    while True:
        try:
            return libc.syscall(NR_BPF, int(cmd), ctypes.addressof(attr), size)
        except OSError as exc:
            err = exc.errno or 0
            if err != errno_mod.EINTR:
                raise KernelError(f"{command_name(cmd)}: {errno_text(err)}", err) from None


def command_name(cmd: int) -> str:
    try:
        return f"BPF_{Cmd(cmd).name}"
    except ValueError:
        return f"bpf command {cmd}"


def new_attr() -> BpfAttr:
    attr = BpfAttr()
    assert ctypes.sizeof(attr) == ATTR_SIZE
    return attr


class FD:
    """Owns one file descriptor: ``close()`` once, context manager, closed on garbage collection.

    ``int(fd)`` and ``fd.fileno()`` give the number; using it after close raises, so a stale number
    that the process has since reused is never passed to the kernel by mistake.
    """

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        if fd < 0:
            raise ValueError(f"invalid file descriptor {fd}")
        self._fd = fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("use of a closed file descriptor")
        return self._fd

    __int__ = fileno
    __index__ = fileno

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> FD:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Interpreter shutdown may have torn down os already; a leak then is harmless.
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return f"FD({self._fd})" if self._fd >= 0 else "FD(closed)"


def fd_kind(fd: int) -> str:
    """What kind of object an fd refers to: ``bpf-map``, ``bpf-prog``, ``bpf-link``, ...

    BPF_OBJ_GET hands back whatever was pinned, so a map pin and a program pin are told apart only
    by the anon inode behind the fd. The kernel names link inodes "bpf_link" when it creates a link
    and "bpf-link" when it reopens one, so '_' is normalized to '-'.
    """
    target = os.readlink(f"/proc/self/fd/{fd}")
    return target.removeprefix("anon_inode:").strip("[]").replace("_", "-")


def fdinfo(fd: int) -> dict[str, str]:
    """/proc/self/fdinfo/FD as a dict (``map_type``, ``owner_prog_type``, ``frozen``, ...)."""
    out: dict[str, str] = {}
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            key, sep, value = line.partition(":")
            if sep:
                out[key.strip()] = value.strip()
    return out
