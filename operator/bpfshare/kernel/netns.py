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

from bpfshare.errors import KernelError, TargetNotFoundError
from bpfshare.kernel import libc

NETNS_RUN_DIR = Path("/run/netns")
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


def ifindex(name: str, netns: str | None = None) -> int:
    """The interface index of ``name`` inside ``netns`` (None: the current namespace)."""
    with enter_netns(netns):
        try:
            return socket.if_nametoindex(name)
        except OSError:
            raise TargetNotFoundError(f"interface {name!r} not found in {netns_label(netns)}") from None
