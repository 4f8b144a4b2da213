"""Where the running kernel's symbols are: BTF ids (vmlinux and module BTF) and kallsyms addresses.

``find_ksym_btf_id`` is the one function the extern resolver asks the kernel's BTF (the shared,
lazily indexed, per-process ``object.kernel_btf``), as libbpf's find_ksym_btf_id does: vmlinux
first, then the modules' split BTF (read only when vmlinux lacks the name).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

from bpfshare.errors import BpfshareError
from bpfshare.object.btf import Kind
from bpfshare.object.externs import type_shape
from bpfshare.object.kernel_btf import KernelType, kernel_btf

KALLSYMS = Path("/proc/kallsyms")


def find_ksym_btf_id(name: str, kind: Kind) -> KernelType | None:
    """The kernel's BTF VAR or FUNC called ``name`` (vmlinux's, else a module's); None if none."""
    kbtf = kernel_btf()
    found = kbtf.find(name, kind) or kbtf.find(name, kind, modules=True)
    return found[0] if found else None


def kernel_type_shape(found: KernelType) -> str:
    """The type of the kernel VAR ``found`` (a FUNC: its prototype), as ``type_shape`` writes it."""
    return type_shape(found.btf, found.btf.type(found.id).size_or_type)


def kallsyms(names: set[str]) -> dict[str, int]:
    """Addresses of ``names`` in /proc/kallsyms (libbpf's bpf_object__read_kallsyms_file).

    A name listed twice at different addresses is ambiguous, and refused, as libbpf does. The file
    (some 5 MiB) is searched for each name rather than split into lines: a few names are wanted.
    """
    try:
        text = KALLSYMS.read_bytes()
    except OSError as exc:
        raise BpfshareError(f"cannot read {KALLSYMS}: {exc.strerror or exc}") from None
    found: dict[str, int] = {}
    for name in names:
        # Lines are "<address> <type> <name>[\t[<module>]]": find " <name>" ending the name.
        needle = b" " + name.encode()
        pos = text.find(needle)
        while pos >= 0:
            end = pos + len(needle)
            if end == len(text) or text[end : end + 1] in (b"\t", b"\n", b" "):
                head = text[text.rfind(b"\n", 0, pos) + 1 : pos].split()
                if len(head) == 2 and len(head[1]) == 1:
                    addr = int(head[0], 16)
                    if found.get(name, addr) != addr:
                        raise BpfshareError(f"ksym {name}: ambiguous in {KALLSYMS} (two addresses)")
                    found[name] = addr
            pos = text.find(needle, pos + 1)
    return found


# libbpf's arch_specific_syscall_pfx.
_SYSCALL_PREFIX = {
    "x86_64": "x64",
    "i686": "ia32",
    "aarch64": "arm64",
    "arm64": "arm64",
    "s390x": "s390",
    "ppc64le": "powerpc",
    "ppc64": "powerpc",
    "riscv64": "riscv",
    "loongarch64": "loongarch",
}


@functools.cache
def has_syscall_wrapper() -> bool:
    """LINUX_HAS_SYSCALL_WRAPPER: whether syscalls are entered through ``__<arch>_sys_*`` wrappers
    (libbpf's probe_kern_syscall_wrapper, which asks the same by kprobing ``__<arch>_sys_bpf``)."""
    prefix = _SYSCALL_PREFIX.get(platform.machine())
    if prefix is None:
        return False
    return bool(kallsyms({f"__{prefix}_sys_bpf"}))
