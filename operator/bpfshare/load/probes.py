"""Feature probes of the running kernel, each run once per process (as libbpf's kernel_supports)."""

from __future__ import annotations

import functools
import platform
import struct

from bpfshare.errors import KernelError
from bpfshare.kernel.programs import Program
from bpfshare.load.kernel_symbols import kallsyms
from bpfshare.object.insn import CALL
from bpfshare.spec import ProgramSpec
from bpfshare.types import ProgType

BPF_FUNC_GET_ATTACH_COOKIE = 174
_CALL = struct.pack("<BBhi", CALL, 0, 0, BPF_FUNC_GET_ATTACH_COOKIE)
_EXIT = struct.pack("<BBhi", 0x95, 0, 0, 0)  # BPF_JMP | BPF_EXIT


@functools.cache
def has_bpf_cookie() -> bool:
    """LINUX_HAS_BPF_COOKIE: libbpf's probe_kern_bpf_cookie, a tracepoint program calling
    bpf_get_attach_cookie, which the kernel loads only if it has the helper."""
    code = _CALL + _EXIT
    spec = ProgramSpec(
        name="probe_cookie",
        section="",
        type=ProgType.Tracepoint,
        expected_attach_type=None,
        instructions=code,
        license="GPL",
    )
    try:
        with Program.load(spec, code):
            return True
    except KernelError:
        return False


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
