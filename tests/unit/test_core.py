"""CO-RE relocation (load.core) on hand-built local and target BTF, no kernel: every relocation
kind, flavours, libbpf's ambiguity rules, load size changes, poisoning and the error's names."""

from __future__ import annotations

import struct

import pytest

from bpfshare.errors import ObjectError
from bpfshare.load import core
from bpfshare.object.btf import Btf
from bpfshare.object.kernel_btf import KernelBtf
from bpfshare.spec import CoreKind, CoreRelocation
from tests.unit.btfbuild import BtfBuilder

K = CoreKind


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


LDX_W = 0x61  # r = *(u32 *)(r + off)
LDX_DW = 0x79
LDX_H = 0x69
MOV64_K = 0xB7
LD_IMM64 = 0x18


def fields(b: BtfBuilder, extra: bool = False, name: str = "sk_buff", len_size: int = 4) -> int:
    """struct NAME { u32 pad; u32 len (or u16/u64); [u32 mark;] int flags:3; int prio:5; u8 x[4]; }"""
    u32 = b.int_("unsigned int", 4)
    ulen = b.int_("unsigned len_t", len_size) if len_size != 4 else u32
    s32 = b.int_("int", 4, signed=True)
    u8 = b.int_("unsigned char", 1)
    arr = b.array(u8, u32, 4)
    members: list[tuple[str, int, int] | tuple[str, int, int, int]] = [("pad", u32, 0), ("len", ulen, 32)]
    base = 32 + len_size * 8
    if extra:
        members.append(("mark", u32, base))
        base += 32
    members += [("flags", s32, base, 3), ("prio", s32, base + 3, 5), ("x", arr, base + 32)]
    return b.struct(name, (base + 64) // 8, members)


def resolve(
    local: BtfBuilder, target: BtfBuilder, relos: list[CoreRelocation], code: bytes
) -> tuple[bytes, list[core.Poisoned]]:
    return core.apply("p", code, relos, Btf(bytes(local)), KernelBtf(Btf(bytes(target)), None))


def imms(out: bytes) -> list[int]:
    """The imm field of every instruction slot (an ld_imm64 has two: low and high half)."""
    return [struct.unpack_from("<i", out, i + 4)[0] for i in range(0, len(out), 8)]


def local_skb() -> tuple[BtfBuilder, int]:
    b = BtfBuilder()
    return b, fields(b)


def test_field_byte_offset_moves_loads() -> None:
    local, skb = local_skb()
    target = BtfBuilder()
    fields(target, extra=True)  # len stays at 4; flags/prio/x move by 4
    code = insn(LDX_W, 0, 1, 4) + insn(MOV64_K, 0, 0, 0, 4) + insn(LDX_W, 0, 1, 14)
    relos = [
        CoreRelocation(0, K.FIELD_BYTE_OFFSET, skb, "0:1"),
        CoreRelocation(1, K.FIELD_BYTE_OFFSET, skb, "0:1"),
        CoreRelocation(2, K.FIELD_BYTE_OFFSET, skb, "0:4:2"),  # x[2]: an array element
    ]
    out, poisoned = resolve(local, target, relos, code)
    assert not poisoned
    assert struct.unpack_from("<h", out, 2)[0] == 4
    assert imms(out)[1] == 4
    assert struct.unpack_from("<h", out, 18)[0] == 16 + 2


def test_unexpected_original_value_is_refused() -> None:
    local, skb = local_skb()
    target = BtfBuilder()
    fields(target)
    with pytest.raises(
        ObjectError,
        match=(
            r"program 'p': CO-RE relocation #0 \(FIELD_BYTE_OFFSET struct sk_buff.len\): "
            r"unexpected instruction #0 \(LDX/ST/STX\) offset: got 8, expected 4"
        ),
    ):
        resolve(local, target, [CoreRelocation(0, K.FIELD_BYTE_OFFSET, skb, "0:1")], insn(LDX_W, 0, 1, 8))


def test_load_size_follows_an_unsigned_field() -> None:
    """The kernel's field is a u64 or u16 where the object's is a u32: the load's size changes
    (libbpf allows it for unsigned integers and pointers); a signed one would poison."""
    for size, code in ((8, LDX_DW), (2, LDX_H)):
        local, skb = local_skb()
        target = BtfBuilder()
        fields(target, len_size=size)
        out, poisoned = resolve(
            local, target, [CoreRelocation(0, K.FIELD_BYTE_OFFSET, skb, "0:1")], insn(LDX_W, 0, 1, 4)
        )
        assert not poisoned and out[0] == code
    local, skb = local_skb()
    target = BtfBuilder()
    u32 = target.int_("unsigned int", 4)
    s64 = target.int_("long", 8, signed=True)
    target.struct("sk_buff", 16, [("pad", u32, 0), ("len", s64, 64)])
    out, poisoned = resolve(local, target, [CoreRelocation(0, K.FIELD_BYTE_OFFSET, skb, "0:1")], insn(LDX_W, 0, 1, 4))
    assert out == insn(0x85, imm=core.POISON_IMM)
    assert "field's size differs" in poisoned[0].reason


def test_size_exists_signed_and_bitfield_shifts() -> None:
    local, skb = local_skb()
    target = BtfBuilder()
    fields(target, extra=True)
    kinds = [
        (K.FIELD_BYTE_SIZE, "0:1", 4, 4),
        (K.FIELD_EXISTS, "0:1", 1, 1),
        (K.FIELD_SIGNED, "0:1", 0, 0),
        (K.FIELD_SIGNED, "0:2", 1, 1),
        # flags: bits 64..66 locally, 96..98 in the target; read with a 4-byte load at byte 8 / 12
        (K.FIELD_BYTE_OFFSET, "0:2", 8, 12),
        (K.FIELD_BYTE_SIZE, "0:2", 4, 4),
        (K.FIELD_LSHIFT_U64, "0:2", 64 - 3, 64 - 3),
        (K.FIELD_RSHIFT_U64, "0:2", 61, 61),
        (K.FIELD_LSHIFT_U64, "0:3", 64 - 8, 64 - 8),  # prio: bits 3..7 of its word
        (K.FIELD_RSHIFT_U64, "0:3", 59, 59),
    ]
    code = b"".join(insn(MOV64_K, 0, 0, 0, old) for _kind, _access, old, _new in kinds)
    relos = [CoreRelocation(i, kind, skb, access) for i, (kind, access, _old, _new) in enumerate(kinds)]
    out, poisoned = resolve(local, target, relos, code)
    assert not poisoned
    assert imms(out) == [n for *_, n in kinds]


def test_missing_field_poisons_and_is_named() -> None:
    local, skb = local_skb()
    target = BtfBuilder()
    u32 = target.int_("unsigned int", 4)
    target.struct("sk_buff", 8, [("pad", u32, 0)])  # no len
    code = insn(MOV64_K, 0, 0, 0, 1) + insn(LD_IMM64, 1, 0, 0, 4) + insn(0) + insn(LDX_W, 0, 1, 4)
    relos = [
        CoreRelocation(0, K.FIELD_EXISTS, skb, "0:1"),
        CoreRelocation(1, K.FIELD_BYTE_OFFSET, skb, "0:1"),
        CoreRelocation(3, K.FIELD_BYTE_OFFSET, skb, "0:1"),
    ]
    out, poisoned = resolve(local, target, relos, code)
    assert imms(out)[0] == 0  # exists: 0
    call = insn(0x85, imm=core.POISON_IMM)
    assert out[8:16] == call and out[16:24] == call and out[24:32] == call  # both ld_imm64 halves
    assert [p.insn for p in poisoned] == [1, 3]
    assert poisoned[0].reason == "struct sk_buff: no field len in the kernel's BTF"
    # no struct of that name at all
    _out, poisoned = resolve(
        local, BtfBuilder(), [CoreRelocation(0, K.FIELD_BYTE_OFFSET, skb, "0:1")], insn(LDX_W, 0, 1, 4)
    )
    assert poisoned[0].reason == "struct sk_buff: not in the kernel's BTF"


def test_flavours_match_by_essential_name() -> None:
    local = BtfBuilder()
    flavoured = fields(local, name="sk_buff___v2")
    target = BtfBuilder()
    fields(target, extra=True)
    out, _ = resolve(local, target, [CoreRelocation(0, K.FIELD_BYTE_OFFSET, flavoured, "0:2")], insn(MOV64_K, imm=8))
    assert imms(out)[0] == 12
    assert core.essential_name("sk_buff___v2") == "sk_buff"
    assert core.essential_name("a____b") == "a____b"  # X and Y must not be underscores
    assert core.essential_name("x___y___z") == "x___y"


def test_ambiguity() -> None:
    """Two kernel candidates (flavours of one name) must agree; libbpf refuses them otherwise."""
    local, skb = local_skb()
    agree = BtfBuilder()
    fields(agree)
    fields(agree, name="sk_buff___other")
    out, _ = resolve(local, agree, [CoreRelocation(0, K.FIELD_BYTE_OFFSET, skb, "0:1")], insn(LDX_W, 0, 1, 4))
    assert out == insn(LDX_W, 0, 1, 4)
    disagree = BtfBuilder()
    fields(disagree, name="sk_buff")
    fields(disagree, name="sk_buff___other", extra=True)
    with pytest.raises(ObjectError, match=r"field offset ambiguity between kernel types"):
        resolve(local, disagree, [CoreRelocation(0, K.FIELD_BYTE_OFFSET, skb, "0:2")], insn(MOV64_K, imm=8))
    sizes = BtfBuilder()
    fields(sizes)
    fields(sizes, name="sk_buff___other", extra=True)  # compatible types of different sizes
    with pytest.raises(
        ObjectError, match=r"relocation decision ambiguity between kernel types #\d+ and #\d+ \(16 != 20\)"
    ):
        resolve(local, sizes, [CoreRelocation(0, K.TYPE_SIZE, skb, "0")], insn(MOV64_K, imm=16))


def test_type_kinds() -> None:
    local = BtfBuilder()
    skb = fields(local)
    gone = local.struct("not_in_kernel", 4, [("a", 1, 0)])
    target = BtfBuilder()
    fields(target, extra=True)
    target_id = target.next_id - 1
    relos = [
        CoreRelocation(0, K.TYPE_EXISTS, skb, "0"),
        CoreRelocation(1, K.TYPE_SIZE, skb, "0"),
        CoreRelocation(2, K.TYPE_ID_TARGET, skb, "0"),
        CoreRelocation(3, K.TYPE_ID_LOCAL, skb, "0"),
        CoreRelocation(4, K.TYPE_EXISTS, gone, "0"),
        CoreRelocation(5, K.TYPE_SIZE, gone, "0"),
    ]
    code = b"".join(insn(MOV64_K, imm=v) for v in (1, 16, skb, skb, 1, 4))
    out, poisoned = resolve(local, target, relos, code)
    assert not poisoned
    assert imms(out) == [1, 20, target_id, skb, 0, 0]


def test_type_matches() -> None:
    """TYPE_MATCHES (clang 15+, so built by hand): stricter than TYPE_EXISTS (members by name and type)."""
    local = BtfBuilder()
    u32 = local.int_("unsigned int", 4)
    want = local.struct("thing", 8, [("a", u32, 0), ("b", u32, 32)])
    target = BtfBuilder()
    tu32 = target.int_("unsigned int", 4)
    ts64 = target.int_("long", 8, signed=True)
    target.struct("thing", 16, [("b", tu32, 0), ("a", tu32, 32), ("c", ts64, 64)])  # reordered, extra member
    relo = [CoreRelocation(0, K.TYPE_MATCHES, want, "0")]
    out, _ = resolve(local, target, relo, insn(MOV64_K, imm=1))
    assert imms(out)[0] == 1
    other = BtfBuilder()
    ou32 = other.int_("unsigned int", 4)
    os32 = other.int_("int", 4, signed=True)
    other.struct("thing", 8, [("a", ou32, 0), ("b", os32, 32)])  # b's signedness differs
    out, _ = resolve(local, other, relo, insn(MOV64_K, imm=1))
    assert imms(out)[0] == 0
    # TYPE_EXISTS accepts it: ints of any signedness are compatible
    out, _ = resolve(local, other, [CoreRelocation(0, K.TYPE_EXISTS, want, "0")], insn(MOV64_K, imm=1))
    assert imms(out)[0] == 1


def test_enum_values() -> None:
    local = BtfBuilder()
    color = local.enum("color___local", [("RED___x", 0), ("GREEN", 1), ("PURPLE", 2)])
    big = local.enum64("big", [("HUGE", 1)])
    target = BtfBuilder()
    target.enum("color", [("GREEN", 7), ("RED", 0xFFFFFFFF)])
    target.enum64("big", [("HUGE", 1 << 40)])
    relos = [
        CoreRelocation(0, K.ENUMVAL_VALUE, color, "0"),
        CoreRelocation(1, K.ENUMVAL_VALUE, color, "1"),
        CoreRelocation(2, K.ENUMVAL_EXISTS, color, "2"),
        CoreRelocation(3, K.ENUMVAL_EXISTS, color, "1"),
        CoreRelocation(4, K.ENUMVAL_VALUE, big, "0"),
        CoreRelocation(6, K.ENUMVAL_VALUE, color, "2"),
    ]
    code = b"".join(insn(MOV64_K, imm=v) for v in (0, 1, 1, 1)) + insn(LD_IMM64, imm=1) + insn(0) + insn(MOV64_K, imm=2)
    out, poisoned = resolve(local, target, relos, code)
    imm = imms(out)
    assert imm[:4] == [-1, 7, 0, 1]  # RED is 0xffffffff: an ENUM's value is a signed 32-bit one
    assert imm[4] == 0 and imm[5] == 1 << 8  # ld_imm64 of 1 << 40: low and high halves
    assert [p.reason for p in poisoned] == ["enum color___local: no value PURPLE in the kernel's BTF"]


def test_malformed_access_strings() -> None:
    local, skb = local_skb()
    for access, words in (("0:x", "malformed"), ("0:9", "no member #9"), ("1", "expected '0'")):
        kind = K.TYPE_EXISTS if access == "1" else K.FIELD_BYTE_OFFSET
        with pytest.raises(ObjectError, match=words):
            resolve(local, BtfBuilder(), [CoreRelocation(0, kind, skb, access)], insn(LDX_W))


def test_modules_are_searched_only_without_a_vmlinux_candidate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """libbpf bpf_core_find_cands: vmlinux first; a module's types only if vmlinux has none."""
    vmlinux = BtfBuilder()
    vmlinux.int_("unsigned int", 4)
    module = BtfBuilder(base=vmlinux)
    mod_id = module.struct("mod_state", 8, [("pad", 1, 0), ("len", 1, 32)])
    (tmp_path / "vmlinux").write_bytes(bytes(vmlinux))
    (tmp_path / "mymod").write_bytes(bytes(module))
    target = KernelBtf(Btf(bytes(vmlinux)), tmp_path)
    local = BtfBuilder()
    u32 = local.int_("unsigned int", 4)
    state = local.struct("mod_state", 8, [("x", u32, 0), ("len", u32, 32)])
    resolver = core.Resolver(Btf(bytes(local)), target)
    assert [(btf.where.endswith("mymod"), i) for btf, i in resolver.candidates(state)] == [(True, mod_id)]
    out, poisoned = core.apply(
        "p", insn(LDX_W, 0, 1, 4), [CoreRelocation(0, K.FIELD_BYTE_OFFSET, state, "0:1")], Btf(bytes(local)), target
    )
    assert not poisoned and out == insn(LDX_W, 0, 1, 4)


def test_malformed_core_relo_records(compile_bpf) -> None:  # type: ignore[no-untyped-def]
    """A core_relo record with an unknown kind or a type ID beyond .BTF: one line naming it."""
    from bpfshare.object import read_collection
    from bpfshare.object.btf_ext import core_relocations
    from bpfshare.object.elf import ElfObject

    src = """
    struct task_struct { int pid; } __attribute__((preserve_access_index));
    SEC("kprobe/do_exit") int core_prog(struct task_struct *t) { return t->pid; }
    char LICENSE[] SEC("license") = "GPL";
    """
    path = compile_bpf(src)
    data = bytearray(path.read_bytes())
    elf = ElfObject(bytes(data))
    ext = elf.by_name[".BTF.ext"]
    btf = Btf(elf.data(elf.by_name[".BTF"]))
    (relo,) = core_relocations(elf.data(ext), btf)
    assert (relo.section, relo.kind, relo.access) == ("kprobe/do_exit", 0, "0:0")
    raw = bytes(elf.data(ext))
    hdr_len = struct.unpack_from("<I", raw, 4)[0]
    core_off = struct.unpack_from("<I", raw, 24)[0]
    record = ext.offset + hdr_len + core_off + 4 + 8  # record size, then section name and count
    for field_at, value, words in (
        (12, 99, "unknown relocation kind 99"),
        (4, 99999, r"core_relo record 0 of section kprobe/do_exit: \.BTF: type id 99999 out of range"),
    ):
        bad = bytearray(data)
        struct.pack_into("<I", bad, record + field_at, value)
        with pytest.raises(ObjectError, match=words):
            read_collection(bytes(bad))
