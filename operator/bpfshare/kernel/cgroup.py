"""cgroup v2 targets: find the root, resolve user paths inside it, open cgroup directories.

The root is discovered from /proc/self/mountinfo, never assumed: pure cgroup v2 systems mount it
at /sys/fs/cgroup, hybrid ones at /sys/fs/cgroup/unified, containers anywhere. User paths are
relative to that root, so the same BpfProgram means the same cgroup on every node.
"""

from __future__ import annotations

import os
from pathlib import Path

from bpfshare.errors import BpfshareError, TargetNotFoundError
from bpfshare.kernel.syscall import FD

MOUNTINFO = "/proc/self/mountinfo"
PREFERRED_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))


class CgroupPathError(BpfshareError, ValueError):
    """A cgroup path that is not allowed (it would leave the cgroup v2 hierarchy)."""


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def cgroup2_mounts(mountinfo: str | None = None) -> list[Path]:
    """Mount points of every cgroup2 filesystem, in mount order."""
    if mountinfo is None:
        with open(MOUNTINFO) as f:
            mountinfo = f.read()
    found: list[Path] = []
    for line in mountinfo.splitlines():
        # "<id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> <source> ..."
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        if len(fields) >= 5 and right.split()[:1] == ["cgroup2"]:
            found.append(Path(_unescape(fields[4])))
    return found


def cgroup2_root(mountinfo: str | None = None) -> Path:
    """The cgroup v2 root: /sys/fs/cgroup if it is cgroup2, else /sys/fs/cgroup/unified, else the
    first cgroup2 mount.

    Without ``mountinfo``, the answer found in /proc/self/mountinfo is kept while it still holds:
    the engine resolves every cgroup target at every plan, and reading and parsing mountinfo (long
    on a node with many pods' mounts) was most of that cost, while statfs(2) of the kept root and
    of the preferred roots before it tells in one or two system calls whether it would change."""
    global _kept_root
    if mountinfo is None and _kept_root is not None and _still_root(_kept_root):
        return _kept_root
    mounts = cgroup2_mounts(mountinfo)
    found = next((p for p in PREFERRED_ROOTS if p in mounts), mounts[0] if mounts else None)
    if found is None:
        raise TargetNotFoundError(f"no cgroup v2 filesystem is mounted (no cgroup2 entry in {MOUNTINFO})")
    if mountinfo is None:
        _kept_root = found
    return found


CGROUP2_SUPER_MAGIC = 0x63677270
_kept_root: Path | None = None


def _still_root(root: Path) -> bool:
    """Whether ``cgroup2_root`` would still answer ``root``: it is cgroup2, and no preferred root
    before it has become cgroup2 (a preferred root is a mount point only when it is cgroup2)."""
    from bpfshare.kernel.objects import fs_magic

    try:
        if fs_magic(root) != CGROUP2_SUPER_MAGIC:
            return False
        before = PREFERRED_ROOTS[: PREFERRED_ROOTS.index(root)] if root in PREFERRED_ROOTS else PREFERRED_ROOTS
        return not any(fs_magic(p) == CGROUP2_SUPER_MAGIC for p in before if os.path.isdir(p))
    except OSError:
        return False


def resolve_cgroup(path: str, root: Path | None = None) -> Path:
    """The directory of cgroup ``path``, given relative to the cgroup v2 root.

    ``/`` and ``""`` are the root itself; ``/a/b`` and ``a/b`` are the same cgroup. ``..`` is
    refused outright, and a path whose real location (symlinks followed) leaves the root too.
    """
    root = root if root is not None else cgroup2_root()
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CgroupPathError(f"cgroup path {path!r} must not contain '..' (paths are relative to {root})")
    candidate = root.joinpath(*parts)
    real_root = os.path.realpath(root)
    real = os.path.realpath(candidate)
    if real != real_root and not real.startswith(real_root.rstrip("/") + "/"):
        raise CgroupPathError(f"cgroup path {path!r} resolves to {real}, outside the cgroup v2 root {root}")
    if not os.path.isdir(real):
        raise TargetNotFoundError(
            f"cgroup {path!r} not found: no directory {candidate} (paths are relative to the cgroup v2 root {root})"
        )
    return Path(real)


def cgroup_relative_path(path: str, root: Path | None = None) -> str:
    """A cgroup path as the command line takes it, made relative to the cgroup v2 root.

    bpftool users write the cgroup's full path: an absolute path inside the cgroup v2 mount
    (``/sys/fs/cgroup/unified/x`` on a hybrid node, ``/sys/fs/cgroup/x`` on a pure v2 one) becomes
    ``/x``. Any other path is already relative to the root (``/x`` and ``x``, as resources say it)
    and is kept, unless it plainly names another place on the filesystem (``/sys/fs/cgroup/x`` on
    a hybrid node, whose /sys/fs/cgroup is not the v2 mount): that is CgroupPathError naming the
    mount, rather than a search for a cgroup called "sys" under the root.
    """
    if not path.startswith("/"):
        return path
    parts = [p for p in path.split("/") if p not in ("", ".")]
    root = root if root is not None else cgroup2_root()
    if ".." in parts:
        raise CgroupPathError(f"cgroup path {path!r} must not contain '..' (paths are inside {root})")
    normal = Path("/", *parts)
    for mount, candidate in ((root, normal), (Path(os.path.realpath(root)), Path(os.path.realpath(normal)))):
        if candidate == mount:
            return "/"
        if candidate.is_relative_to(mount):
            return "/" + str(candidate.relative_to(mount))
    if not parts or os.path.isdir(root.joinpath(*parts)):
        return path  # a cgroup under the root, named relative to it
    if os.path.lexists(Path("/", parts[0])):
        raise CgroupPathError(
            f"cgroup path {path!r} is outside the cgroup v2 mount {root}: give a path inside it "
            f"({root}/...) or one relative to it"
        )
    return path


def open_cgroup(path: str | Path, root: Path | None = None) -> FD:
    """An O_RDONLY|O_DIRECTORY fd of a cgroup, as BPF_LINK_CREATE / PROG_ATTACH want.

    A ``str`` is a user path, resolved with ``resolve_cgroup``; a ``Path`` is a filesystem path
    (e.g. what ``resolve_cgroup`` returned), opened as is.
    """
    target = resolve_cgroup(path, root) if isinstance(path, str) else path
    try:
        return FD(os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    except FileNotFoundError:
        raise TargetNotFoundError(f"cgroup {target} not found") from None
    except NotADirectoryError:
        raise TargetNotFoundError(f"cgroup {target} is not a directory") from None
