"""The object's BTF in the kernel for one load: loaded once, on first need, closed after the load.

libbpf loads an object's BTF once (bpf_object__sanitize_and_load_btf) and hands the same fd to
every map it creates (bpf_map_create's btf_fd) and every program it loads (prog_btf_fd). The kernel
keeps its own reference from each map and program, so the fd is closed when the load is done.

The BTF is optional for maps, as for libbpf ("Error loading .BTF into kernel ... BTF is optional,
ignoring"): a map is then created without it, with a warning, unless its value holds fields only
BTF describes (a timer, a spin lock). A program with callbacks needs it (its func_info refers to
it): the refusal is its error.
"""

from __future__ import annotations

import logging

from bpfshare.errors import KernelError
from bpfshare.kernel.btf import load_btf
from bpfshare.kernel.maps import takes_btf
from bpfshare.kernel.syscall import FD
from bpfshare.spec import MapSpec, ProgramSpec

_log = logging.getLogger(__name__)


class ObjectBtf:
    """BTF fds by blob (one object's maps and programs share one blob: one BTF object)."""

    def __init__(self) -> None:
        self._loaded: dict[bytes, FD | KernelError] = {}

    def _fd(self, data: bytes) -> FD:
        got = self._loaded.get(data)
        if got is None:
            try:
                got = load_btf(data, "the object's BTF")
            except KernelError as exc:
                got = exc
            self._loaded[data] = got
        if isinstance(got, KernelError):
            raise got
        return got

    def for_map(self, spec: MapSpec) -> int | None:
        """The BTF fd to create ``spec``'s map with; None for a map created without BTF."""
        wants = spec.btf is not None and (takes_btf(spec) or (spec.inner is not None and takes_btf(spec.inner)))
        if not wants:
            return None
        assert spec.btf is not None
        warned = spec.btf in self._loaded
        try:
            return int(self._fd(spec.btf))
        except KernelError as exc:
            needs = spec.btf_fields or (spec.inner.btf_fields if spec.inner is not None else ())
            if needs:
                raise KernelError(
                    f"creating map {spec.name!r}: its value holds {', '.join(needs)}, which needs BTF: {exc}",
                    exc.errno,
                ) from None
            if not warned:
                _log.warning("%s; creating the maps without BTF", exc)
            return None

    def for_program(self, program: ProgramSpec) -> int | None:
        """The BTF fd for a program's func_info (programs with callbacks); None for the others."""
        if not program.func_info or program.btf is None:
            return None
        try:
            return int(self._fd(program.btf))
        except KernelError as exc:
            raise KernelError(f"program {program.name!r}: {exc}", exc.errno) from None

    def close(self) -> None:
        for got in self._loaded.values():
            if isinstance(got, FD):
                got.close()
        self._loaded.clear()
