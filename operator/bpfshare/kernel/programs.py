"""``Program``: a live, verified BPF program (an owned fd), apart from its ``ProgramSpec``.

Loading is two-phase, like libbpf and cilium/ebpf: first without a verifier log (the fast path:
the verifier does not format text it is not asked for), and only on failure again with a log, so
that the error says *why*. The log buffer grows on ENOSPC, guided by the kernel's log_true_size.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Self

from bpfshare.errors import KernelError, VerifierError
from bpfshare.kernel.abi import Cmd, ProgInfoStruct
from bpfshare.kernel.objects import KernelObject, ObjectKind, obj_info
from bpfshare.kernel.syscall import FD, bpf, errno_text, new_attr
from bpfshare.spec import INSN_SIZE, ProgramSpec, kernel_object_name
from bpfshare.types import ProgType, member_or_number

LOG_LEVEL_BRANCHES = 1  # BPF_LOG_LEVEL1: the verifier's reasoning along the failing path
LOG_START = 64 * 1024
LOG_MAX = 16 * 1024 * 1024  # the kernel refuses log_size above UINT_MAX >> 2; 16 MiB is plenty
LOG_TAIL_LINES = 20
FUNC_INFO_SIZE = 8  # struct bpf_func_info
LINE_INFO_SIZE = 16  # struct bpf_line_info


@dataclass(frozen=True)
class ProgramInfo:
    id: int
    tag: str  # 16 hex digits, as bpftool prints it
    type: ProgType  # or the bare number of a type newer than this code (see member_or_number)
    name: str
    map_ids: list[int] = field(default_factory=list)
    btf_id: int = 0
    xlated_len: int = 0
    verified_insns: int = 0

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "tag": self.tag,
            "type": getattr(self.type, "name", str(self.type)),
            "name": self.name,
            "mapIds": list(self.map_ids),
        }


class Program(KernelObject[ProgramInfo]):
    """An open program. Close it (or use ``with``); pins and attachments keep it alive."""

    kind = ObjectKind.PROG

    @classmethod
    def load(
        cls,
        spec: ProgramSpec,
        instructions: bytes,
        name: str | None = None,
        *,
        btf_fd: int | None = None,
        fd_array: Sequence[int] = (),
    ) -> Self:
        """Verify and load ``instructions`` (already bound to map fds) as ``spec`` describes.

        ``btf_fd``: the object's BTF in the kernel, which ``spec.func_info``/``spec.line_info``
        refer to (passed only with it). ``fd_array``: the module BTF fds that kfunc calls name by
        index (their ``off``); index 0 is unused, as libbpf leaves it.

        Raises VerifierError (message: ``loading program X: <errno>: <log tail>``, ``.log``: the full
        log) when the verifier refuses it.
        """
        if len(instructions) % INSN_SIZE or not instructions:
            raise KernelError(
                f"loading program {spec.name!r}: {len(instructions)} bytes is not a whole number of instructions"
            )
        label = name or spec.name
        insns = ctypes.create_string_buffer(instructions, len(instructions))
        license_buf = ctypes.create_string_buffer((spec.license or "").encode() + b"\0")
        func_info = ctypes.create_string_buffer(spec.func_info, max(len(spec.func_info), 1))
        line_info = ctypes.create_string_buffer(spec.line_info, max(len(spec.line_info), 1))
        fds = (ctypes.c_int32 * max(len(fd_array), 1))(*fd_array)

        def attempt(log: ctypes.Array[ctypes.c_char] | None) -> tuple[int, int]:
            attr = new_attr()
            pl = attr.prog_load
            pl.prog_type = int(spec.type)
            pl.insn_cnt = len(instructions) // INSN_SIZE
            pl.insns = ctypes.addressof(insns)
            pl.license = ctypes.addressof(license_buf)
            pl.kern_version = spec.kernel_version
            pl.prog_name = kernel_object_name(label).encode()  # ASCII only
            if spec.expected_attach_type is not None:
                pl.expected_attach_type = int(spec.expected_attach_type)
            if btf_fd is not None:
                pl.prog_btf_fd = btf_fd
                if spec.func_info:
                    pl.func_info_rec_size = FUNC_INFO_SIZE
                    pl.func_info = ctypes.addressof(func_info)
                    pl.func_info_cnt = len(spec.func_info) // FUNC_INFO_SIZE
                if spec.line_info:
                    pl.line_info_rec_size = LINE_INFO_SIZE
                    pl.line_info = ctypes.addressof(line_info)
                    pl.line_info_cnt = len(spec.line_info) // LINE_INFO_SIZE
            if fd_array:
                pl.fd_array = ctypes.addressof(fds)
            if log is not None:
                pl.log_level = LOG_LEVEL_BRANCHES
                pl.log_size = len(log)
                pl.log_buf = ctypes.addressof(log)
            try:
                return bpf(Cmd.PROG_LOAD, attr), 0
            except KernelError as exc:
                return -exc.errno, pl.log_true_size

        fd, _ = attempt(None)
        if fd >= 0:
            return cls(FD(fd))
        first_errno = -fd

        size = LOG_START
        while True:
            log = ctypes.create_string_buffer(size)
            fd, true_size = attempt(log)
            if fd >= 0:  # passed with a log (e.g. a transient ENOMEM/EAGAIN the first time)
                return cls(FD(fd))
            if -fd == errno.ENOSPC and size < LOG_MAX:
                size = min(LOG_MAX, max(size * 4, true_size + 1))
                continue
            break
        err = -fd if -fd != errno.ENOSPC else first_errno
        text = log.value.decode(errors="replace")
        raise _load_error(label, err, text)

    def _summary(self, info: ProgramInfo) -> str:
        return f"id={info.id}, name={info.name!r}, tag={info.tag}"

    def info(self) -> ProgramInfo:
        """What the kernel says about the program, including the IDs of the maps it uses.

        Two calls: the first learns how many map IDs there are, the second fetches them.
        """
        raw = obj_info(self.fd, ProgInfoStruct())
        ids: list[int] = []
        if raw.nr_map_ids:
            for _ in range(3):  # the count cannot change after load, but be exact about it
                count = raw.nr_map_ids
                arr = (ctypes.c_uint32 * count)()
                again = ProgInfoStruct()
                again.nr_map_ids = count
                again.map_ids = ctypes.addressof(arr)
                raw = obj_info(self.fd, again)
                if raw.nr_map_ids <= count:
                    ids = list(arr[: raw.nr_map_ids])
                    break
        return ProgramInfo(
            id=raw.id,
            tag=bytes(raw.tag).hex(),
            type=member_or_number(ProgType, raw.type),
            name=raw.name.decode(errors="replace"),
            map_ids=ids,
            btf_id=raw.btf_id,
            xlated_len=raw.xlated_prog_len,
            verified_insns=raw.verified_insns,
        )

    def test_run(self, data: bytes, repeat: int = 1) -> int:
        """Run the program once on ``data`` (BPF_PROG_TEST_RUN) and return its return value.

        Supported for socket filter, tc, xdp, cgroup_skb and a few other types; handy to check a
        program against its maps without generating traffic.
        """
        buf = ctypes.create_string_buffer(data, max(len(data), 1))
        out = ctypes.create_string_buffer(max(len(data), 1) + 256)
        attr = new_attr()
        attr.test.prog_fd = self.fd
        attr.test.data_in = ctypes.addressof(buf)
        attr.test.data_size_in = len(data)
        attr.test.data_out = ctypes.addressof(out)
        attr.test.data_size_out = len(out)
        attr.test.repeat = repeat
        bpf(Cmd.PROG_TEST_RUN, attr)
        return int(attr.test.retval)


def _load_error(label: str, err: int, log: str) -> KernelError:
    lines = log.rstrip("\n\0").splitlines()
    if not lines:
        hint = ""
        if err == errno.EPERM:
            hint = " (needs CAP_BPF/CAP_NET_ADMIN or root)"
        elif err == errno.EINVAL:
            hint = " (the kernel refused the attributes: program type, attach type or license)"
        return KernelError(f"loading program {label}: {errno_text(err)}{hint}", err)
    tail = "\n".join(lines[-LOG_TAIL_LINES:])
    return VerifierError(f"loading program {label}: {errno_text(err)}:\n{tail}", err, log)
