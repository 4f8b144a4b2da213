"""What linking needs from the object beyond its code, each read once and only when asked.

Externs (from the symbol table and BTF), the ``.kconfig`` map they lay out, the ``.BTF.ext``
func_info/line_info records, and the BTF sanitized for the kernel: most objects have none of
these, and pay nothing for them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

from bpfshare.errors import ObjectError
from bpfshare.object.btf import Btf
from bpfshare.object.btf_ext import func_and_line_info
from bpfshare.object.btf_sanitize import sanitize_btf
from bpfshare.object.elf import ElfObject
from bpfshare.object.externs import Extern, collect_externs, has_externs
from bpfshare.object.guard import guard
from bpfshare.object.linker import ExtInfo
from bpfshare.spec import KCONFIG_MAP, DefinitionStyle, KconfigExtern, MapSpec
from bpfshare.types import MapFlag, MapType


class LinkInputs:
    def __init__(self, elf: ElfObject, btf: Callable[[], Btf]) -> None:
        self.elf = elf
        self._btf = btf

    @cached_property
    def _externs(self) -> tuple[dict[str, Extern], int]:
        if not has_externs(self.elf):
            return {}, 0
        try:
            btf = self._btf()
        except ObjectError as exc:
            # libbpf likewise needs BTF to tell an extern's kind ("BTF is required").
            raise ObjectError(f"the object declares externs, which need its BTF: {exc}") from None
        with guard("externs"):
            return collect_externs(self.elf, btf)

    def externs(self) -> dict[str, Extern]:
        return self._externs[0]

    def kconfig(self) -> tuple[KconfigExtern, ...]:
        found = (e.kconfig for e in self.externs().values() if e.kconfig is not None)
        return tuple(sorted(found, key=lambda k: k.offset))

    def kconfig_map(self) -> MapSpec | None:
        """libbpf's .kconfig internal map: one read-only array value holding every value, which
        the loader fills in; None when the object has no __kconfig extern."""
        size = self._externs[1]
        if not size:
            return None
        return MapSpec(
            name=KCONFIG_MAP,
            type=MapType.Array,
            key_size=4,
            value_size=size,
            max_entries=1,
            flags=MapFlag.RdonlyProg,
            style=DefinitionStyle.GLOBAL_DATA,
            section=KCONFIG_MAP,
            contents=bytes(size),
        )

    @cached_property
    def _ext_info(self) -> tuple[ExtInfo, ExtInfo]:
        sec = self.elf.by_name.get(".BTF.ext")
        if sec is None:
            return {}, {}
        btf = self._btf()
        with guard("section .BTF.ext"):
            return func_and_line_info(self.elf.data(sec), btf)

    def ext_info(self) -> tuple[ExtInfo, ExtInfo]:
        return self._ext_info

    @cached_property
    def program_btf(self) -> bytes:
        """The object's BTF as BPF_BTF_LOAD accepts it (for programs with callbacks)."""
        btf = self._btf()
        kconfig = {k.name: k for k in self.kconfig()}
        with guard("section .BTF (sanitizing for the kernel)"):
            return sanitize_btf(btf, self.elf, kconfig, self._externs[1])
