"""The C library, opened once for the whole kernel layer: the three calls Python's os module lacks.

``ctypes.CDLL(None)`` is the process's own C library (glibc or musl). ``use_errno=True`` makes ctypes
save errno right after each foreign call, so ``ctypes.get_errno()`` reads *that* call's errno even if
the interpreter ran other C code since. Each wrapper declares its C signature (so a 64-bit address
is never passed as a 32-bit int) and raises ``OSError(errno)`` on failure; callers add what they
were doing.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

# long syscall(long number, ...): variadic, so its arguments are passed as explicit c_long below.
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_statfs = _libc.statfs
_statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
_statfs.restype = ctypes.c_int

_setns = _libc.setns
_setns.argtypes = [ctypes.c_int, ctypes.c_int]
_setns.restype = ctypes.c_int


def _last_error(filename: str | None = None) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err), filename) if filename is not None else OSError(err, os.strerror(err))


def syscall(number: int, *args: int) -> int:
    """syscall(2): the raw system call ``number`` with integer (or address) arguments."""
    ret = int(_syscall(ctypes.c_long(number), *(ctypes.c_long(arg) for arg in args)))
    if ret < 0:
        raise _last_error()
    return ret


def statfs(path: str | os.PathLike[str], buf: ctypes.Array[ctypes.c_char]) -> None:
    """statfs(2) into ``buf`` (at least sizeof(struct statfs) bytes)."""
    if _statfs(os.fsencode(path), buf) != 0:
        raise _last_error(os.fspath(path))


def setns(fd: int, nstype: int) -> None:
    """setns(2): move the calling thread into the namespace ``fd`` refers to."""
    if _setns(fd, nstype) != 0:
        raise _last_error()
