"""The running kernel's BTF: vmlinux and the modules' split BTF, read once per process.

``/sys/kernel/btf/vmlinux`` is the base; ``/sys/kernel/btf/<module>`` is split BTF whose type IDs
continue after vmlinux's. A module is read only when a search must include modules (a kfunc, or a
CO-RE candidate search: libbpf's bpf_core_add_cands searches vmlinux first, then every module).
Records are indexed when a file is read, names on the first lookup, kind-specific data on demand
(``btf.Btf``); the whole is cached per process, so an agent pays for it once.

``--btf FILE`` (``use_file``) replaces vmlinux for kernels without ``/sys/kernel/btf/vmlinux``;
modules are then not searched (their split BTF belongs to the running kernel's vmlinux).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from bpfshare.errors import BpfshareError, ObjectError
from bpfshare.object.btf import Btf, Kind

SYS_BTF = Path("/sys/kernel/btf")
VMLINUX = "vmlinux"


@dataclass(frozen=True)
class KernelType:
    """A type found in the kernel's BTF: which BTF (vmlinux or a module's split BTF) and its ID."""

    btf: Btf
    id: int
    module: str  # "" for vmlinux (or the --btf file)

    @property
    def is_module(self) -> bool:
        return bool(self.module)


class KernelBtf:
    """vmlinux (or a --btf file) plus, lazily, the modules' split BTF."""

    def __init__(self, vmlinux: Btf, sys_dir: Path | None = SYS_BTF) -> None:
        self.vmlinux = vmlinux
        self._sys_dir = sys_dir  # None: no modules (a --btf file)
        self._modules: dict[str, Btf] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path, *, modules: bool = False) -> KernelBtf:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BpfshareError(f"kernel BTF {path}: {exc.strerror or exc}") from None
        try:
            btf = Btf(data, str(path))
        except ObjectError as exc:
            raise BpfshareError(f"kernel BTF {path}: {exc}") from None
        return cls(btf, path.parent if modules else None)

    # -- modules --------------------------------------------------------------------------------
    def modules(self) -> dict[str, Btf]:
        """Every module's split BTF, read on the first call."""
        with self._lock:
            if self._modules is None:
                self._modules = {}
                if self._sys_dir is not None:
                    try:
                        names = sorted(p.name for p in self._sys_dir.iterdir() if p.name != VMLINUX)
                    except OSError:
                        names = []
                    for name in names:
                        try:
                            data = (self._sys_dir / name).read_bytes()
                            self._modules[name] = Btf(data, f"{self._sys_dir / name}", base=self.vmlinux)
                        except (OSError, ObjectError):
                            continue  # a module unloaded meanwhile, or unreadable: skip it as libbpf does
            return self._modules

    def module(self, name: str) -> Btf | None:
        return self.modules().get(name)

    # -- lookups -------------------------------------------------------------------------------
    def find(self, name: str, kind: Kind | None = None, *, modules: bool = False) -> list[KernelType]:
        """Types named ``name`` (of ``kind``): vmlinux's first, then each module's own types
        (a module's split BTF also sees vmlinux's; those are not repeated)."""
        found = [KernelType(self.vmlinux, i, "") for i in self.vmlinux.find(name, kind)]
        if modules:
            for mod_name, btf in self.modules().items():
                own = btf.by_name(name)
                found.extend(KernelType(btf, i, mod_name) for i in own if kind is None or btf.type(i).kind is kind)
        return found


_cache: KernelBtf | None = None
_override: Path | None = None
_files: dict[Path, KernelBtf] = {}  # --btf files, by path
_cache_lock = threading.Lock()


def use_file(path: Path | None) -> None:
    """Use ``path`` as the kernel's BTF (``--btf FILE``) instead of /sys/kernel/btf/vmlinux."""
    global _cache, _override
    with _cache_lock:
        if path != _override:
            _override = path
            _cache = None


def kernel_btf(path: Path | None = None) -> KernelBtf:
    """The process's kernel BTF, read on the first call; ``path``: a --btf file instead (cached too)."""
    global _cache
    with _cache_lock:
        if path is not None:
            if path not in _files:
                _files[path] = KernelBtf.from_file(path)
            return _files[path]
        if _cache is None:
            if _override is not None:
                _cache = KernelBtf.from_file(_override)
            else:
                path = SYS_BTF / VMLINUX
                if not path.exists():
                    raise BpfshareError(
                        f"the kernel has no BTF ({path} is missing): pass its BTF with --btf FILE "
                        "(CO-RE relocations need the kernel's types)"
                    )
                _cache = KernelBtf.from_file(path, modules=True)
        return _cache


def clear_cache() -> None:
    """Forget the indexed kernel BTF (benchmarks measure a cold load with it)."""
    global _cache
    with _cache_lock:
        _cache = None
        _files.clear()
