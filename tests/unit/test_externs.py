"""Externs, kfuncs and callbacks in the object (no kernel): what the linker records, the kconfig
parser, and the extern resolver fed with a made-up kernel."""

from __future__ import annotations

import struct

import pytest

from bpfshare.errors import BpfshareError, ObjectError, UnsupportedError
from bpfshare.load import externs as resolver
from bpfshare.load.kconfig import KconfigError, apply_config, kconfig_contents, kernel_version, parse_u64
from bpfshare.object.btf import Btf, Kind
from bpfshare.object.externs import BTF_FUNC_EXTERN, BTF_VAR_GLOBAL_EXTERN, var_linkage
from bpfshare.object.kernel_btf import KernelType
from bpfshare.object.reader import read_collection
from bpfshare.spec import KCONFIG_MAP, ExternKind, KconfigExtern, KconfigType, RelocationKind
from bpfshare.types import MapFlag, MapType
from tests.fixtures.objects import BpfObjects, CompileBpf

CALL, LD_IMM64 = 0x85, 0x18


def insn(code: bytes, index: int) -> tuple[int, int, int, int, int]:
    """(opcode, dst, src, off, imm) of instruction ``index``."""
    op, regs, off, imm = struct.unpack_from("<BBhi", code, index * 8)
    return op, regs & 0xF, regs >> 4, off, imm


# -- __kconfig ------------------------------------------------------------------------------------
def test_kconfig_externs_are_laid_out_as_libbpf_does(bpf_objects: BpfObjects) -> None:
    """Descending alignment, then ascending size, then name (libbpf's cmp_externs): the offsets
    bpftool prog dump xlated shows for the same object under bpftool."""
    spec = read_collection(bpf_objects["extern_kconfig"])
    layout = {k.name: (k.offset, k.size, k.type) for k in spec.kconfig}
    assert layout == {
        "CONFIG_BPFSHARE_MISSING": (0, 4, KconfigType.INT),
        "CONFIG_BPF_JIT": (4, 4, KconfigType.TRISTATE),
        "CONFIG_HZ": (8, 4, KconfigType.INT),
        "LINUX_KERNEL_VERSION": (12, 4, KconfigType.INT),
        "CONFIG_BPF_SYSCALL": (16, 1, KconfigType.BOOL),
        "LINUX_HAS_BPF_COOKIE": (17, 1, KconfigType.BOOL),
        "LINUX_HAS_SYSCALL_WRAPPER": (18, 1, KconfigType.BOOL),
        "CONFIG_DEFAULT_HOSTNAME": (19, 16, KconfigType.CHAR_ARRAY),
    }
    assert [k.name for k in spec.kconfig if k.weak] == ["CONFIG_BPFSHARE_MISSING"]
    kmap = spec.maps[KCONFIG_MAP]
    assert (kmap.type, kmap.key_size, kmap.value_size, kmap.max_entries) == (MapType.Array, 4, 40, 1)
    assert kmap.flags & MapFlag.RdonlyProg
    prog = spec.programs["read_kconfig"]
    kconfig_refs = [r for r in prog.relocations if r.map_name == KCONFIG_MAP]
    assert [r.offset for r in kconfig_refs] == [8, 12, 18, 17, 16, 4, 19, 0]  # source order of the reads
    assert {r.kind for r in kconfig_refs} == {RelocationKind.MAP_VALUE}
    assert prog.externs == () and prog.btf is None


def test_kconfig_of_an_unsupported_type_is_refused(compile_bpf: CompileBpf) -> None:
    src = """
    struct pair { int a, b; };
    extern struct pair CONFIG_PAIR __kconfig;
    SEC("tc") int uses(struct __sk_buff *skb) { return CONFIG_PAIR.a; }
    char LICENSE[] SEC("license") = "GPL";
    """
    with pytest.raises(UnsupportedError, match=r"extern \(kconfig\) 'CONFIG_PAIR': type struct 'pair'"):
        read_collection(compile_bpf(src))


KCFG = {
    "CONFIG_Y": KconfigExtern("CONFIG_Y", 0, 1, KconfigType.BOOL),
    "CONFIG_M": KconfigExtern("CONFIG_M", 1, 4, KconfigType.TRISTATE),
    "CONFIG_C": KconfigExtern("CONFIG_C", 5, 1, KconfigType.CHAR),
    "CONFIG_S": KconfigExtern("CONFIG_S", 6, 4, KconfigType.CHAR_ARRAY),
    "CONFIG_HEX": KconfigExtern("CONFIG_HEX", 10, 2, KconfigType.INT),
    "CONFIG_NEG": KconfigExtern("CONFIG_NEG", 12, 4, KconfigType.INT, signed=True),
}
CONFIG = """#
# Automatically generated file; DO NOT EDIT.
CONFIG_Y=y
CONFIG_M=m
# CONFIG_UNSET is not set
CONFIG_C=n
CONFIG_S="hello"
CONFIG_HEX=0x1234
CONFIG_NEG=-5
CONFIG_Y=n
"""


def test_kconfig_values_are_encoded_by_type() -> None:
    out: dict[str, bytes] = {}
    apply_config(CONFIG, KCFG, out)
    assert out == {
        "CONFIG_Y": b"\x01",  # the first value wins
        "CONFIG_M": (2).to_bytes(4, "little"),  # TRI_MODULE
        "CONFIG_C": b"n",
        "CONFIG_S": b"hel\0",  # cut to the array, NUL-terminated
        "CONFIG_HEX": b"\x34\x12",
        "CONFIG_NEG": (-5 % (1 << 32)).to_bytes(4, "little"),
    }


@pytest.mark.parametrize(
    ("ext", "line", "error"),
    [
        (KconfigExtern("CONFIG_X", 0, 1, KconfigType.BOOL), "CONFIG_X=m", "does not fit a bool"),
        (KconfigExtern("CONFIG_X", 0, 4, KconfigType.INT), "CONFIG_X=y", "implies a tristate or char"),
        (KconfigExtern("CONFIG_X", 0, 4, KconfigType.INT), 'CONFIG_X="a"', "implies a char array"),
        (KconfigExtern("CONFIG_X", 0, 1, KconfigType.INT), "CONFIG_X=256", "does not fit in 1 bytes"),
        (KconfigExtern("CONFIG_X", 0, 1, KconfigType.INT, signed=True), "CONFIG_X=128", "does not fit"),
        (KconfigExtern("CONFIG_X", 0, 4, KconfigType.INT), "CONFIG_X=12abc", "not a valid integer"),
        (KconfigExtern("CONFIG_X", 0, 4, KconfigType.CHAR_ARRAY), "CONFIG_X=5", "implies an integer"),
        (KconfigExtern("CONFIG_X", 0, 4, KconfigType.INT), "CONFIG_X=", "no value"),
    ],
)
def test_kconfig_value_of_the_wrong_type_is_named(ext: KconfigExtern, line: str, error: str) -> None:
    with pytest.raises(KconfigError, match=rf"extern \(kconfig\) CONFIG_X: .*{error}"):
        apply_config(line, {ext.name: ext}, {})


def test_kconfig_contents_missing_weak_virtual() -> None:
    externs = [
        KconfigExtern("CONFIG_Y", 0, 1, KconfigType.BOOL),
        KconfigExtern("CONFIG_ABSENT", 4, 4, KconfigType.INT, weak=True),
        KconfigExtern("LINUX_KERNEL_VERSION", 8, 4, KconfigType.INT),
        KconfigExtern("LINUX_HAS_BPF_COOKIE", 12, 1, KconfigType.BOOL),
        KconfigExtern("LINUX_SOMETHING_NEW", 13, 1, KconfigType.BOOL, weak=True),
    ]
    virtual = {"LINUX_KERNEL_VERSION": kernel_version("6.18.44-fc-v1045"), "LINUX_HAS_BPF_COOKIE": 1}
    data = kconfig_contents(externs, 16, config=lambda: (CONFIG, "test"), virtual=virtual.get)
    assert data[0] == 1 and data[4:8] == bytes(4) and data[12] == 1 and data[13] == 0
    assert struct.unpack_from("<I", data, 8)[0] == (6 << 16) + (18 << 8) + 44
    strong = [KconfigExtern("CONFIG_ABSENT", 0, 4, KconfigType.INT)]
    with pytest.raises(KconfigError, match=r"CONFIG_ABSENT: not set in the kernel's configuration \(test\)"):
        kconfig_contents(strong, 8, config=lambda: (CONFIG, "test"), virtual=virtual.get)
    unknown = [KconfigExtern("LINUX_SOMETHING_NEW", 0, 1, KconfigType.BOOL)]
    with pytest.raises(KconfigError, match="LINUX_SOMETHING_NEW: not a Kconfig value"):
        kconfig_contents(unknown, 8, config=lambda: (CONFIG, "test"), virtual=virtual.get)
    # no CONFIG_ value: the configuration file is not even read
    kconfig_contents(externs[2:4], 16, config=lambda: pytest.fail("read"), virtual=virtual.get)  # type: ignore[arg-type,return-value]


def test_kernel_version_and_numbers() -> None:
    assert kernel_version("5.10.300") == (5 << 16) + (10 << 8) + 255  # patch capped, as libbpf
    assert kernel_version("6.1") == (6 << 16) + (1 << 8)
    assert [parse_u64(t) for t in ("10", "0x10", "010", "0", "-1", "1e3", "")] == [
        10,
        16,
        8,
        0,
        (1 << 64) - 1,
        None,
        None,
    ]


# -- __ksym and kfuncs ----------------------------------------------------------------------------
def test_ksym_externs_are_recorded(bpf_objects: BpfObjects) -> None:
    prog = read_collection(bpf_objects["extern_ksym"]).programs["read_ksyms"]
    got = {(e.name, e.kind, e.typed, e.is_func, e.weak) for e in prog.externs}
    assert got == {
        ("bpf_prog_put", ExternKind.KSYM, False, False, False),
        ("bpf_rcu_read_lock", ExternKind.KSYM, True, True, True),
        ("bpfshare_missing_symbol", ExternKind.KSYM, False, False, True),
        ("bpfshare_missing_var", ExternKind.KSYM, True, False, True),
    }
    for ext in prog.externs:
        op, _dst, src, _off, imm = insn(prog.instructions, ext.insn)
        assert (op, src, imm) == (LD_IMM64, 0, 0)
        assert insn(prog.instructions, ext.insn + 1)[4] == 0


def test_kfunc_calls_are_recorded(bpf_objects: BpfObjects) -> None:
    prog = read_collection(bpf_objects["extern_kfunc"]).programs["call_kfuncs"]
    calls = [e for e in prog.externs if e.kind is ExternKind.KFUNC_CALL]
    assert [e.name for e in calls] == [
        "bpf_rcu_read_lock",
        "bpf_rcu_read_unlock",
        "bpf_iter_num_new",
        "bpf_iter_num_next",
        "bpf_iter_num_next",
        "bpf_iter_num_destroy",
    ]
    for ext in calls:
        assert insn(prog.instructions, ext.insn)[:3] == (CALL, 0, 2)  # src_reg BPF_PSEUDO_KFUNC_CALL


def test_extern_function_for_the_static_linker_is_named(compile_bpf: CompileBpf) -> None:
    """Item 7: an undefined function without __ksym is not a kfunc."""
    src = """
    extern int twice(int x);
    SEC("tc") int call_extern(struct __sk_buff *skb) { return twice(skb->len); }
    char LICENSE[] SEC("license") = "GPL";
    """
    with pytest.raises(UnsupportedError) as exc:
        read_collection(compile_bpf(src)).program("call_extern")  # refused: that program only
    text = str(exc.value)
    assert "function 'twice' (called in program 'call_extern' (section tc) instruction" in text
    assert "is extern: link the object with bpftool gen object / the static linker first" in text
    assert "kfunc call" not in text


def test_extern_variable_declared_neither_ksym_nor_kconfig(compile_bpf: CompileBpf) -> None:
    src = """
    extern int shared_value;
    SEC("tc") int reads(struct __sk_buff *skb) { return shared_value; }
    char LICENSE[] SEC("license") = "GPL";
    """
    with pytest.raises(
        UnsupportedError, match=r"extern variable 'shared_value' used by program 'reads'.*neither __ksym"
    ):
        read_collection(compile_bpf(src)).program("reads")


def kernel_type(type_id: int, module: str = "") -> KernelType:
    """A kernel type found in no real BTF: the tests replace the prototype check too."""
    return KernelType(None, type_id, module)  # type: ignore[arg-type]


class FakeKernel:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.btf = {
            ("bpf_rcu_read_lock", Kind.FUNC): kernel_type(65401),
            ("bpf_prog_active", Kind.VAR): kernel_type(13793),
        }
        self.syms = {"bpf_prog_put": 0xFFFFFFFF814E6BB0}
        monkeypatch.setattr(resolver, "find_ksym_btf_id", lambda name, kind: self.btf.get((name, kind)))
        monkeypatch.setattr(resolver, "kallsyms", lambda names: {n: a for n, a in self.syms.items() if n in names})
        self.protos = {65401: "()void", 13793: "int"}
        monkeypatch.setattr(resolver, "kernel_type_shape", lambda found: self.protos[found.id])


def test_resolution_of_ksyms(bpf_objects: BpfObjects, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeKernel(monkeypatch)
    prog = read_collection(bpf_objects["extern_ksym"]).programs["read_ksyms"]
    code = resolver.resolve_externs(prog, prog.instructions).instructions
    at = {e.name: e.insn for e in prog.externs}
    # typeless: the address, low then high half
    lo, hi = insn(code, at["bpf_prog_put"])[4], insn(code, at["bpf_prog_put"] + 1)[4]
    assert (lo % (1 << 32)) | (hi % (1 << 32)) << 32 == 0xFFFFFFFF814E6BB0
    # typed (a FUNC whose address is taken): BPF_PSEUDO_BTF_ID with the id, vmlinux (fd 0)
    assert insn(code, at["bpf_rcu_read_lock"])[2:] == (3, 0, 65401)
    assert insn(code, at["bpf_rcu_read_lock"] + 1)[4] == 0
    # weak and missing: a plain ld_imm64 of 0
    for name in ("bpfshare_missing_symbol", "bpfshare_missing_var"):
        assert insn(code, at[name])[2:] == (0, 0, 0) and insn(code, at[name] + 1)[4] == 0


def test_resolution_of_kfuncs_weak_and_missing(
    bpf_objects: BpfObjects, compile_bpf: CompileBpf, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = FakeKernel(monkeypatch)
    prog = read_collection(bpf_objects["extern_kfunc_weak"]).programs["weak_kfuncs"]
    code = resolver.resolve_externs(prog, prog.instructions).instructions
    calls = {e.name: insn(code, e.insn) for e in prog.externs if e.kind is ExternKind.KFUNC_CALL}
    # poisoned as libbpf's poison_kfunc_call: an unknown helper, named if reachable
    op, _dst, src, off, imm = calls["bpfshare_missing_kfunc"]
    assert (op, src, off) == (CALL, 0, 0) and imm >= resolver.POISON_CALL_KFUNC_BASE
    op, _dst, src, off, imm = calls["bpf_rcu_read_lock"]
    assert (op, src, off, imm) == (CALL, 2, 0, 65401)
    # bpf_rcu_read_unlock is weak and not in this fake kernel: poisoned too
    assert calls["bpf_rcu_read_unlock"][4] >= resolver.POISON_CALL_KFUNC_BASE
    # a strong kfunc the kernel lacks is named
    src = """
    extern void bpfshare_no_such_kfunc(void) __ksym;
    SEC("tc") int calls(struct __sk_buff *skb) { bpfshare_no_such_kfunc(); return 0; }
    char LICENSE[] SEC("license") = "GPL";
    """
    prog = read_collection(compile_bpf(src)).programs["calls"]
    with pytest.raises(BpfshareError, match=r"^kfunc bpfshare_no_such_kfunc: not in the kernel's BTF$"):
        resolver.resolve_externs(prog, prog.instructions)
    del kernel.syms["bpf_prog_put"]
    prog = read_collection(bpf_objects["extern_ksym"]).programs["read_ksyms"]
    with pytest.raises(BpfshareError, match=r"^ksym bpf_prog_put: not in /proc/kallsyms$"):
        resolver.resolve_externs(prog, prog.instructions)


def test_kfunc_prototype_must_match_the_kernels(
    bpf_objects: BpfObjects, compile_bpf: CompileBpf, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libbpf's bpf_core_types_are_compat on the prototypes: a strong mismatch is named, a weak
    one is left unresolved (its call poisoned)."""
    kernel = FakeKernel(monkeypatch)
    kernel.protos[65401] = "(int)void"
    src = """
    extern void bpf_rcu_read_lock(void) __ksym;
    SEC("tc") int calls(struct __sk_buff *skb) { bpf_rcu_read_lock(); return 0; }
    char LICENSE[] SEC("license") = "GPL";
    """
    prog = read_collection(compile_bpf(src)).programs["calls"]
    with pytest.raises(
        BpfshareError,
        match=r"^kfunc bpf_rcu_read_lock: declared as \(\)void, incompatible with the kernel's \(int\)void$",
    ):
        resolver.resolve_externs(prog, prog.instructions)
    # a typed variable of the wrong type is refused, weak or not (libbpf: "incompatible types")
    kernel.protos[13793] = "*struct"
    prog = read_collection(bpf_objects["extern_ksym_var"]).programs["read_percpu"]
    with pytest.raises(
        BpfshareError, match=r"^ksym bpf_prog_active: declared as int, incompatible with the kernel's \*struct$"
    ):
        resolver.resolve_externs(prog, prog.instructions)
    prog = read_collection(bpf_objects["extern_kfunc_weak"]).programs["weak_kfuncs"]
    code = resolver.resolve_externs(prog, prog.instructions).instructions
    lock = next(e for e in prog.externs if e.name == "bpf_rcu_read_lock" and e.kind is ExternKind.KFUNC_CALL)
    assert insn(code, lock.insn)[4] >= resolver.POISON_CALL_KFUNC_BASE


def test_prototype_shapes(compile_bpf: CompileBpf) -> None:
    src = """
    struct opaque;
    typedef unsigned int u32_t;
    enum e { A };
    extern int *k1(struct __sk_buff *skb, const u32_t n, enum e v, char (*arr)[4]) __ksym;
    extern void k2(struct opaque *o, void *data) __ksym;
    SEC("tc") int calls(struct __sk_buff *skb) { k2(0, 0); return *k1(skb, 1, A, 0); }
    char LICENSE[] SEC("license") = "GPL";
    """
    prog = read_collection(compile_bpf(src)).programs["calls"]
    protos = {e.name: e.proto for e in prog.externs}
    assert protos == {"k1": "(*struct,int,enum,*[]int)*int", "k2": "(*fwd,*void)void"}


# -- callbacks -----------------------------------------------------------------------------------
def test_callbacks_are_linked_with_func_info(bpf_objects: BpfObjects) -> None:
    spec = read_collection(bpf_objects["callback_loop"])
    prog = spec.programs["sum_with_callbacks"]
    code = prog.instructions
    count = len(code) // 8
    funcs = [struct.unpack_from("<II", prog.func_info, n) for n in range(0, len(prog.func_info), 8)]
    starts = [f[0] for f in funcs]
    assert len(funcs) == 3 and starts[0] == 0 and starts == sorted(starts) and starts[-1] < count
    # each BPF_PSEUDO_FUNC ld_imm64 points at the start of an appended callback
    targets = []
    for i in range(count):
        op, _dst, src, _off, imm = insn(code, i)
        if op == LD_IMM64 and src == 4:
            targets.append(i + imm + 1)
    assert sorted(targets) == starts[1:]
    btf = Btf(prog.btf or b"")
    names = {btf.name(btf.type(type_id)) for _off, type_id in funcs}
    assert names == {"sum_with_callbacks", "add_index", "add_value"}
    lines = [struct.unpack_from("<I", prog.line_info, n)[0] for n in range(0, len(prog.line_info), 16)]
    assert lines and lines[0] == 0 and lines == sorted(lines) and set(starts) <= set(lines)


def test_sanitized_btf_has_no_externs_and_sized_datasecs(bpf_objects: BpfObjects, compile_bpf: CompileBpf) -> None:
    src = """
    extern int CONFIG_HZ __kconfig;
    extern void bpf_rcu_read_lock(void) __ksym;
    extern int bpf_iter_num_new(void *it, int start, int end) __ksym;
    extern const int bpf_prog_active __ksym;
    int counter;
    static int step(__u32 i, void *ctx) { counter += i; return 0; }
    SEC("tc") int mixed(struct __sk_buff *skb) {
        bpf_rcu_read_lock();
        bpf_loop(CONFIG_HZ, step, 0, 0);
        return (long)&bpf_prog_active + (long)bpf_iter_num_new;
    }
    char LICENSE[] SEC("license") = "GPL";
    """
    prog = read_collection(compile_bpf(src)).programs["mixed"]
    assert prog.btf is not None
    btf = Btf(prog.btf)
    for t in btf.types:
        if t.kind is Kind.VAR:
            assert var_linkage(btf, t) != BTF_VAR_GLOBAL_EXTERN, btf.describe(t)
        if t.kind is Kind.FUNC:
            assert t.vlen != BTF_FUNC_EXTERN, btf.describe(t)
            proto = btf.type(t.size_or_type)
            params = struct.iter_unpack("<II", btf.types_data[proto.extra : proto.extra + 8 * proto.vlen])
            assert all(name for name, typ in params if typ), f"{btf.describe(t)}: an unnamed parameter"
        if t.kind is Kind.DATASEC:
            infos = btf.secinfo(t)
            assert t.size_or_type > 0, btf.describe(t)
            assert [i.offset for i in infos] == sorted(i.offset for i in infos)
            assert all(i.offset + i.size <= t.size_or_type for i in infos), btf.describe(t)
            assert all(btf.type(i.type).kind is Kind.VAR for i in infos)
    bss = btf.datasec(".bss")
    assert bss is not None and bss.size_or_type == 4


def test_program_without_callbacks_gets_no_btf(bpf_objects: BpfObjects) -> None:
    """Programs the kernel loads without BTF keep loading without it (as before callbacks)."""
    for name in ("features", "flow_counter", "extern_kfunc"):
        for prog in read_collection(bpf_objects[name]).programs.values():
            assert (prog.func_info, prog.line_info, prog.btf) == (b"", b"", None), prog.name


def test_truncated_func_info_is_an_object_error(bpf_objects: BpfObjects) -> None:
    from bpfshare.object.elf import ElfObject

    data = bytearray(bpf_objects["callback_loop"].read_bytes())
    sec = ElfObject(bytes(data)).by_name[".BTF.ext"]
    struct.pack_into("<I", data, sec.offset + 12, 0xFFFF)  # func_info_len
    with pytest.raises(ObjectError, match=r"\.BTF\.ext func_info: subsection .* out of bounds"):
        read_collection(bytes(data)).program("sum_with_callbacks")  # refused as malformed


def test_module_kfuncs_go_through_fd_array(bpf_objects: BpfObjects, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kfunc of a module's BTF: its call's off is its module BTF fd's index in fd_array, which
    starts at 1 (0 means vmlinux), one slot per module, as libbpf's bpf_object__resolve_ksym_func_btf_id."""
    opened: list[int] = []

    class FakeFd:
        def __init__(self, fd: int) -> None:
            self.fd = fd

        def __int__(self) -> int:
            return self.fd

        def close(self) -> None:
            opened.remove(self.fd)

    def module_fd(module: str) -> FakeFd:
        opened.append(107)
        return FakeFd(107)

    ids = {"bpf_rcu_read_lock": kernel_type(70001, "mod_a"), "bpf_rcu_read_unlock": kernel_type(70002, "mod_a")}
    monkeypatch.setattr(resolver, "find_ksym_btf_id", lambda name, kind: ids.get(name))
    monkeypatch.setattr(resolver, "module_btf_fd", module_fd)
    monkeypatch.setattr(resolver, "kernel_type_shape", lambda found: "()void")
    prog = read_collection(bpf_objects["extern_kfunc_weak"]).programs["weak_kfuncs"]
    resolved = resolver.resolve_externs(prog, prog.instructions)
    assert resolved.fd_array == [0, 107] and opened == [107]
    at = {(e.name, e.kind): e.insn for e in prog.externs}
    _op, _dst, src, off, imm = insn(resolved.instructions, at["bpf_rcu_read_lock", ExternKind.KFUNC_CALL])
    assert (src, off, imm) == (2, 1, 70001)
    # a typed ksym of a module: BPF_PSEUDO_BTF_ID, the second imm the module BTF's fd
    ksym = at["bpf_rcu_read_lock", ExternKind.KSYM]
    _op, _dst, src, off, imm = insn(resolved.instructions, ksym)
    assert (src, imm) == (3, 70001) and insn(resolved.instructions, ksym + 1)[4] == 107
    resolved.close()
    assert opened == []


def test_externs_in_subprograms_get_linked_indexes(compile_bpf: CompileBpf) -> None:
    """A kfunc call, a ksym and a kconfig read in an appended subprogram are recorded at their
    index in the linked program, not in .text."""
    src = """
    extern void bpf_rcu_read_lock(void) __ksym;
    extern const void bpf_prog_put __ksym;
    extern int CONFIG_HZ __kconfig;
    static __attribute__((noinline)) long helper(int x) {
        bpf_rcu_read_lock();
        return x + CONFIG_HZ + (long)&bpf_prog_put;
    }
    SEC("tc") int outer(struct __sk_buff *skb) { return helper(skb->len) + helper(1); }
    char LICENSE[] SEC("license") = "GPL";
    """
    prog = read_collection(compile_bpf(src)).programs["outer"]
    code = prog.instructions
    call = next(i for i in range(len(code) // 8) if insn(code, i)[0] == CALL and insn(code, i)[2] == 1)
    start = call + insn(code, call)[4] + 1  # the subprogram's first linked instruction
    assert start > 0
    kfunc = next(e for e in prog.externs if e.kind is ExternKind.KFUNC_CALL)
    ksym = next(e for e in prog.externs if e.kind is ExternKind.KSYM)
    kconfig = next(r for r in prog.relocations if r.map_name == KCONFIG_MAP)
    assert min(kfunc.insn, ksym.insn, kconfig.insn) >= start
    assert insn(code, kfunc.insn)[:3] == (CALL, 0, 2)
    assert insn(code, ksym.insn)[0] == LD_IMM64 and insn(code, kconfig.insn)[0] == LD_IMM64


def test_kallsyms_parsing(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from bpfshare.load import kernel_symbols

    path = tmp_path / "kallsyms"
    path.write_text(
        "ffffffff81000000 T _text\n"
        "ffffffff814e6bb0 T bpf_prog_put\n"
        "ffffffff814e6bc0 T bpf_prog_put_deferred\n"
        "ffffffffc0001000 t mod_func\t[some_module]\n"
        "ffffffffc0002000 t twice\t[a]\n"
        "ffffffffc0003000 t twice\t[b]\n"
        "ffffffffc0004000 d same\n"
        "ffffffffc0004000 d same\t[m]"
    )
    monkeypatch.setattr(kernel_symbols, "KALLSYMS", path)
    found = kernel_symbols.kallsyms({"bpf_prog_put", "mod_func", "same", "bpf_prog", "absent"})
    assert found == {"bpf_prog_put": 0xFFFFFFFF814E6BB0, "mod_func": 0xFFFFFFFFC0001000, "same": 0xFFFFFFFFC0004000}
    with pytest.raises(BpfshareError, match=r"^ksym twice: ambiguous"):
        kernel_symbols.kallsyms({"twice"})
