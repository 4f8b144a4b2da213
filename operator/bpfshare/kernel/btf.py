"""Loading an object's BTF into the kernel (BPF_BTF_LOAD).

A program with callbacks needs BTF func_info, which refers to types of a BTF object the kernel
holds (``prog_btf_fd``); a map is created with the key and value types of one (``btf_fd``), which
a value holding a timer or a spin lock needs. Loading is two-phase like programs: without a log first, then with one
so that a refusal says why.
"""

from __future__ import annotations

import ctypes
from ctypes import c_int32, c_uint32, c_uint64

from bpfshare.errors import KernelError
from bpfshare.kernel.syscall import FD, bpf

BPF_BTF_LOAD = 18
LOG_SIZE = 1 << 20


class BtfLoadAttr(ctypes.Structure):
    """union bpf_attr, BPF_BTF_LOAD."""

    _fields_ = [
        ("btf", c_uint64),
        ("btf_log_buf", c_uint64),
        ("btf_size", c_uint32),
        ("btf_log_size", c_uint32),
        ("btf_log_level", c_uint32),
        ("btf_log_true_size", c_uint32),
        ("btf_flags", c_uint32),
        ("btf_token_fd", c_int32),
    ]


def load_btf(data: bytes, what: str) -> FD:
    """Load a BTF blob; ``what`` names it in errors (``BTF of program X``)."""
    buf = ctypes.create_string_buffer(data, len(data))

    def attempt(log: ctypes.Array[ctypes.c_char] | None) -> int:
        attr = BtfLoadAttr()
        attr.btf = ctypes.addressof(buf)
        attr.btf_size = len(data)
        if log is not None:
            attr.btf_log_buf = ctypes.addressof(log)
            attr.btf_log_size = len(log)
            attr.btf_log_level = 1
        return bpf(BPF_BTF_LOAD, attr)

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
