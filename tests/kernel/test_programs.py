"""Program loading: the fast path, verifier rejections with their log, info, pins, IDs."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest

from bpfshare.errors import KernelError, VerifierError
from bpfshare.kernel.maps import Map
from bpfshare.kernel.objects import prog_ids
from bpfshare.kernel.programs import Program
from bpfshare.types import AttachType, ProgType
from tests.kernel.asm import (
    COUNTER_MAP,
    counter_spec,
    read_u64,
    returns,
    simple_spec,
    u32,
    uninitialized_read,
)

pytestmark = pytest.mark.kernel


def test_load_and_info() -> None:
    code = returns(1)
    spec = simple_spec(ProgType.CgroupSkb, code, AttachType.CgroupInetEgress, name="allow-all/v2")
    with Program.load(spec, code) as prog:
        info = prog.info()
        assert info.type is ProgType.CgroupSkb
        assert info.name == "allow_all_v2"
        assert re.fullmatch(r"[0-9a-f]{16}", info.tag)
        assert info.map_ids == []
        assert info.id in set(prog_ids())


def test_map_ids_and_test_run() -> None:
    spec = counter_spec(ProgType.SchedCls, ret=0)
    with Map.create(COUNTER_MAP) as counter:
        code = spec.instructions_with_fds({"counter": counter.fd})
        with Program.load(spec, code, name="counter") as prog:
            assert prog.info().map_ids == [counter.info().id]
            assert prog.info().name == "counter"
            assert prog.test_run(b"\0" * 64, repeat=3) == 0
            assert read_u64(counter.lookup(u32(0))) == 3


def test_same_code_same_tag() -> None:
    code = returns(0)
    spec = simple_spec(ProgType.SchedCls, code)
    with Program.load(spec, code) as a, Program.load(spec, code) as b:
        assert a.info().tag == b.info().tag and a.info().id != b.info().id


def test_verifier_rejection_carries_the_log() -> None:
    code = uninitialized_read()
    spec = simple_spec(ProgType.SchedCls, code, name="bad")
    with pytest.raises(VerifierError) as exc:
        Program.load(spec, code)
    err = exc.value
    assert err.errno == errno.EACCES
    assert str(err).startswith("loading program bad: Permission denied (EACCES):")
    assert "R2 !read_ok" in str(err)
    assert "R2 !read_ok" in err.log and len(err.log) >= len(str(err).split(":\n", 1)[1])


def test_refused_attributes_without_log_are_kernel_errors() -> None:
    code = returns(1)
    # A tcx attach type on a cgroup program: refused before verification, so there is no log.
    spec = simple_spec(ProgType.CgroupSock, code, AttachType.TcxIngress, name="mismatch")
    with pytest.raises(KernelError) as exc:
        Program.load(spec, code)
    assert not isinstance(exc.value, VerifierError)
    assert exc.value.errno == errno.EINVAL and "loading program mismatch" in str(exc.value)


def test_big_log_grows_buffer() -> None:
    """A long program failing at its end: the log outgrows the first buffer and is still whole."""
    from tests.kernel.asm import MOV64_IMM, insn

    code = b"".join(insn(MOV64_IMM, 3 + i % 3, imm=i) for i in range(6000)) + uninitialized_read()
    spec = simple_spec(ProgType.SchedCls, code, name="long")
    with pytest.raises(VerifierError) as exc:
        Program.load(spec, code)
    assert "R2 !read_ok" in str(exc.value)
    assert len(exc.value.log) > 64 * 1024


def test_pin_from_pin_from_id(bpffs: Path) -> None:
    code = returns(0)
    with Program.load(simple_spec(ProgType.SchedCls, code), code) as prog:
        prog.pin(bpffs / "prog")
        prog_id = prog.info().id
    with Program.from_pin(bpffs / "prog") as again:
        assert again.info().id == prog_id
    with Program.from_id(prog_id) as by_id:
        assert by_id.info().id == prog_id
    with Map.create(COUNTER_MAP) as m:
        m.pin(bpffs / "map")
    with pytest.raises(KernelError, match="not a bpf-prog"):
        Program.from_pin(bpffs / "map")
