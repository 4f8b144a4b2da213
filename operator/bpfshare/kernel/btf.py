"""Loading an object's BTF into the kernel (BPF_BTF_LOAD).

A program with callbacks needs BTF func_info, which refers to types of a BTF object the kernel
holds (``prog_btf_fd``); a map is created with the key and value types of one (``btf_fd``), which
a value holding a timer or a spin lock needs. Loading is two-phase like programs: without a log first, then with one
so that a refusal says why.
"""

from __future__ import annotations

import ctypes

from bpfshare.errors import KernelError
from bpfshare.kernel.abi import Cmd
from bpfshare.kernel.syscall import FD, bpf, new_attr

LOG_SIZE = 1 << 20


def load_btf(data: bytes, what: str) -> FD:
    """Load a BTF blob; ``what`` names it in errors (``BTF of program X``)."""
    buf = ctypes.create_string_buffer(data, len(data))

    def attempt(log: ctypes.Array[ctypes.c_char] | None) -> int:
        attr = new_attr()
        load = attr.btf_load
        load.btf = ctypes.addressof(buf)
        load.btf_size = len(data)
        if log is not None:
            load.btf_log_buf = ctypes.addressof(log)
            load.btf_log_size = len(log)
            load.btf_log_level = 1
        return bpf(Cmd.BTF_LOAD, attr)

    try:
        return FD(attempt(None))
    except KernelError:
        pass
    log = ctypes.create_string_buffer(LOG_SIZE)
    try:
        return FD(attempt(log))
    except KernelError as exc:
        lines = log.value.decode(errors="replace").strip().splitlines()
        reason = f": {lines[-1]}" if lines else ""
        raise KernelError(f"loading {what}: {exc}{reason}", exc.errno) from None
