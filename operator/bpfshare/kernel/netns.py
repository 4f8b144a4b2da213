"""Network namespaces: name them, step into them for a moment, find interfaces in them.

``enter_netns`` moves only the *calling thread* (setns(2) is per thread), so the rest of the
process (other threads, kopf's event loop) stays where it is. Sockets, netlink sockets and ifindex
lookups made inside the block belong to the target namespace and keep belonging to it afterwards.
Unlike ``ip netns exec``, nothing is remounted: bpffs pins stay visible.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bpfshare.errors import InvalidTargetError, KernelError, TargetNotFoundError
from bpfshare.kernel import libc

NETNS_RUN_DIR = Path("/run/netns")
IFNAMSIZ = 16  # include/uapi/linux/if.h: an interface name and its NUL
IFNAME_MAX = IFNAMSIZ - 1
CLONE_NEWNET = 0x40000000
SELF_NET = "/proc/thread-self/ns/net"


def netns_path(name_or_path: str) -> Path:
    """A bare name is ``/run/netns/NAME`` (as ``ip netns add`` makes it); an absolute path (e.g.
    ``/proc/PID/ns/net``) is taken as is. Raises TargetNotFoundError if it does not exist."""
    if not name_or_path:
        raise TargetNotFoundError("empty network namespace name")
    if "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_absolute():
            raise TargetNotFoundError(
                f"network namespace {name_or_path!r}: give a bare name (in {NETNS_RUN_DIR}) or an absolute path"
            )
    else:
        path = NETNS_RUN_DIR / name_or_path
    if not path.exists():
        raise TargetNotFoundError(f"network namespace {name_or_path!r} not found (no {path})")
    return path


def _setns(fd: int, what: str) -> None:
    try:
        libc.setns(fd, CLONE_NEWNET)
    except OSError as exc:
        err = exc.errno or 0
        hint = " (entering a network namespace needs CAP_SYS_ADMIN)" if err == errno.EPERM else ""
        raise KernelError(f"setns({what}): {os.strerror(err)}{hint}", err) from None


@contextmanager
def enter_netns(name_or_path: str | None) -> Iterator[None]:
    """Run the block with the calling thread in the given netns (None: stay where we are).

    The original namespace is restored on every exit path; if even that fails the thread is in
    an unknown namespace, and the error propagates rather than being swallowed.
    """
    if name_or_path is None:
        yield
        return
    path = netns_path(name_or_path)
    original = os.open(SELF_NET, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise TargetNotFoundError(f"network namespace {name_or_path!r} not found (no {path})") from None
        try:
            _setns(target, str(path))
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(original, SELF_NET)
    finally:
        os.close(original)


def netns_label(netns: str | None) -> str:
    return f"network namespace {netns!r}" if netns else "the host network namespace"


def interface_name_problem(name: str) -> str:
    """Why no interface can be called ``name`` ("" if one can), as net/core/dev.c dev_valid_name
    says: not empty, at most 15 bytes (IFNAMSIZ with the NUL), not "." or "..", no '/', ':' or
    white space. Pure: asked before looking the name up, so that "not found" is never the answer
    for a name the kernel would never accept."""
    size = len(name.encode())
    if not name:
        return "an interface name cannot be empty"
    if size > IFNAME_MAX:
        length = f"{size} characters" if size == len(name) else f"{size} bytes in UTF-8"
        return f"interface {name!r} is {length}, longer than the kernel's {IFNAME_MAX} characters (IFNAMSIZ)"
    if name in (".", ".."):
        return f"{name!r} cannot be an interface name"
    bad = sorted({c for c in name if c in "/:" or c.isspace()})
    if bad:
        return f"interface {name!r}: the kernel refuses {', '.join(map(repr, bad))} in interface names"
    return ""


def check_interface_name(name: str) -> None:
    """Raise InvalidTargetError if no interface can be called ``name`` (``interface_name_problem``)."""
    problem = interface_name_problem(name)
    if problem:
        raise InvalidTargetError(problem)


def ifindex(name: str, netns: str | None = None) -> int:
    """The interface index of ``name`` inside ``netns`` (None: the current namespace). A name that
    no interface can have is InvalidTargetError (a TargetNotFoundError) saying why, not "not found"."""
    check_interface_name(name)
    with enter_netns(netns):
        try:
            return socket.if_nametoindex(name)
        except OSError:
            raise TargetNotFoundError(f"interface {name!r} not found in {netns_label(netns)}") from None
