"""``HostKernel``: the real ``NodeKernel`` (bpf(), bpffs, rtnetlink, cgroup v2).

A thin adapter: every method is one or two calls into ``kernel/`` and ``load/``, which hold the
mechanics (EEXIST-safe get-or-create, atomic pin replace, link re-adoption, tc replace).
Observations never change anything: a defunct link is reported as no link, and removed only
when the engine attaches again.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
from pathlib import Path
from typing import cast

from bpfshare.api.targets import AttachTarget, CgroupTarget, TcTarget, TcxTarget
from bpfshare.engine.kernel import AttachResult, LinkView, Loaded, MapView, ProgramView, TcFilterView
from bpfshare.engine.meta import record_spec
from bpfshare.errors import BpfshareError, InvalidTargetError, KernelError, TargetNotFoundError
from bpfshare.kernel.links import Link
from bpfshare.kernel.maps import Map, MapInfo
from bpfshare.kernel.pins import ensure_pin_dir, get_or_create_pinned, is_bpffs, replace_pin
from bpfshare.kernel.programs import Program, ProgramInfo
from bpfshare.load.attach import attach_program
from bpfshare.load.loader import MapBinding, load_program
from bpfshare.spec import CollectionSpec, MapSpec, ProgramSpec

KEY0 = struct.pack("<I", 0)


def _map_view(info: MapInfo) -> MapView:
    return info


def _program_view(info: ProgramInfo) -> ProgramView:
    return ProgramView(info.id, info.tag, tuple(info.map_ids))


class HostKernel:
    """This machine's kernel. Stateless: every answer is read from bpffs and the kernel.

    ``btf``: the kernel's BTF file for CO-RE (``agent --btf``) when /sys/kernel/btf/vmlinux is missing."""

    def __init__(self, btf: Path | None = None) -> None:
        self.btf = btf

    def possible_cpus(self) -> int:
        from bpfshare.kernel.cpus import possible_cpus

        return possible_cpus()

    # -- bpffs ---------------------------------------------------------------------------------
    def exists(self, path: Path) -> bool:
        return os.path.lexists(path)

    def list_dir(self, path: Path) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def is_dir(self, path: Path) -> bool:
        return path.is_dir()

    def on_bpffs(self, path: Path) -> bool:
        try:
            return is_bpffs(path if path.exists() else path.parent)
        except OSError:
            return False

    def unpin(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def remove_tree(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=False)  # bpffs: unlink of pins, rmdir of directories

    # -- maps ----------------------------------------------------------------------------------
    def map_at(self, pin: Path) -> MapView:
        with Map.from_pin(pin) as live:
            return _map_view(live.info())

    def map_by_id(self, map_id: int) -> MapView | None:
        try:
            live = Map.from_id(map_id)
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        with live:
            return _map_view(live.info())

    def get_or_create_map(self, spec: MapSpec, pin: Path, subject: str) -> tuple[MapView, bool]:
        live, reused = get_or_create_pinned(spec, pin, subject)
        with live:
            return _map_view(live.info()), not reused

    def pin_existing_map(self, source: Path | int, pin: Path) -> MapView:
        live = Map.from_id(source) if isinstance(source, int) else Map.from_pin(source)
        with live:
            ensure_pin_dir(pin.parent)
            live.pin(pin)
            return _map_view(live.info())

    # -- program records -----------------------------------------------------------------------
    def read_record(self, pin: Path) -> bytes | None:
        if not pin.exists():
            return None
        with Map.from_pin(pin) as live:
            return live.lookup(KEY0)

    def write_record(self, pin: Path, data: bytes) -> None:
        live, _ = get_or_create_pinned(record_spec(len(data)), pin, f"record {pin}")
        with live:
            live.update(KEY0, data)

    # -- programs ------------------------------------------------------------------------------
    def program_at(self, pin: Path) -> ProgramView | None:
        if not pin.exists():
            return None
        with Program.from_pin(pin) as live:
            return _program_view(live.info())

    def open_program(self, pin: Path) -> Loaded:
        live = Program.from_pin(pin)
        return Loaded(live, _program_view(live.info()))

    def load(
        self,
        collection: CollectionSpec,
        program: str,
        bindings: dict[str, MapBinding],
        pin_root: Path,
        pin_dir: Path,
    ) -> Loaded:
        loaded = load_program(
            collection, program, bindings=bindings, pin_root=pin_root, pin_dir=pin_dir, pin_program=False, btf=self.btf
        )
        pinned: dict[Path, bool] = {}
        for prog in loaded.slot_programs.values():
            prog.close()  # held by the prog arrays they were put in
        for name, m in loaded.maps.items():
            m.map.close()
            if name not in bindings and m.pin_path is not None and pin_dir not in m.pin_path.parents:
                pinned[m.pin_path] = not m.reused
        return Loaded(loaded.program, _program_view(loaded.program.info()), loaded.kernel_seconds, pinned)

    def pin_program(self, program: Loaded, pin: Path) -> None:
        replace_pin(cast(Program, program.handle), pin)

    # -- attachments ---------------------------------------------------------------------------
    def missing_target(self, target: AttachTarget) -> str | None:
        try:
            if isinstance(target, CgroupTarget):
                from bpfshare.kernel.cgroup import resolve_cgroup

                resolve_cgroup(target.path)
            else:
                from bpfshare.kernel.netns import ifindex

                ifindex(target.interface, target.netns)
        except BpfshareError as exc:
            return str(exc)
        return None

    def place_gone(self, target: AttachTarget) -> bool:
        try:
            if isinstance(target, CgroupTarget):
                from bpfshare.kernel.cgroup import resolve_cgroup

                resolve_cgroup(target.path)
            elif target.netns is not None:
                from bpfshare.kernel.netns import netns_path

                netns_path(target.netns)
        except TargetNotFoundError as exc:
            return not isinstance(exc, InvalidTargetError)  # a name no namespace can have: wrong, not gone
        except BpfshareError:  # a cgroup path outside the root: wrong, not gone
            return False
        return False

    def tc_filter(self, target: TcTarget) -> TcFilterView | None:
        from bpfshare.kernel.tc import list_tc_filters

        for f in list_tc_filters(target.interface, target.direction, target.netns):
            if (f.priority, f.handle) == (target.priority, target.handle):
                return TcFilterView(f.prog_id, f.name)
        return None

    def detach_tc(self, target: TcTarget) -> None:
        from bpfshare.kernel.tc import detach_tc

        detach_tc(target.interface, target.direction, target.priority, target.handle, target.netns)

    def current_link(self, pin: Path, target: AttachTarget) -> LinkView | None:
        if not pin.exists():
            return None
        try:
            with Link.from_pin(pin) as link:
                info = link.info()
                if info.attach_type is not None and info.attach_type != getattr(target, "attach_type", None):
                    return None
                if isinstance(target, TcxTarget):
                    from bpfshare.kernel.netns import ifindex

                    alive = bool(info.ifindex) and info.ifindex == ifindex(target.interface, target.netns)
                else:
                    from bpfshare.kernel.cgroup import resolve_cgroup

                    path = getattr(target, "path", "")
                    alive = bool(info.cgroup_id) and info.cgroup_id == os.stat(resolve_cgroup(path)).st_ino
        except (BpfshareError, OSError):
            return None
        return LinkView(info.id, info.prog_id) if alive else None

    def attach(self, program: Loaded, spec: ProgramSpec, target: AttachTarget, pin_dir: Path) -> AttachResult:
        attachment = attach_program(cast(Program, program.handle), spec, target, pin_dir)
        return AttachResult(attachment.link_id, attachment.pin_path, attachment.handle)
