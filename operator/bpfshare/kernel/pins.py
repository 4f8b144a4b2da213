"""Pinned maps shared between loaders: reuse after a compatibility check, or create and pin, safely
against other loaders doing the same at the same moment.

The pin path is the rendezvous. BPF_OBJ_PIN fails with EEXIST when the path exists, which makes
"create, then pin" an atomic claim: whoever pins first wins, the others drop the map they made and
open the winner's. An existing map is only ever read (its info), never changed.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from bpfshare.errors import KernelError
from bpfshare.kernel.compat import check_compatible
from bpfshare.kernel.maps import Map
from bpfshare.kernel.objects import BPF_FS_MAGIC as BPF_FS_MAGIC
from bpfshare.kernel.objects import fs_magic as fs_magic
from bpfshare.kernel.objects import is_bpffs as is_bpffs  # where callers have always found it
from bpfshare.kernel.objects import pin_name_problem
from bpfshare.spec import MapSpec

# How often to go round "open or create+pin" when the pin keeps appearing and disappearing
# (another loader pinning, then an unpin) before giving up.
ATTEMPTS = 8


class NotOnBpffsError(KernelError):
    """A pin path is not inside a bpffs mount (the kernel would answer a bare EPERM)."""


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.exists(candidate):  # False on any error: bpffs answers EPERM for names with '.'
            return candidate
    return Path("/")


def ensure_pin_dir(path: Path | str) -> Path:
    """Make sure ``path`` is a directory inside bpffs, creating missing directories.

    Refuses to create anything when the nearest existing ancestor is not on bpffs: a typo'd pin
    root would otherwise fill a tmpfs or /sys with directories and end in EPERM at pin time.
    """
    path = Path(path)
    if os.path.isdir(path) and is_bpffs(path):
        return path  # the common case (every pin of a pass asks): two syscalls, no walk up the tree
    anchor = _nearest_existing(path)
    if not is_bpffs(anchor):
        raise NotOnBpffsError(
            f"{path}: {anchor} is not on a bpffs mount (mount one with: mount -t bpf bpf {anchor})",
            errno.EPERM,
        )
    if anchor == path and not path.is_dir():
        raise KernelError(f"pin directory {path} exists and is not a directory", errno.ENOTDIR)
    for missing in (path, *path.parents):
        if missing == anchor:
            break
        why = pin_name_problem(missing)
        if why:
            raise KernelError(f"pin directory {path}: {why}", errno.EPERM)
    path.mkdir(parents=True, exist_ok=True)
    return path


def get_or_create_pinned(
    spec: MapSpec, path: Path | str, subject: str, *, btf: Callable[[], int | None] | None = None
) -> tuple[Map, bool]:
    """The map pinned at ``path`` if compatible with ``spec``, else a new one pinned there.

    Returns ``(map, reused)``. An existing but incompatible map raises IncompatibleMapError naming
    every difference, and is left exactly as it was (pin, contents, ID). ``btf``: called only when
    the map is to be created, for the fd of its object's BTF (``Map.create``'s ``btf_fd``); the BTF
    is not compared, so a map pinned without BTF is reused when the definitions agree.
    """
    path = Path(path)
    ensure_pin_dir(path.parent)
    for _ in range(ATTEMPTS):
        existing = _open_existing(path, subject)
        if existing is not None:
            return checked(existing, spec, subject), True
        created = Map.create(spec, btf_fd=btf() if btf is not None else None)
        try:
            created.pin(path)
        except KernelError as exc:
            created.close()  # never pinned: the kernel frees it with this last fd
            if exc.errno == errno.EEXIST:
                continue  # another loader won the race: reuse theirs after the same check
            raise KernelError(f"{subject}: {exc}", exc.errno) from None
        return created, False
    raise KernelError(f"{subject}: pin {path} kept appearing and disappearing; gave up", errno.EAGAIN)


def _open_existing(path: Path, subject: str) -> Map | None:
    try:
        return Map.from_pin(path)
    except KernelError as exc:
        if exc.errno == errno.ENOENT:
            return None  # nothing pinned (or unpinned since): create one
        raise KernelError(f"{subject}: {exc}", exc.errno) from None


def checked(live: Map, spec: MapSpec, subject: str) -> Map:
    """``live`` if it matches ``spec`` (every differing field reported at once); closed otherwise."""
    try:
        check_compatible(spec, live.info(), subject)
    except BaseException:
        live.close()
        raise
    return live


class Pinnable(Protocol):
    def pin(self, path: Path) -> None: ...


NAME_MAX = 255  # the longest file name


def temporary_pin_name(name: str) -> str:
    """Where ``replace_pin`` pins before renaming over ``name``: ``<name>_tmp<pid>``, or, for a name
    too long to take the suffix (NAME_MAX), ``<digest of the name>_tmp<pid>``: either way it ends in
    ``_tmp<pid>``, which is how stale ones are found (engine/layout.py)."""
    suffix = f"_tmp{os.getpid()}"
    if len(os.fsencode(name + suffix)) <= NAME_MAX:
        return name + suffix
    return hashlib.sha256(os.fsencode(name)).hexdigest()[:40] + suffix


def replace_pin(live: Pinnable, path: Path) -> None:
    """Pin ``live`` at ``path`` atomically: pin beside it, then rename over the old pin.

    A reader of ``path`` sees the old object or the new one, never no object. (bpffs refuses any
    name with a '.', so the temporary name has none.)
    """
    ensure_pin_dir(path.parent)
    tmp = path.with_name(temporary_pin_name(path.name))
    tmp.unlink(missing_ok=True)
    live.pin(tmp)
    os.rename(tmp, path)
