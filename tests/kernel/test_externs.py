"""Externs, kfuncs and callbacks on the real kernel: each example loads through load_program and
behaves (BPF_PROG_TEST_RUN), and bpftool (libbpf) loads the same object to the same instructions."""

from __future__ import annotations

import gzip
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpfshare.errors import BpfshareError, VerifierError
from bpfshare.load.loader import LoadedProgram, load_program
from bpfshare.object.reader import read_collection
from tests.fixtures.bpftool import libbpf_load, xlated
from tests.fixtures.objects import BpfObjects, CompileBpf

pytestmark = pytest.mark.kernel

PACKET = bytes(64)


def u64s(loaded: LoadedProgram, name: str) -> list[int]:
    live = loaded.maps[name]
    return [struct.unpack("<Q", live.map.lookup(struct.pack("<I", i)))[0] for i in range(live.spec.max_entries)]


@pytest.fixture
def load(bpffs: Path) -> Iterator[object]:
    loaded: list[LoadedProgram] = []

    def load_(path: Path, program: str) -> LoadedProgram:
        lp = load_program(read_collection(path), program, pin_root=bpffs)
        loaded.append(lp)
        return lp

    yield load_
    for lp in loaded:
        lp.close()


def kernel_config() -> dict[str, str]:
    release = os.uname().release
    for path in (Path(f"/boot/config-{release}"), Path("/proc/config.gz")):
        if path.exists():
            raw = path.read_bytes()
            text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode()
            return dict(line.split("=", 1) for line in text.splitlines() if line.startswith("CONFIG_"))
    pytest.skip("no kernel configuration to compare with")


def kallsyms(name: str) -> int:
    for line in Path("/proc/kallsyms").read_text().splitlines():
        parts = line.split()
        if parts[2] == name:
            return int(parts[0], 16)
    raise AssertionError(f"{name} not in /proc/kallsyms")


def test_kconfig_values_are_the_kernels(bpf_objects: BpfObjects, load) -> None:  # type: ignore[no-untyped-def]
    lp = load(bpf_objects["extern_kconfig"], "read_kconfig")
    assert lp.program.test_run(PACKET) == 0
    config = kernel_config()
    hz, version, wrapper, cookie, syscall, jit, hostname0, missing = u64s(lp, "kconfig_out")
    assert hz == int(config["CONFIG_HZ"])
    major, minor, patch = (int(x) for x in re.match(r"(\d+)\.(\d+)\.?(\d*)", os.uname().release).groups("0"))  # type: ignore[union-attr]
    assert version == (major << 16) + (minor << 8) + min(patch, 255)
    assert wrapper == 1 and cookie == 1  # x86-64 6.x: both
    assert syscall == 1
    assert jit == {"y": 1, "m": 2}.get(config.get("CONFIG_BPF_JIT", "n"), 0)
    assert hostname0 == ord(config["CONFIG_DEFAULT_HOSTNAME"].strip('"')[:1] or "\0")
    assert missing == 0  # __weak and in no configuration


def test_missing_kconfig_value_is_named(compile_bpf: CompileBpf, load) -> None:  # type: ignore[no-untyped-def]
    src = """
    extern int CONFIG_BPFSHARE_NOT_A_REAL_OPTION __kconfig;
    SEC("tc") int reads(struct __sk_buff *skb) { return CONFIG_BPFSHARE_NOT_A_REAL_OPTION; }
    char LICENSE[] SEC("license") = "GPL";
    """
    with pytest.raises(
        BpfshareError,
        match=r"^extern \(kconfig\) CONFIG_BPFSHARE_NOT_A_REAL_OPTION: not set in the kernel's configuration \(/",
    ):
        load(compile_bpf(src), "reads")


def test_ksyms_typeless_typed_and_weak(bpf_objects: BpfObjects, load) -> None:  # type: ignore[no-untyped-def]
    lp = load(bpf_objects["extern_ksym"], "read_ksyms")
    assert lp.program.test_run(PACKET) == 0
    addr, kfunc_exists, missing_symbol, missing_var = u64s(lp, "ksym_out")
    assert addr == kallsyms("bpf_prog_put") != 0
    assert kfunc_exists == 1
    assert missing_symbol == 0 and missing_var == 0


def test_typed_ksym_variable_reaches_the_kernel_by_btf_id(bpf_objects: BpfObjects, load) -> None:  # type: ignore[no-untyped-def]
    """The kernel takes the per-CPU variable by BTF id; it then needs its address, which only a
    CONFIG_KALLSYMS_ALL kernel has (libbpf fails the same way)."""
    if kernel_config().get("CONFIG_KALLSYMS_ALL") == "y":
        lp = load(bpf_objects["extern_ksym_var"], "read_percpu")
        assert lp.program.test_run(PACKET) >= 1000
        return
    with pytest.raises(VerifierError, match="failed to find the address for kernel symbol 'bpf_prog_active'"):
        load(bpf_objects["extern_ksym_var"], "read_percpu")


def test_kfunc_calls(bpf_objects: BpfObjects, load) -> None:  # type: ignore[no-untyped-def]
    lp = load(bpf_objects["extern_kfunc"], "call_kfuncs")
    assert lp.program.test_run(PACKET) == 45
    assert u64s(lp, "result") == [45]


def test_weak_kfuncs(bpf_objects: BpfObjects, load) -> None:  # type: ignore[no-untyped-def]
    """The missing weak kfunc tests false and its poisoned call is dead code; the present one runs."""
    lp = load(bpf_objects["extern_kfunc_weak"], "weak_kfuncs")
    assert lp.program.test_run(PACKET) == 2


def test_missing_kfunc_and_reachable_poisoned_call(compile_bpf: CompileBpf, load) -> None:  # type: ignore[no-untyped-def]
    strong = """
    extern void bpfshare_no_such_kfunc(void) __ksym;
    SEC("tc") int calls(struct __sk_buff *skb) { bpfshare_no_such_kfunc(); return 0; }
    char LICENSE[] SEC("license") = "GPL";
    """
    with pytest.raises(BpfshareError, match=r"^kfunc bpfshare_no_such_kfunc: not in the kernel's BTF$"):
        load(compile_bpf(strong), "calls")
    weak = strong.replace("__ksym;", "__ksym __weak;")
    with pytest.raises(VerifierError, match=r"invalid func unknown#2002000000"):
        load(compile_bpf(weak), "calls")


def test_callbacks(bpf_objects: BpfObjects, load) -> None:  # type: ignore[no-untyped-def]
    lp = load(bpf_objects["callback_loop"], "sum_with_callbacks")
    assert lp.program.test_run(PACKET) == 45 * 1000
    values = lp.maps["values"].map
    for i in range(4):
        values.update(struct.pack("<I", i), struct.pack("<Q", 10**i))
    assert lp.program.test_run(PACKET) == 45 * 1000 + 1111
    assert lp.program.info().btf_id != 0  # loaded with the object's BTF (func_info)


def test_callback_in_a_global_subprogram(bpf_objects: BpfObjects, load) -> None:  # type: ignore[no-untyped-def]
    lp = load(bpf_objects["callback_nested"], "nested_callbacks")
    assert lp.program.test_run(PACKET) == 21
    assert u64s(lp, "result") == [21]


def test_program_without_callbacks_loads_as_before(bpf_objects: BpfObjects, load) -> None:  # type: ignore[no-untyped-def]
    lp = load(bpf_objects["features"], "count_features")
    assert lp.program.info().btf_id == 0  # no BTF passed, as before callbacks were supported
    assert lp.program.test_run(PACKET) == 0


def same_xlated(lp: LoadedProgram, theirs: Path) -> str:
    """Our pinned program's ``dump xlated`` (with func_info/line_info when it has them), asserted the
    same as that of the program bpftool pinned at ``theirs``; non-trivial."""
    with_btf = bool(lp.spec.func_info)
    ours = xlated("pinned", str(lp.pin_path), with_btf=with_btf)
    assert ours == xlated("pinned", str(theirs), with_btf=with_btf)
    assert len(ours.splitlines()) > 10
    return ours


# -- the same instructions as libbpf -------------------------------------------------------------
@pytest.mark.parametrize(
    ("example", "program"),
    [
        ("extern_kconfig", "read_kconfig"),
        ("extern_ksym", "read_ksyms"),
        ("extern_kfunc", "call_kfuncs"),
        ("extern_kfunc_weak", "weak_kfuncs"),
        ("callback_loop", "sum_with_callbacks"),
        ("callback_nested", "nested_callbacks"),
    ],
)
def test_same_xlated_as_bpftool(bpf_objects: BpfObjects, bpffs: Path, load, example: str, program: str) -> None:  # type: ignore[no-untyped-def]
    pin = bpffs / f"bpftool_{example}"
    libbpf_load(bpf_objects[example], pin)
    ours = same_xlated(load(bpf_objects[example], program), pin)
    if example == "callback_loop":  # func_info and line_info as libbpf passes them: names, source lines
        assert "int add_index(__u32 index, void * data):" in ours
        assert "; ctx->sum += index;" in ours


def test_every_examples_btf_is_accepted_by_the_kernel(bpf_objects: BpfObjects, compile_bpf: CompileBpf) -> None:
    """The sanitized BTF (what a program with callbacks is loaded with) passes BPF_BTF_LOAD for
    every example, and for an object with every kind of extern and unnamed parameters."""
    from bpfshare.kernel.btf import load_btf
    from bpfshare.object.btf import Btf
    from bpfshare.object.elf import ElfObject
    from bpfshare.object.link_inputs import LinkInputs

    snippet = compile_bpf(
        """
        extern int twice(int);
        extern void bpf_rcu_read_lock(void) __ksym;
        extern int bpf_iter_num_new(void *, int, int) __ksym __weak;
        extern const int bpf_prog_active __ksym;
        extern const void bpf_prog_put __ksym;
        extern int CONFIG_HZ __kconfig;
        extern char CONFIG_DEFAULT_HOSTNAME[8] __kconfig __weak;
        const volatile int limit = 3;
        SEC("tc") int many(struct __sk_buff *skb) {
            bpf_printk("hz %d", CONFIG_HZ);
            bpf_rcu_read_lock();
            long addrs = (long)&bpf_prog_active + (long)&bpf_prog_put + (long)bpf_iter_num_new;
            return twice(limit) + CONFIG_DEFAULT_HOSTNAME[0] + addrs;
        }
        char LICENSE[] SEC("license") = "GPL";
        """
    )
    for path in [*bpf_objects.paths(), snippet]:
        elf = ElfObject(path.read_bytes())
        btf = Btf(elf.data(elf.by_name[".BTF"]))
        if path == snippet:  # every extern is in the BTF the kernel is given
            names = {btf.name(t) for t in btf.types}
            assert {"twice", "bpf_rcu_read_lock", "bpf_iter_num_new", "bpf_prog_active", "bpf_prog_put"} <= names
        load_btf(LinkInputs(elf, lambda btf=btf: btf).program_btf, path.name).close()
