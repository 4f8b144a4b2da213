"""Feature probes of the running kernel, each run once per process (as libbpf's kernel_supports)."""

from __future__ import annotations

import functools
import struct

from bpfshare.errors import KernelError
from bpfshare.kernel.programs import Program
from bpfshare.spec import ProgramSpec
from bpfshare.types import ProgType

BPF_FUNC_GET_ATTACH_COOKIE = 174
_CALL = struct.pack("<BBhi", 0x85, 0, 0, BPF_FUNC_GET_ATTACH_COOKIE)
_EXIT = struct.pack("<BBhi", 0x95, 0, 0, 0)


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
